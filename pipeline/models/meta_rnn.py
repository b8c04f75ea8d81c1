"""Byte-level meta-RNN: embedding, 1+ hand-written GRU/LSTM layers, one task head.

Heads: `lm` (next-byte logits at every position), `classify` (N-way logits from the hidden
state at the last valid position), `regression` (one value from that same state).
`functional(params, x, mask)` is pure: x `[T, K, L]` int64; every parameter may be shared
or carry a leading task dim T (then each matmul is one bmm over the meta-batch).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pipeline.models.cells import GATES, RECURRENCE, SEQUENCE, input_projection, linear
from pipeline.models.gru_grad import gru_loss_and_grad
from pipeline.models.gru_hvp import gru_grad_hvp
from pipeline.models.task_model import GradHVP, LossAndGrad


class _Recurrent(nn.Module):
    def __init__(self, d_in: int, hidden: int, gates: int) -> None:
        super().__init__()
        k = 1.0 / math.sqrt(hidden)  # nn.GRU/nn.LSTM's init
        self.w_ih = nn.Parameter(torch.empty(gates * hidden, d_in).uniform_(-k, k))
        self.w_hh = nn.Parameter(torch.empty(gates * hidden, hidden).uniform_(-k, k))
        self.b_ih = nn.Parameter(torch.empty(gates * hidden).uniform_(-k, k))
        self.b_hh = nn.Parameter(torch.empty(gates * hidden).uniform_(-k, k))


class MetaRNN(nn.Module):
    """A `TaskModel` (pipeline/models/task_model.py). GRU lm/classify: `loss_and_grad` is the
    hand-written BPTT and `grad_hvp` its hand-derived HVP (gru_hvp.py); None (autograd)
    otherwise, or with `hand_grad=False` (bench/inner_loop.py compares the two)."""

    loss_and_grad: LossAndGrad | None = None
    grad_hvp: GradHVP | None = None

    def __init__(
        self,
        *,
        cell: str = "gru",
        vocab: int = 259,
        embed: int = 32,
        hidden: int = 128,
        layers: int = 1,
        task: str = "lm",
        n_way: int = 5,
        hand_grad: bool = True,
    ) -> None:
        super().__init__()
        self._init_args = dict(
            cell=cell,
            vocab=vocab,
            embed=embed,
            hidden=hidden,
            layers=layers,
            task=task,
            n_way=n_way,
            hand_grad=hand_grad,
        )
        if cell not in GATES:
            raise ValueError(f"cell={cell!r}: use one of {sorted(GATES)}")
        if task not in ("lm", "classify", "regression"):
            raise ValueError(f"task={task!r}: use lm, classify or regression")
        self.cell, self.kind, self.vocab, self.n_layers = cell, task, vocab, layers
        self.embed = nn.Embedding(vocab, embed)
        dims = [embed] + [hidden] * layers
        self.rnn = nn.ModuleList(_Recurrent(a, hidden, GATES[cell]) for a in dims[:-1])
        d_out = {"lm": vocab, "classify": n_way, "regression": 1}[task]
        self.head = nn.Linear(hidden, d_out)
        self.head_names = ("head.weight", "head.bias")
        if hand_grad and cell == "gru" and task in ("lm", "classify"):
            # hand-written BPTT (gru_grad.py) and HVP (gru_hvp.py), chosen here once
            self.loss_and_grad = self._gru_loss_and_grad
            self.grad_hvp = self._gru_grad_hvp

    def functional(self, params: dict[str, Tensor], x: Tensor, mask: Tensor) -> Tensor:
        h = RECURRENCE[self.cell](
            input_projection(params, x), params["rnn.0.w_hh"], params["rnn.0.b_hh"]
        )
        run = SEQUENCE[self.cell]
        for i in range(1, self.n_layers):
            p = f"rnn.{i}."
            h = run(
                h, params[p + "w_ih"], params[p + "w_hh"], params[p + "b_ih"], params[p + "b_hh"]
            )
        if self.kind != "lm":  # read the state at the last valid position of each sequence
            last = (mask.sum(-1).long() - 1).clamp_min(0)
            idx = last[..., None, None].expand(*last.shape, 1, h.shape[-1])
            h = h.gather(-2, idx).squeeze(-2)
        return linear(h, params["head.weight"], params["head.bias"])

    def _gru_loss_and_grad(
        self,
        params: dict[str, Tensor],
        x: Tensor,
        y: Tensor,
        mask: Tensor,
        names: set[str],
        cache: dict | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        return gru_loss_and_grad(
            params, x, y, mask, layers=self.n_layers, kind=self.kind, names=names, cache=cache
        )

    def _gru_grad_hvp(
        self,
        params: dict[str, Tensor],
        x: Tensor,
        y: Tensor,
        mask: Tensor,
        u: dict[str, Tensor],
        need_grad: bool = True,
        cache: dict | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        return gru_grad_hvp(
            params,
            x,
            y,
            mask,
            u,
            layers=self.n_layers,
            kind=self.kind,
            need_grad=need_grad,
            cache=cache,
        )

    def reinit(self) -> nn.Module:
        """A freshly initialised model of the same architecture (uses torch's global RNG)."""
        return type(self)(**self._init_args)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        params = dict(self.named_parameters())
        if x.dim() == 2:  # one task [K, L] (also what vmap shows per task)
            return self.functional(params, x.unsqueeze(0), mask.unsqueeze(0)).squeeze(0)
        return self.functional(params, x, mask)
