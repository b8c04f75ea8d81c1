"""SHELL: the all-reduces of the Ray Train worker loop (torch.distributed, gloo or nccl).

One flat buffer per dtype per call, so a step costs one collective whatever the number of
parameter tensors. Keys are walked in sorted order: every rank packs the same layout.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

Params = dict[str, torch.Tensor]


def _active(world: int) -> bool:
    return world > 1 and dist.is_available() and dist.is_initialized()


def mean_all_reduce(world: int) -> Callable[[Params], Params]:
    """The `all_reduce` for `outer.train_step`: the mean of each gradient over the ranks."""
    if not _active(world):
        return lambda grads: grads

    def reduce(grads: Params) -> Params:
        out: Params = {}
        by_dtype: dict[tuple[torch.dtype, torch.device], list[str]] = {}
        for k in sorted(grads):
            by_dtype.setdefault((grads[k].dtype, grads[k].device), []).append(k)
        for keys in by_dtype.values():
            flat = torch.cat([grads[k].detach().reshape(-1) for k in keys])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= world
            for k, piece in zip(keys, flat.split([grads[k].numel() for k in keys]), strict=True):
                out[k] = piece.view_as(grads[k])
        return out

    return reduce


def mean_metrics(metrics: dict[str, float], world: int) -> dict[str, float]:
    """Mean of each float metric over the ranks (each rank's value is its slice's mean, and
    slices are equal-sized, so this is the global batch's mean)."""
    if not _active(world):
        return dict(metrics)
    keys = sorted(metrics)
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )
    t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return {k: float(v) / world for k, v in zip(keys, t.tolist(), strict=True)}
