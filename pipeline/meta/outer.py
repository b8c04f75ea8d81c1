"""The outer loop, pure: meta-gradients over a task batch, the outer optimizer step, evaluation.

Algorithms (`InnerConfig.algorithm`):
- maml: differentiate the query loss through the inner steps (second order).
- fomaml: same, inner gradients treated as constants.
- metasgd: like maml, with per-parameter inner learning rates that are meta-learned.
- anil: adapt only the head (`model.head_names`); the body is shared by all tasks.
- reptile: no query backward; the outer "gradient" is params - mean(adapted params).
All tasks of a batch run at once (task-batched params, one bmm per layer); `chunk` bounds
memory by running tasks in groups and summing their gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from pipeline.meta import optim
from pipeline.meta.inner import adapt, ref_dims
from pipeline.meta.losses import model_loss
from pipeline.meta.manual import MANUAL_ALGORITHMS, manual_meta_gradients

Params = dict[str, Tensor]
LR_PREFIX = "lr/"  # Meta-SGD learning rates in the flat gradient / optimizer dicts


class MetaState(NamedTuple):
    params: Params  # meta-parameters (shared initialisation)
    lrs: Params  # inner learning rates: scalars (fixed) or parameter-shaped (Meta-SGD, learned)
    opt: Params  # outer optimizer state, flat
    step: int


def is_first_order(inner_cfg: Any) -> bool:
    return bool(inner_cfg.first_order) or inner_cfg.algorithm in ("fomaml", "reptile")


def trainable_names(model: nn.Module, inner_cfg: Any) -> list[str] | None:
    return list(model.head_names) if inner_cfg.algorithm == "anil" else None


def meta_trainables(state: MetaState, algorithm: str) -> Params:
    """The flat dict the outer optimizer updates: params, plus `lr/<name>` for Meta-SGD."""
    out = dict(state.params)
    if algorithm == "metasgd":
        out.update({LR_PREFIX + k: v for k, v in state.lrs.items()})
    return out


def init_state(
    model: nn.Module, inner_cfg: Any, outer_cfg: Any, seed: int | None = None
) -> MetaState:
    """Initial meta-state. With `seed`, the parameters are a fresh seeded init of `model`'s
    architecture (so every worker starts identical); without, `model`'s current values."""
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = model.reinit()
        params = {k: v.detach().clone() for k, v in fresh.named_parameters()}
    else:
        params = {k: v.detach().clone() for k, v in model.named_parameters()}
    if inner_cfg.algorithm == "metasgd" and getattr(inner_cfg, "lr_shape", "param") == "param":
        lrs = {k: torch.full_like(v, inner_cfg.lr) for k, v in params.items()}
    else:
        lrs = {k: torch.tensor(inner_cfg.lr, dtype=v.dtype) for k, v in params.items()}
    state = MetaState(params, lrs, {}, 0)
    init, _ = optim.OPTIMIZERS[outer_cfg.optimizer]
    return state._replace(opt=init(meta_trainables(state, inner_cfg.algorithm)))


def _chunks(n: int, chunk: int | None) -> list[slice]:
    size = chunk if chunk else n
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _part(split, sl: slice):
    return type(split)(*(t[sl] for t in split))


def meta_gradients(
    state: MetaState,
    buffers: Params | None,
    batch,
    *,
    model: nn.Module,
    inner_cfg: Any,
    kind: str | None = None,
    chunk: int | None = None,
    pre_metrics: bool = True,
    return_adapted: bool = False,
    manual: bool | None = None,
) -> tuple[Params, dict[str, float]] | tuple[Params, dict[str, float], Params]:
    """Mean meta-gradient over the batch's tasks, keyed like `meta_trainables`.

    Returns `(grads, metrics)`, or `(grads, metrics, adapted)` with `return_adapted`, where
    `adapted` holds each task's adapted parameters `[T, ...]` (detached).
    metrics: loss_post (query loss after adaptation), loss_pre (before adaptation; skipped
    with pre_metrics=False).
    """
    alg = inner_cfg.algorithm
    first_order = is_first_order(inner_cfg)
    n = batch.support.x.shape[0]
    reptile = alg == "reptile"
    leaves = {k: v.detach().requires_grad_(not reptile) for k, v in state.params.items()}
    if alg == "metasgd":
        lrs: Any = {k: v.detach().requires_grad_() for k, v in state.lrs.items()}
    else:
        lrs = state.lrs
    wrt = dict(leaves)
    if alg == "metasgd":
        wrt.update({LR_PREFIX + k: v for k, v in lrs.items()})
    trainable = trainable_names(model, inner_cfg)
    grads: Params = {k: torch.zeros_like(v) for k, v in wrt.items()}
    if manual is None:
        manual = hasattr(model, "grad_hvp") and alg in MANUAL_ALGORITHMS
    post = torch.zeros(())
    pre = torch.zeros(())
    kept: list[Params] = []
    for sl in _chunks(n, chunk):
        sup, qry = _part(batch.support, sl), _part(batch.query, sl)
        if manual:  # no autograd: hand-derived reverse sweep (MLP)
            g_chunk, dlr, q, adapted = manual_meta_gradients(
                model,
                state.params,
                state.lrs,
                sup,
                qry,
                steps=inner_cfg.steps,
                first_order=first_order,
                learn_lrs=alg == "metasgd",
                n_total=n,
            )
            for k, g in g_chunk.items():
                grads[k] += g
            for k, g in dlr.items():
                grads[LR_PREFIX + k] += g
        else:
            adapted = adapt(
                leaves,
                buffers,
                sup,
                model=model,
                steps=inner_cfg.steps,
                lrs=lrs,
                first_order=first_order or reptile,
                trainable=trainable,
            )
            if reptile:
                with torch.no_grad():
                    q = model_loss(model, adapted, qry)
                    for k in leaves:  # sum over tasks of (theta - phi_t), / n below
                        grads[k] += (leaves[k] * (sl.stop - sl.start) - adapted[k].sum(0)) / n
            else:
                q = model_loss(model, adapted, qry)
                gs = torch.autograd.grad(q.sum() / n, list(wrt.values()), allow_unused=True)
                for k, g in zip(wrt, gs, strict=True):
                    if g is not None:
                        grads[k] += g
        post = post + q.detach().sum()
        if pre_metrics:
            with torch.no_grad():
                pre = pre + model_loss(model, leaves, qry).sum()
        if return_adapted:  # ANIL's shared body is expanded too: every key is [T, ...]
            dims = ref_dims(model)
            m = sl.stop - sl.start
            kept.append(
                {
                    k: (v if v.dim() > dims[k] else v.expand(m, *v.shape)).detach()
                    for k, v in adapted.items()
                }
            )
    metrics = {"loss_post": float(post) / n}
    if pre_metrics:
        metrics["loss_pre"] = float(pre) / n
    if return_adapted:
        joined = {k: torch.cat([c[k] for c in kept]) for k in kept[0]}
        return grads, metrics, joined
    return grads, metrics


def apply_gradients(state: MetaState, grads: Params, outer_cfg: Any) -> MetaState:
    """One outer optimizer step (pure): returns the next MetaState."""
    if outer_cfg.grad_clip:
        norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g) for g in grads.values()])
        )
        scale = torch.clamp(outer_cfg.grad_clip / (norm + 1e-12), max=1.0)
        grads = {k: g * scale for k, g in grads.items()}
    _, update = optim.OPTIMIZERS[outer_cfg.optimizer]
    current = dict(state.params)
    current.update({LR_PREFIX + k: v for k, v in state.lrs.items() if LR_PREFIX + k in grads})
    updates, opt = update(grads, state.opt, current, outer_cfg.lr)
    new = optim.apply_updates(current, updates)
    params = {k: new[k] for k in state.params}
    lrs = {k: new.get(LR_PREFIX + k, v) for k, v in state.lrs.items()}
    return MetaState(params, lrs, opt, state.step + 1)


def identity(grads: Params) -> Params:
    return grads


def train_step(
    state: MetaState,
    batch,
    *,
    model: nn.Module,
    inner_cfg: Any,
    outer_cfg: Any,
    buffers: Params | None = None,
    all_reduce: Callable[[Params], Params] = identity,
    chunk: int | None = None,
    pre_metrics: bool = True,
) -> tuple[MetaState, dict[str, float]]:
    """The single outer step of both the single-process loop and the Ray Train worker:
    meta-gradients on this worker's tasks -> `all_reduce` (mean over ranks) -> optimizer.
    `inner.step_schedule` picks this step's inner step count; `inner.pre_weight` adds the
    query loss at the meta-parameters themselves (before adaptation) to the outer loss."""
    chunk = chunk if chunk is not None else outer_cfg.chunk
    schedule = tuple(getattr(inner_cfg, "step_schedule", ()) or ())
    if schedule:
        inner_cfg = inner_cfg.model_copy(update={"steps": schedule[state.step % len(schedule)]})
    grads, metrics = meta_gradients(
        state,
        buffers,
        batch,
        model=model,
        inner_cfg=inner_cfg,
        chunk=chunk,
        pre_metrics=pre_metrics,
    )
    weight = float(getattr(inner_cfg, "pre_weight", 0.0) or 0.0)
    if weight:
        plain = inner_cfg.model_copy(update={"algorithm": "fomaml", "steps": 0})
        g0, _ = meta_gradients(
            state, buffers, batch, model=model, inner_cfg=plain, chunk=chunk, pre_metrics=False
        )
        grads = {k: g + weight * g0[k] if k in g0 else g for k, g in grads.items()}
    grads = all_reduce(grads)
    return apply_gradients(state, grads, outer_cfg), metrics


def evaluate(
    state: MetaState,
    batch,
    *,
    model: nn.Module,
    inner_cfg: Any,
    steps: list[int],
    buffers: Params | None = None,
    chunk: int | None = None,
) -> dict[int, float]:
    """Mean query loss after each number of inner steps in `steps` (first order, via `adapt`)."""
    trainable = trainable_names(model, inner_cfg)
    n = batch.support.x.shape[0]
    totals = dict.fromkeys(steps, 0.0)
    for sl in _chunks(n, chunk):
        sup, qry = _part(batch.support, sl), _part(batch.query, sl)
        p, done = {k: v.detach() for k, v in state.params.items()}, 0
        for s in sorted(set(steps)):
            p = adapt(
                p,
                buffers,
                sup,
                model=model,
                steps=s - done,
                lrs=state.lrs,
                first_order=True,
                trainable=trainable,
            )
            p = {k: v.detach() for k, v in p.items()}
            done = s
            with torch.no_grad():
                totals[s] += float(model_loss(model, p, qry).sum())
    return {s: totals[s] / n for s in steps}


# ---------------------------------------------------------------- checkpoint helpers
def state_to_tensors(state: MetaState) -> dict[str, Tensor]:
    """Flat `{"params/..", "lrs/..", "opt/..", "step"}` dict for safetensors."""
    flat: dict[str, Tensor] = {"step": torch.tensor(state.step, dtype=torch.int64)}
    for part in ("params", "lrs", "opt"):
        for k, v in getattr(state, part).items():
            flat[f"{part}/{k}"] = v.detach().contiguous()
    return flat


def state_from_tensors(flat: dict[str, Tensor]) -> MetaState:
    parts: dict[str, Params] = {"params": {}, "lrs": {}, "opt": {}}
    for k, v in flat.items():
        if k == "step":
            continue
        part, _, name = k.partition("/")
        parts[part][name] = v
    return MetaState(parts["params"], parts["lrs"], parts["opt"], int(flat["step"]))
