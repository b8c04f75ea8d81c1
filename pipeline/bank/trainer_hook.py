"""SHELL: what a training worker does for the memory bank (`bank.enabled`), in one call a step.

Every `bank.write_every` meta-steps, the worker asks `outer.train_step` for its tasks'
adapted parameters (`return_adapted`: the very parameters that step's meta-gradient came
from, no second inner loop), and this hook computes their descriptors (at the same
meta-parameters) and query losses and hands the batch to the bounded async `BankWriter`.
Keys are the batch's own task keys (`EpisodeBatch.keys`; upsert by key: the bank keeps each
task's latest adaptation).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.config import BankConfig
from pipeline.data.episodes import EpisodeBatch
from pipeline.models.task_model import TaskModel

Params = dict[str, torch.Tensor]


class BankHook:
    def __init__(self, bank_cfg: BankConfig, model: TaskModel, writer: Any = None) -> None:
        from pipeline.bank.writer import BankWriter

        self.cfg, self.model = bank_cfg, model
        self.writer = writer if writer is not None else BankWriter(bank_cfg)

    def due(self, step: int) -> bool:
        """Whether step `step` writes (so its train step should return the adapted params)."""
        return (step + 1) % self.cfg.write_every == 0

    def after_step(
        self, step: int, meta_params: Params, batch: EpisodeBatch, adapted: Params
    ) -> bool:
        """Maybe write this step's tasks; returns whether a batch was submitted.
        `batch`: the step's torch EpisodeBatch (with its task keys); `adapted`: each task's
        adapted params `[T, ...]` from `meta_params` (`outer.train_step(return_adapted=True)`)."""
        if not self.due(step):
            return False
        from pipeline.bank.warm_start import flatten, flatten_batched
        from pipeline.meta.descriptor import describe
        from pipeline.meta.losses import model_loss

        params = {k: v.detach() for k, v in meta_params.items()}
        with torch.no_grad():
            loss = model_loss(self.model, adapted, batch.query).cpu().numpy()
        desc = describe(self.model, params, batch.support, kind=self.cfg.descriptor)
        keys = batch.keys
        last = sorted({k: i for i, k in enumerate(keys)}.values())  # a repeated task: last wins
        return self.writer.submit(
            {
                "keys": [keys[i] for i in last],
                "descriptor": desc[last],
                "params": flatten_batched(adapted, list(params))[last],
                "base": flatten(params),  # the meta-init they were adapted from (params.py)
                "step": np.full(len(last), step + 1),
                "support": np.full(len(last), int(batch.support.x.shape[1])),
                "loss": loss[last].astype(np.float32),
            }
        )

    def close(self) -> dict:
        """Flush outstanding writes; never raises (the run's own outcome must win)."""
        try:
            return self.writer.flush()
        except Exception as exc:
            import logging

            logging.getLogger(__name__).warning("memory bank flush failed: %s", exc)
            return dict(self.writer.stats)
