"""SHELL: what a training worker does for the memory bank (`bank.enabled`), in one call a step.

Every `bank.write_every` meta-steps, each rank adapts ITS slice of the step's tasks with the
core's inner loop (first order, `inner.steps`, the current meta-parameters: the same adapted
parameters that step's meta-gradient came from, up to the outer update), computes their
descriptors and query losses, and hands the batch to the bounded async `BankWriter`.
Why re-adapt instead of reusing the step's adapted params: `outer.train_step` does not return
them, and re-adapting every few steps is a bounded, measured cost (bench/RESULTS.md).
Keys are task names (upsert by key: the bank keeps each task's latest adaptation).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.config import RunConfig


class BankHook:
    def __init__(self, cfg: RunConfig, model, pool: Any, rank: int, world: int, writer=None):
        from pipeline.bank.writer import BankWriter
        from pipeline.meta.outer import trainable_names

        self.cfg, self.model, self.pool, self.rank, self.world = cfg, model, pool, rank, world
        self.writer = writer if writer is not None else BankWriter(cfg.bank)
        self.trainable = trainable_names(model, cfg.inner)

    def _keys(self, step: int) -> list[str]:
        from pipeline.data import episodes as ep

        n_way = self.cfg.data.n_way if self.cfg.data.episode == "classify" else None
        slots = ep.plan_step(
            self.pool.train_tasks, self.pool.seed, step, self.pool.meta_batch, n_way
        )
        return [
            "+".join(s) if isinstance(s, tuple) else str(s)
            for s in ep.worker_slice(slots, self.rank, self.world)
        ]

    def after_step(self, step: int, state, batch) -> bool:
        """Maybe write this step's tasks; returns whether a batch was submitted."""
        if (step + 1) % self.cfg.bank.write_every:
            return False
        from pipeline.bank.warm_start import flatten_batched
        from pipeline.data import episodes as ep
        from pipeline.meta.descriptor import describe
        from pipeline.meta.inner import adapt
        from pipeline.meta.losses import model_loss

        device = next(iter(state.params.values())).device
        b = ep.to_torch(batch, device)
        params = {k: v.detach() for k, v in state.params.items()}
        adapted = adapt(
            params,
            None,
            b.support,
            model=self.model,
            steps=self.cfg.inner.steps,
            lrs=state.lrs,
            first_order=True,
            trainable=self.trainable,
        )
        adapted = {k: v.detach() for k, v in adapted.items()}
        with torch.no_grad():
            loss = model_loss(self.model, adapted, b.query).cpu().numpy()
        desc = describe(self.model, params, b.support, kind=self.cfg.bank.descriptor)
        keys = self._keys(step)
        names = list(params)
        full = {
            k: adapted[k]
            if adapted[k].dim() > params[k].dim()
            else adapted[k].expand(len(keys), *params[k].shape)
            for k in names
        }
        last = sorted({k: i for i, k in enumerate(keys)}.values())  # a repeated task: last wins
        return self.writer.submit(
            {
                "keys": [keys[i] for i in last],
                "descriptor": desc[last],
                "params": flatten_batched(full, names)[last],
                "step": np.full(len(last), step + 1),
                "support": np.full(len(last), int(b.support.x.shape[1])),
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
