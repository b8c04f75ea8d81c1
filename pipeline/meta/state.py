"""The meta-state and the names around it, pure: what the outer loop updates and checkpoints.

`MetaState(params, lrs, opt, step)`; Meta-SGD's learned inner learning rates travel in the
flat gradient and optimizer dicts as `lr/<name>`; which algorithms are first order; which
names ANIL adapts; the flat safetensors form of a state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from pipeline.models.task_model import TaskModel

if TYPE_CHECKING:  # typed slices; the core stays importable without pydantic (GPU machines)
    from pipeline.config import InnerConfig

Params = dict[str, Tensor]
LR_PREFIX = "lr/"  # Meta-SGD learning rates in the flat gradient / optimizer dicts


class MetaState(NamedTuple):
    params: Params  # meta-parameters (shared initialisation)
    lrs: Params  # inner learning rates: scalars (fixed) or parameter-shaped (Meta-SGD, learned)
    opt: Params  # outer optimizer state, flat
    step: int


def is_first_order(inner_cfg: InnerConfig) -> bool:
    return bool(inner_cfg.first_order) or inner_cfg.algorithm in ("fomaml", "reptile")


def trainable_names(model: TaskModel, inner_cfg: InnerConfig) -> list[str] | None:
    return list(model.head_names) if inner_cfg.algorithm == "anil" else None


def meta_trainables(state: MetaState, algorithm: str) -> Params:
    """The flat dict the outer optimizer updates: params, plus `lr/<name>` for Meta-SGD."""
    out = dict(state.params)
    if algorithm == "metasgd":
        out.update({LR_PREFIX + k: v for k, v in state.lrs.items()})
    return out


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
