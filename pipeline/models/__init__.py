"""Models as pure functions of parameter dicts: `build_model(model_cfg, data_cfg)`.

Every model is a `TaskModel` (`pipeline/models/task_model.py`): `kind` (regression | lm |
classify), `head_names` (what ANIL adapts), `functional(params, x, mask)` taking task-batched
inputs `[T, ...]`, and the optional hand-derived `loss_and_grad` / `grad_hvp` (None when
absent). `model(x, mask)` is the same for one task (`[K, ...]`), so
`torch.func.functional_call` + `vmap` also work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from pipeline.config import DataConfig, ModelConfig


def build_model(model_cfg: ModelConfig, data_cfg: DataConfig) -> nn.Module:
    from pipeline.models.meta_rnn import MetaRNN
    from pipeline.models.mlp import MLP

    if model_cfg.kind == "mlp":
        return MLP(1, model_cfg.hidden, model_cfg.layers, 1)
    return MetaRNN(
        cell=model_cfg.kind,
        vocab=model_cfg.vocab,
        embed=model_cfg.embed,
        hidden=model_cfg.hidden,
        layers=model_cfg.layers,
        task=data_cfg.episode,
        n_way=data_cfg.n_way,
    )
