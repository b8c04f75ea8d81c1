"""Per-task losses `[T]` for the three episode kinds (masked means, so padding never counts)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LN2 = math.log(2.0)
# Candidate weights of the uniform distribution in `floored_lm_loss`, for `fit_floor`: the
# whole range, so a model that predicts a task's support worse than uniform can fall back
# to uniform (1.0).
FLOOR_GRID = (0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9, 1.0)


def task_loss(kind: str, out: Tensor, y: Tensor, mask: Tensor) -> Tensor:
    """Mean loss of each task `[T]`.

    regression: MSE over valid points; lm: mean NLL per valid byte (nats; `bits_per_byte`
    converts); classify: mean cross-entropy over the N*K examples.
    """
    if kind == "regression":
        se = ((out - y) ** 2).sum(-1) * mask  # [T, K]
        return se.sum(-1) / mask.sum(-1).clamp_min(1.0)
    if kind == "lm":
        nll = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none")
        nll = nll.view(y.shape) * mask
        return nll.sum((-1, -2)) / mask.sum((-1, -2)).clamp_min(1.0)
    if kind == "classify":
        ce = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1), reduction="none")
        return ce.view(y.shape).mean(-1)
    raise ValueError(f"loss kind {kind!r}: use regression, lm or classify")


def floored_lm_loss(out: Tensor, y: Tensor, mask: Tensor, eps: Tensor) -> Tensor:
    """Mean NLL per valid byte `[T]` (nats) under p' = (1 - eps) p + eps / V, with one eps per
    task (`eps` `[T]`): a mixture with the uniform distribution over the V byte values, so no
    byte costs more than log(V / eps). eps = 0 is `task_loss`'s lm loss."""
    logp = F.log_softmax(out, -1).gather(-1, y[..., None].long())[..., 0]  # [T, ..., L]
    e = eps.to(logp.dtype).view(-1, *([1] * (logp.dim() - 1)))
    mixed = torch.logaddexp(logp + torch.log1p(-e), torch.log(e / out.shape[-1]))  # e=0: logp
    nll = -mixed * mask
    return nll.sum((-1, -2)) / mask.sum((-1, -2)).clamp_min(1.0)


def fit_floor(out: Tensor, y: Tensor, mask: Tensor, grid: tuple[float, ...] = FLOOR_GRID) -> Tensor:
    """Per task `[T]`: the eps of `grid` under which the task's own bytes (its SUPPORT words,
    not the query) are most likely. One number per task fitted on the K support words with no
    gradient step: a model that never saw a task's byte values (a script no training task
    uses) hedges toward uniform, one that predicts them well keeps eps near 0."""
    losses = torch.stack(
        [floored_lm_loss(out, y, mask, torch.full(out.shape[:1], g)) for g in grid]
    )  # [G, T]
    return torch.tensor(grid, dtype=out.dtype, device=out.device)[losses.argmin(0)]


def support_floored_loss(model: nn.Module, params: dict[str, Tensor], support, query) -> Tensor:
    """Per-task query NLL per byte `[T]` (nats) under the floor `fit_floor` picks on the same
    parameters' support predictions: how `metaray evaluate` scores language models."""
    eps = fit_floor(model.functional(params, support.x, support.mask), support.y, support.mask)
    out = model.functional(params, query.x, query.mask)
    return floored_lm_loss(out, query.y, query.mask, eps)


def model_loss(model: nn.Module, params: dict[str, Tensor], split) -> Tensor:
    """Per-task loss `[T]` of `model` with `params` (shared or task-batched) on a batched split."""
    out = model.functional(params, split.x, split.mask)
    return task_loss(model.kind, out, split.y, split.mask)


def query_loss(model: nn.Module, params: dict[str, Tensor], query, support=None) -> Tensor:
    """Per-task query loss `[T]`; with `support` and a language model, under the floor fitted
    on that support (`support_floored_loss`): the one rule validation and selection share."""
    if support is not None and model.kind == "lm":
        return support_floored_loss(model, params, support, query)
    return model_loss(model, params, query)


def accuracy(out: Tensor, y: Tensor) -> Tensor:
    """Per-task classification accuracy `[T]`."""
    return (out.argmax(-1) == y).float().mean(-1)


def bits_per_byte(nll_nats: float) -> float:
    return nll_nats / LN2
