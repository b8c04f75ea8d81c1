"""The outer loop, pure: meta-gradients over a task batch, the outer optimizer step, evaluation.

Algorithms (`InnerConfig.algorithm`):
- maml: differentiate the query loss through the inner steps (second order).
- fomaml: same, inner gradients treated as constants.
- metasgd: like maml, with per-parameter inner learning rates that are meta-learned.
- anil: adapt only the head (`model.head_names`); the body is shared by all tasks.
- reptile: no query backward; the outer "gradient" is params - mean(adapted params).
Meta-gradients per algorithm family live in `meta/gradients.py`, the meta-state and its
checkpoint form in `meta/state.py` (both re-exported here, where callers reach them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from pipeline.meta import optim
from pipeline.meta.gradients import chunk_slices, family, meta_gradients, split_part
from pipeline.meta.inner import adapt_then_score
from pipeline.meta.losses import query_loss
from pipeline.meta.state import (
    LR_PREFIX,
    MetaState,
    Params,
    is_first_order,
    meta_trainables,
    state_from_tensors,
    state_to_tensors,
    trainable_names,
)
from pipeline.models.task_model import TaskModel

if TYPE_CHECKING:  # typed slices; the core stays importable without pydantic (GPU machines)
    from pipeline.config import InnerConfig, OuterConfig
    from pipeline.data.episodes import EpisodeBatch

__all__ = [
    "LR_PREFIX",
    "MetaState",
    "Params",
    "apply_gradients",
    "evaluate",
    "family",
    "identity",
    "init_state",
    "is_first_order",
    "meta_gradients",
    "meta_trainables",
    "state_from_tensors",
    "state_to_tensors",
    "train_step",
    "trainable_names",
]


def init_state(
    model: TaskModel, inner_cfg: InnerConfig, outer_cfg: OuterConfig, seed: int | None = None
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
    if inner_cfg.algorithm == "metasgd" and inner_cfg.lr_shape == "param":
        lrs = {k: torch.full_like(v, inner_cfg.lr) for k, v in params.items()}
    else:
        lrs = {k: torch.tensor(inner_cfg.lr, dtype=v.dtype) for k, v in params.items()}
    state = MetaState(params, lrs, {}, 0)
    init, _ = optim.OPTIMIZERS[outer_cfg.optimizer]
    return state._replace(opt=init(meta_trainables(state, inner_cfg.algorithm)))


def apply_gradients(
    state: MetaState, grads: Params, outer_cfg: OuterConfig, *, lr_max: float | None = None
) -> MetaState:
    """One outer optimizer step (pure): returns the next MetaState. Learned inner lrs are
    kept in [0, lr_max] and step at `outer.lrs_lr` when it is set (else `outer.lr`)."""
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
    if outer_cfg.lrs_lr is not None:  # both optimizers' steps are linear in the lr
        f = outer_cfg.lrs_lr / outer_cfg.lr
        updates = {k: u * f if k.startswith(LR_PREFIX) else u for k, u in updates.items()}
    new = optim.apply_updates(current, updates)
    params = {k: new[k] for k in state.params}
    # a learned inner lr below 0 would climb the support loss: clamp at 0
    lrs = {
        k: new[LR_PREFIX + k].clamp(0.0, lr_max) if LR_PREFIX + k in new else v
        for k, v in state.lrs.items()
    }
    return MetaState(params, lrs, opt, state.step + 1)


def identity(grads: Params) -> Params:
    return grads


def train_step(
    state: MetaState,
    batch: EpisodeBatch,
    *,
    model: TaskModel,
    inner_cfg: InnerConfig,
    outer_cfg: OuterConfig,
    all_reduce: Callable[[Params], Params] = identity,
    chunk: int | None = None,
    pre_metrics: bool = True,
    return_adapted: bool = False,
) -> tuple[MetaState, dict[str, float]] | tuple[MetaState, dict[str, float], Params]:
    """The single outer step of both the single-process loop and the Ray Train worker:
    meta-gradients on this worker's tasks -> `all_reduce` (mean over ranks) -> optimizer.
    `inner.step_schedule` picks this step's inner step count; `inner.pre_weight` adds the
    query loss at the meta-parameters themselves (before adaptation) to the outer loss;
    `inner.init_objective=multitask` trains the init on that loss alone, over every word of
    the episodes (support and query), and Meta-SGD's lrs on the meta-gradient. With
    `return_adapted`, also each task's adapted parameters `[T, ...]` (detached; from the
    meta-parameters before this step's update): what the memory bank stores."""
    chunk = chunk if chunk is not None else outer_cfg.chunk
    if inner_cfg.step_schedule:
        schedule = inner_cfg.step_schedule
        inner_cfg = inner_cfg.model_copy(update={"steps": schedule[state.step % len(schedule)]})
    out = meta_gradients(
        state,
        batch,
        model=model,
        inner_cfg=inner_cfg,
        chunk=chunk,
        pre_metrics=pre_metrics,
        return_adapted=return_adapted,
        threads=outer_cfg.task_threads,
    )
    grads = out[0]
    if inner_cfg.init_objective == "multitask":  # the init from the multitask loss alone
        g0 = _loss_before_adaptation(state, _every_word(batch), model, inner_cfg, outer_cfg, chunk)
        grads = {**{k: g for k, g in grads.items() if k.startswith(LR_PREFIX)}, **g0}
    elif inner_cfg.pre_weight:
        g0 = _loss_before_adaptation(state, batch, model, inner_cfg, outer_cfg, chunk)
        grads = {k: g + inner_cfg.pre_weight * g0[k] if k in g0 else g for k, g in grads.items()}
    if not inner_cfg.learn_init:  # the init stays: only Meta-SGD's inner lrs are learned
        grads = {k: g for k, g in grads.items() if k.startswith(LR_PREFIX)}
    new = apply_gradients(state, all_reduce(grads), outer_cfg, lr_max=inner_cfg.lr_max)
    return (new, out[1], out[2]) if return_adapted else (new, out[1])


def _loss_before_adaptation(
    state: MetaState,
    batch: EpisodeBatch,
    model: TaskModel,
    inner_cfg: InnerConfig,
    outer_cfg: OuterConfig,
    chunk: int | None,
) -> Params:
    """Mean gradient of the query loss at the meta-parameters themselves (no inner step)."""
    plain = inner_cfg.model_copy(update={"algorithm": "fomaml", "steps": 0})
    g0, _ = meta_gradients(
        state,
        batch,
        model=model,
        inner_cfg=plain,
        chunk=chunk,
        pre_metrics=False,
        threads=outer_cfg.task_threads,
    )
    return g0


def _every_word(batch: EpisodeBatch) -> EpisodeBatch:
    """The batch with its support examples joined to its query (the examples axis): the
    words a multitask model trains on from the same episodes."""
    joined = type(batch.query)(
        *(torch.cat([s, q], dim=1) for s, q in zip(batch.support, batch.query, strict=True))
    )
    return batch._replace(query=joined)


def evaluate(
    state: MetaState,
    batch: EpisodeBatch,
    *,
    model: TaskModel,
    inner_cfg: InnerConfig,
    steps: list[int],
    chunk: int | None = None,
    support_floor: bool = False,
) -> dict[int, float]:
    """Mean query loss after each number of inner steps in `steps` (first order, via
    `inner.adapt_then_score`, the function the few-shot evaluation uses too). With
    `support_floor` (language models), each task's query bytes are scored under the floor
    fitted on its own support words (`losses.fit_floor`), as `metaray evaluate` scores."""
    trainable = trainable_names(model, inner_cfg)
    n = batch.support.x.shape[0]
    totals = dict.fromkeys(steps, 0.0)
    for sl in chunk_slices(n, chunk):
        sup = split_part(batch.support, sl)
        floor_on = sup if support_floor else None

        def score(p, qry, floor_on=floor_on) -> float:
            return float(query_loss(model, p, qry, floor_on).sum())

        scores = adapt_then_score(
            state.params,
            sup,
            split_part(batch.query, sl),
            model=model,
            steps=steps,
            lrs=state.lrs,
            trainable=trainable,
            score=score,
            max_step_norm=inner_cfg.max_step_norm,
        )
        for s, v in scores.items():
            totals[s] += v
    return {s: totals[s] / n for s in steps}
