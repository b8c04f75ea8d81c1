"""Per-task losses `[T]` for the three episode kinds (masked means, so padding never counts)."""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

LN2 = math.log(2.0)


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


def model_loss(model: nn.Module, params: dict[str, Tensor], split) -> Tensor:
    """Per-task loss `[T]` of `model` with `params` (shared or task-batched) on a batched split."""
    out = model.functional(params, split.x, split.mask)
    return task_loss(model.kind, out, split.y, split.mask)


def accuracy(out: Tensor, y: Tensor) -> Tensor:
    """Per-task classification accuracy `[T]`."""
    return (out.argmax(-1) == y).float().mean(-1)


def bits_per_byte(nll_nats: float) -> float:
    return nll_nats / LN2
