"""The outer loop, pure: meta-gradients over a task batch, the outer optimizer step, evaluation.

Algorithms (`InnerConfig.algorithm`):
- maml: differentiate the query loss through the inner steps (second order).
- fomaml: same, inner gradients treated as constants.
- metasgd: like maml, with per-parameter inner learning rates that are meta-learned.
- anil: adapt only the head (`model.head_names`); the body is shared by all tasks.
- reptile: no query backward; the outer "gradient" is params - mean(adapted params).
All tasks of a batch run at once (task-batched params, one bmm per layer); `chunk` bounds
memory by running tasks in groups and summing their gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from pipeline.meta import optim
from pipeline.meta.inner import adapt, adapt_then_score, ref_dims
from pipeline.meta.losses import model_loss
from pipeline.meta.manual import MANUAL_ALGORITHMS, manual_meta_gradients
from pipeline.models.task_model import TaskModel

if TYPE_CHECKING:  # typed slices; the core stays importable without pydantic (GPU machines)
    from pipeline.config import InnerConfig, OuterConfig
    from pipeline.data.episodes import EpisodeBatch, Split

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


def _chunks(n: int, chunk: int | None) -> list[slice]:
    size = chunk if chunk else n
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _part(split: Split, sl: slice) -> Split:
    return type(split)(*(t[sl] for t in split))


class _Leaves(NamedTuple):
    """What the meta-gradient is taken with respect to, for one batch."""

    params: Params  # the meta-parameters as leaves (requiring grad unless Reptile)
    lrs: Params  # Meta-SGD: leaves too; else the state's fixed lrs
    wrt: Params  # flat, keyed like `meta_trainables`: params (+ `lr/<name>` for Meta-SGD)


def _leaves(state: MetaState, algorithm: str) -> _Leaves:
    params = {k: v.detach().requires_grad_(algorithm != "reptile") for k, v in state.params.items()}
    lrs = state.lrs
    wrt = dict(params)
    if algorithm == "metasgd":
        lrs = {k: v.detach().requires_grad_() for k, v in state.lrs.items()}
        wrt.update({LR_PREFIX + k: v for k, v in lrs.items()})
    return _Leaves(params, lrs, wrt)


# One algorithm family on one chunk of tasks -> (each meta-gradient SUMMED over the chunk's
# tasks, per-task query loss [m], adapted params). `meta_gradients` divides once by the
# batch's task count.
Family = Callable[..., tuple[Params, Tensor, Params]]


def _manual_sweep(
    state: MetaState,
    leaves: _Leaves,
    sup: Split,
    qry: Split,
    *,
    model: TaskModel,
    inner_cfg: InnerConfig,
) -> tuple[Params, Tensor, Params]:
    """No autograd: the hand-derived reverse sweep (`meta/manual.py`; MLP and GRU)."""
    g, dlr, q, adapted = manual_meta_gradients(
        model,
        state.params,
        state.lrs,
        sup,
        qry,
        steps=inner_cfg.steps,
        first_order=is_first_order(inner_cfg),
        learn_lrs=inner_cfg.algorithm == "metasgd",
    )
    return {**g, **{LR_PREFIX + k: v for k, v in dlr.items()}}, q, adapted


def _through_inner_loop(
    state: MetaState,
    leaves: _Leaves,
    sup: Split,
    qry: Split,
    *,
    model: TaskModel,
    inner_cfg: InnerConfig,
    first_order: bool,
) -> tuple[Params, Tensor, Params]:
    """Autograd of the query loss through `adapt`: second order (MAML, Meta-SGD, ANIL) or
    with the inner gradients as constants (first order: FOMAML, `inner.first_order`)."""
    adapted = adapt(
        leaves.params,
        sup,
        model=model,
        steps=inner_cfg.steps,
        lrs=leaves.lrs,
        first_order=first_order,
        trainable=trainable_names(model, inner_cfg),
    )
    q = model_loss(model, adapted, qry)
    gs = torch.autograd.grad(q.sum(), list(leaves.wrt.values()), allow_unused=True)
    return {k: g for k, g in zip(leaves.wrt, gs, strict=True) if g is not None}, q, adapted


def _reptile(
    state: MetaState,
    leaves: _Leaves,
    sup: Split,
    qry: Split,
    *,
    model: TaskModel,
    inner_cfg: InnerConfig,
) -> tuple[Params, Tensor, Params]:
    """No query backward: the outer "gradient" of each task is theta - phi_t."""
    adapted = adapt(
        leaves.params,
        sup,
        model=model,
        steps=inner_cfg.steps,
        lrs=leaves.lrs,
        first_order=True,
        trainable=trainable_names(model, inner_cfg),
    )
    with torch.no_grad():
        q = model_loss(model, adapted, qry)
        m = sup.x.shape[0]
        grads = {k: v * m - adapted[k].sum(0) for k, v in leaves.params.items()}
    return grads, q, adapted


def family(model: TaskModel, inner_cfg: InnerConfig, manual: bool | None = None) -> Family:
    """The meta-gradient family of `inner_cfg.algorithm`, chosen once per batch. `manual`:
    force (True) or forbid (False) the hand-derived sweep; None: when the model has one."""
    alg = inner_cfg.algorithm
    if manual is None:
        manual = model.grad_hvp is not None and alg in MANUAL_ALGORITHMS
    if manual:
        return _manual_sweep
    if alg == "reptile":
        return _reptile
    return partial(_through_inner_loop, first_order=is_first_order(inner_cfg))


def _task_batched(model: TaskModel, adapted: Params, m: int) -> Params:
    """Every key `[m, ...]`, detached (ANIL's shared body is expanded too)."""
    dims = ref_dims(model)
    return {
        k: (v if v.dim() > dims[k] else v.expand(m, *v.shape)).detach() for k, v in adapted.items()
    }


def meta_gradients(
    state: MetaState,
    batch: EpisodeBatch,
    *,
    model: TaskModel,
    inner_cfg: InnerConfig,
    chunk: int | None = None,
    pre_metrics: bool = True,
    return_adapted: bool = False,
    manual: bool | None = None,
) -> tuple[Params, dict[str, float]] | tuple[Params, dict[str, float], Params]:
    """Mean meta-gradient over the batch's tasks, keyed like `meta_trainables`.

    Returns `(grads, metrics)`, or `(grads, metrics, adapted)` with `return_adapted`, where
    `adapted` holds each task's adapted parameters `[T, ...]` (detached).
    metrics: loss_post (query loss after adaptation), loss_pre (before adaptation; skipped
    with pre_metrics=False).
    """
    grad_of = family(model, inner_cfg, manual)
    leaves = _leaves(state, inner_cfg.algorithm)
    n = batch.support.x.shape[0]
    sums: Params = {k: torch.zeros_like(v) for k, v in leaves.wrt.items()}
    post, pre = torch.zeros(()), torch.zeros(())
    kept: list[Params] = []
    for sl in _chunks(n, chunk):
        sup, qry = _part(batch.support, sl), _part(batch.query, sl)
        g, q, adapted = grad_of(state, leaves, sup, qry, model=model, inner_cfg=inner_cfg)
        for k, v in g.items():
            sums[k] += v
        post = post + q.detach().sum()
        if pre_metrics:
            with torch.no_grad():
                pre = pre + model_loss(model, leaves.params, qry).sum()
        if return_adapted:
            kept.append(_task_batched(model, adapted, sl.stop - sl.start))
    grads = {k: v / n for k, v in sums.items()}  # the mean over the batch's tasks, once
    metrics = {"loss_post": float(post) / n}
    if pre_metrics:
        metrics["loss_pre"] = float(pre) / n
    if return_adapted:
        return grads, metrics, {k: torch.cat([c[k] for c in kept]) for k in kept[0]}
    return grads, metrics


def apply_gradients(state: MetaState, grads: Params, outer_cfg: OuterConfig) -> MetaState:
    """One outer optimizer step (pure): returns the next MetaState."""
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
    new = optim.apply_updates(current, updates)
    params = {k: new[k] for k in state.params}
    lrs = {k: new.get(LR_PREFIX + k, v) for k, v in state.lrs.items()}
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
    query loss at the meta-parameters themselves (before adaptation) to the outer loss.
    With `return_adapted`, also each task's adapted parameters `[T, ...]` (detached; from
    the meta-parameters before this step's update): what the memory bank stores."""
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
    )
    grads = out[0]
    if inner_cfg.pre_weight:
        plain = inner_cfg.model_copy(update={"algorithm": "fomaml", "steps": 0})
        g0, _ = meta_gradients(
            state, batch, model=model, inner_cfg=plain, chunk=chunk, pre_metrics=False
        )
        grads = {k: g + inner_cfg.pre_weight * g0[k] if k in g0 else g for k, g in grads.items()}
    new = apply_gradients(state, all_reduce(grads), outer_cfg)
    return (new, out[1], out[2]) if return_adapted else (new, out[1])


def evaluate(
    state: MetaState,
    batch: EpisodeBatch,
    *,
    model: TaskModel,
    inner_cfg: InnerConfig,
    steps: list[int],
    chunk: int | None = None,
) -> dict[int, float]:
    """Mean query loss after each number of inner steps in `steps` (first order, via
    `inner.adapt_then_score`, the function the few-shot evaluation uses too)."""
    trainable = trainable_names(model, inner_cfg)
    n = batch.support.x.shape[0]
    totals = dict.fromkeys(steps, 0.0)
    for sl in _chunks(n, chunk):
        scores = adapt_then_score(
            state.params,
            _part(batch.support, sl),
            _part(batch.query, sl),
            model=model,
            steps=steps,
            lrs=state.lrs,
            trainable=trainable,
            score=lambda p, qry: float(model_loss(model, p, qry).sum()),
        )
        for s, v in scores.items():
            totals[s] += v
    return {s: totals[s] / n for s in steps}


# ---------------------------------------------------------------- checkpoint helpers
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
