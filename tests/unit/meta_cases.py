"""Tiny models, batches and an independent per-task reference for the meta tests."""

from __future__ import annotations

import torch
from torch.func import functional_call

from pipeline.config import InnerConfig, OuterConfig
from pipeline.data.episodes import EpisodeBatch, Split
from pipeline.meta.losses import task_loss
from pipeline.models.meta_rnn import MetaRNN
from pipeline.models.mlp import MLP

# Tiny tensors: intra-op threads only add synchronisation, and on a shared 2-core machine a
# parallel region waits for a descheduled thread (measured: 300 s instead of 10 s under load).
torch.set_num_threads(1)

ALGORITHMS = ["maml", "fomaml", "metasgd", "anil", "reptile"]


def sine_batch(t: int = 4, k: int = 5, seed: int = 0, dtype=torch.float32) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    amp = torch.rand(t, 1, 1, generator=g, dtype=dtype) * 4.9 + 0.1
    ph = torch.rand(t, 1, 1, generator=g, dtype=dtype) * torch.pi
    xs = torch.rand(t, k, 1, generator=g, dtype=dtype) * 10 - 5
    xq = torch.rand(t, k, 1, generator=g, dtype=dtype) * 10 - 5
    ones = torch.ones(t, k, dtype=dtype)
    return EpisodeBatch(
        Split(xs, amp * torch.sin(xs + ph), ones), Split(xq, amp * torch.sin(xq + ph), ones)
    )


def seq_batch(
    kind: str,
    t: int = 3,
    k: int = 4,
    length: int = 6,
    vocab: int = 11,
    n_way: int = 3,
    seed: int = 0,
    dtype=torch.float32,
) -> EpisodeBatch:
    """Random token sequences of varying valid length (padding masked)."""
    g = torch.Generator().manual_seed(seed)

    def split() -> Split:
        x = torch.randint(0, vocab, (t, k, length), generator=g)
        lens = torch.randint(2, length + 1, (t, k), generator=g)
        mask = (torch.arange(length) < lens[..., None]).to(dtype)
        if kind == "lm":
            y = torch.randint(0, vocab, (t, k, length), generator=g)
        else:
            y = torch.randint(0, n_way, (t, k), generator=g)
        return Split(x, y, mask)

    return EpisodeBatch(split(), split())


def tiny_mlp(seed: int = 0) -> MLP:
    torch.manual_seed(seed)
    return MLP(1, 8, 2, 1)


def tiny_rnn(task: str = "lm", cell: str = "gru", seed: int = 0) -> MetaRNN:
    torch.manual_seed(seed)
    return MetaRNN(
        cell=cell,
        vocab=11,
        embed=4,
        hidden=6,
        layers=2 if cell == "lstm" else 1,
        task=task,
        n_way=3,
    )


def configs(alg: str, steps: int = 2, lr: float = 0.1) -> tuple[InnerConfig, OuterConfig]:
    return InnerConfig(algorithm=alg, steps=steps, lr=lr), OuterConfig(meta_batch=4)


def reference_grads(model, state, batch, inner_cfg) -> dict[str, torch.Tensor]:
    """Meta-gradients by a plain per-task loop through `model.forward` (autograd only)."""
    alg = inner_cfg.algorithm
    fo = inner_cfg.first_order or alg in ("fomaml", "reptile")
    n = batch.support.x.shape[0]
    total: dict[str, torch.Tensor] = {}
    for t in range(n):
        params = {k: v.detach().clone().requires_grad_() for k, v in state.params.items()}
        lrs = {k: v.detach().clone().requires_grad_(alg == "metasgd") for k, v in state.lrs.items()}
        names = list(model.head_names) if alg == "anil" else list(params)

        def loss(p, s, t=t):
            out = functional_call(model, p, (s.x[t], s.mask[t]))
            return task_loss(model.kind, out[None], s.y[t][None], s.mask[t][None])[0]

        p = dict(params)
        for _ in range(inner_cfg.steps):
            g = torch.autograd.grad(
                loss(p, batch.support), [p[k] for k in names], create_graph=not fo
            )
            for k, gk in zip(names, g, strict=True):
                p[k] = p[k] - lrs[k] * (gk.detach() if fo else gk)
        if alg == "reptile":
            grads = {k: (params[k] - p[k]).detach() for k in params}
        else:
            wrt = dict(params)
            if alg == "metasgd":
                wrt.update({"lr/" + k: v for k, v in lrs.items()})
            gs = torch.autograd.grad(loss(p, batch.query), list(wrt.values()), allow_unused=True)
            grads = {
                k: torch.zeros_like(wrt[k]) if g is None else g
                for k, g in zip(wrt, gs, strict=True)
            }
        for k, g in grads.items():
            total[k] = total.get(k, 0) + g / n
    return total
