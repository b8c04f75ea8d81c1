"""Baselines for few-shot evaluation: multitask pretraining (no inner loop) and random init.

The multitask baseline is the honest comparison for a meta-init: the same model, trained on
the same training tasks' episodes for the same number of outer steps, with the outer
optimizer of the run, but without the inner loop: it minimises the loss at the shared
parameters (the core's `train_step` with 0 inner steps, first order). At evaluation it is
fine-tuned through the same inner loop, with its learning rate tuned on validation tasks.
Each step it sees as many examples per task as a meta-training step did (support + query).

Classification caveat: labels are remapped per episode, so a multitask-trained head cannot
learn which language is which; it learns a body and a prior. That is the standard "joint
training" baseline of the MAML paper, reported as such.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from pipeline.data import episodes as ep
from pipeline.meta import outer
from pipeline.tracking.redact import redact_tree

Params = dict[str, Tensor]


def multitask_config(run_cfg: Any) -> tuple[Any, Any]:
    """(inner, data) slices for pretraining: 0 inner steps; every example is a query example."""
    inner = run_cfg.inner.model_copy(
        update={
            "algorithm": "fomaml",
            "steps": 0,
            "first_order": True,
            "step_schedule": (),
            "pre_weight": 0.0,
            "learn_init": True,
            "lr_shape": "param",
        }
    )
    data = run_cfg.data
    if data.episode != "classify":
        # The support half is never used without an inner loop: fold it into the query.
        data = data.model_copy(update={"k_support": 1, "k_query": data.k_support + data.k_query})
    return inner, data


SELECT_STEPS = (1, 2, 5)  # validation score: mean query loss after these fine-tuning steps


def select_score(
    model: nn.Module, params: Params, val_batch: Any, lr: float, support_floor: bool = False
) -> float:
    """Mean validation query loss after `SELECT_STEPS` fine-tuning steps at `lr` from
    `params` (inf when fine-tuning diverges); with `support_floor` (lm) under the floor
    fitted on each task's support, as the meta-learner's run validates (`outer.evaluate`)."""
    from pipeline.meta.inner import adapt_then_score
    from pipeline.meta.losses import query_loss

    floor_on = val_batch.support if support_floor else None

    def score(p: Params, query: Any) -> float:
        return float(query_loss(model, p, query, floor_on).mean())

    scores = adapt_then_score(
        params,
        val_batch.support,
        val_batch.query,
        model=model,
        steps=SELECT_STEPS,
        lrs=lr,
        score=score,
    )
    return sum(scores[s] for s in SELECT_STEPS) / len(SELECT_STEPS)


def pretrain_multitask(
    model: nn.Module,
    run_cfg: Any,
    read_task: Callable[[str], dict[str, np.ndarray]],
    train_tasks: Sequence[str],
    *,
    steps: int,
    seed: int,
    progress: Callable[[int, dict[str, float]], None] | None = None,
    val_batch: Any = None,
    on_best: Callable[[int, float], None] | None = None,
) -> Params:
    """Train the shared parameters on pooled training tasks for `steps` outer steps.

    With `val_batch` (validation tasks' episodes, torch), the parameters returned are the
    best on validation (`select_score` at the run's `inner.lr`, every `outer.val_every` steps
    and at the end, scored as the run's `outer.val_support_floor` says), the same
    best-on-validation selection a meta-training run gets: a fair baseline. `on_best(step,
    score)` is told which step that was (the score in the loss's own unit), so that a user can
    set it beside the run's own."""
    inner, data = multitask_config(run_cfg)
    state = outer.init_state(model, inner, run_cfg.outer, seed=seed)
    metrics: dict[str, float] = {}
    best: tuple[float, Params | None, int] = (float("inf"), None, 0)
    for step in range(steps):
        batch = ep.build_step(
            read_task, train_tasks, data, seed=seed, step=step, meta_batch=run_cfg.outer.meta_batch
        )
        state, metrics = outer.train_step(
            state,
            ep.to_torch(batch),
            model=model,
            inner_cfg=inner,
            outer_cfg=run_cfg.outer,
            pre_metrics=False,
        )
        if progress and (step + 1) % max(1, steps // 10) == 0:
            progress(step + 1, metrics)
        if val_batch is not None and (
            (step + 1) % run_cfg.outer.val_every == 0 or step + 1 == steps
        ):
            score = select_score(
                model, state.params, val_batch, run_cfg.inner.lr, run_cfg.outer.val_support_floor
            )
            if score < best[0]:
                best = (score, {k: v.detach().clone() for k, v in state.params.items()}, step + 1)
    if best[1] is not None:
        if on_best:
            on_best(best[2], best[0])
        return best[1]
    return {k: v.detach() for k, v in state.params.items()}


def random_init(model: nn.Module, run_cfg: Any, seed: int) -> Params:
    """A fresh seeded initialisation of the same architecture."""
    return dict(outer.init_state(model, run_cfg.inner, run_cfg.outer, seed=seed).params)


# ---------------------------------------------------------------- persistence (no pickle)
def save_params(path: str | os.PathLike[str], params: Params, meta: dict[str, Any]) -> Path:
    """safetensors with the provenance (steps, seed, source checkpoint) as JSON metadata."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tensors = {k: v.detach().contiguous() for k, v in params.items()}
    save_file(tensors, str(tmp), metadata={"metaray": json.dumps(redact_tree(meta))})
    os.replace(tmp, out)
    return out


def load_params(path: str | os.PathLike[str]) -> tuple[Params, dict[str, Any]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("metaray", "{}"))
    return dict(load_file(str(path))), meta


def matches(params: Params, reference: Params) -> bool:
    """Same names and shapes (a cached baseline made for another architecture is stale)."""
    return set(params) == set(reference) and all(
        params[k].shape == reference[k].shape for k in reference
    )


def to_device(params: Params, device: torch.device | str) -> Params:
    return {k: v.to(device) for k, v in params.items()}
