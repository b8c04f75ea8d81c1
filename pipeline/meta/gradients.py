"""Meta-gradients, pure: one function per algorithm family, the mean over tasks taken once.

Families (`family` picks one per batch from `inner.algorithm` and the model's hooks):
- the hand-derived reverse sweep (`meta/manual.py`; models with `grad_hvp`: MLP, GRU):
  MAML, FOMAML, Meta-SGD with no autograd at all;
- autograd of the query loss through `inner.adapt`, second order (MAML, Meta-SGD, ANIL) or
  first order (FOMAML, `inner.first_order`);
- Reptile: no query backward; the outer "gradient" is params - mean(adapted params).
Each returns gradients SUMMED over its chunk's tasks; `meta_gradients` divides once.
All tasks of a batch run at once (task-batched params, one bmm per layer); `chunk` bounds
memory by running tasks in groups and summing their gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache, partial
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from pipeline.meta.inner import adapt, ref_dims
from pipeline.meta.losses import model_loss
from pipeline.meta.manual import MANUAL_ALGORITHMS, manual_meta_gradients
from pipeline.meta.state import LR_PREFIX, MetaState, Params, is_first_order, trainable_names
from pipeline.models.task_model import TaskModel

if TYPE_CHECKING:
    from pipeline.config import InnerConfig
    from pipeline.data.episodes import EpisodeBatch, Split


def chunk_slices(n: int, chunk: int | None) -> list[slice]:
    """Task groups of at most `chunk` (None: all at once)."""
    size = chunk if chunk else n
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def split_part(split: Split, sl: slice) -> Split:
    """The tasks `sl` of a Split."""
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
        max_step_norm=inner_cfg.max_step_norm,
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
        max_step_norm=inner_cfg.max_step_norm,
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
        max_step_norm=inner_cfg.max_step_norm,
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


@lru_cache(maxsize=4)
def _pool(threads: int) -> ThreadPoolExecutor:
    """One long-lived pool per thread count: a thread's first torch op sets up per-thread
    state (its OpenMP team among it), which a fresh pool each step would pay again."""
    return ThreadPoolExecutor(threads, thread_name_prefix="metaray-tasks")


def task_groups(n: int, chunk: int | None, threads: int = 1) -> list[slice]:
    """The task groups of one batch: `chunk_slices`, or with `threads` > 1 and no smaller
    `chunk`, `threads` near-equal groups (each runs on its own thread)."""
    if threads > 1 and n >= threads and (chunk is None or chunk >= n):
        return chunk_slices(n, -(-n // threads))
    return chunk_slices(n, chunk)


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
    threads: int = 1,
) -> tuple[Params, dict[str, float]] | tuple[Params, dict[str, float], Params]:
    """Mean meta-gradient over the batch's tasks, keyed like `meta_trainables`.

    Returns `(grads, metrics)`, or `(grads, metrics, adapted)` with `return_adapted`, where
    `adapted` holds each task's adapted parameters `[T, ...]` (detached).
    metrics: loss_post (query loss after adaptation), loss_pre (before adaptation; skipped
    with pre_metrics=False). `threads` > 1: the task groups (`task_groups`) run on that many
    Python threads at once (torch releases the GIL inside its ops; on CPU a recurrent model's
    per-time-step ops are too small for torch's intra-op threads) and are summed in a fixed
    order, so the result does not depend on which thread finishes first.
    """
    grad_of = family(model, inner_cfg, manual)
    leaves = _leaves(state, inner_cfg.algorithm)
    n = batch.support.x.shape[0]
    groups = task_groups(n, chunk, threads)

    def run(sl: slice):
        sup, qry = split_part(batch.support, sl), split_part(batch.query, sl)
        g, q, adapted = grad_of(state, leaves, sup, qry, model=model, inner_cfg=inner_cfg)
        pre = None
        if pre_metrics:
            with torch.no_grad():
                pre = model_loss(model, leaves.params, qry).sum()
        kept = _task_batched(model, adapted, sl.stop - sl.start) if return_adapted else None
        return g, q.detach().sum(), pre, kept

    if threads > 1 and len(groups) > 1:
        results = list(_pool(threads).map(run, groups))
    else:
        results = [run(sl) for sl in groups]
    sums: Params = {k: torch.zeros_like(v) for k, v in leaves.wrt.items()}
    post, pre = torch.zeros(()), torch.zeros(())
    for g, q, p, _ in results:  # in group order: deterministic
        for k, v in g.items():
            sums[k] += v
        post = post + q
        if p is not None:
            pre = pre + p
    kept = [r[3] for r in results]
    grads = {k: v / n for k, v in sums.items()}  # the mean over the batch's tasks, once
    metrics = {"loss_post": float(post) / n}
    if pre_metrics:
        metrics["loss_pre"] = float(pre) / n
    if return_adapted:
        return grads, metrics, {k: torch.cat([c[k] for c in kept]) for k in kept[0]}
    return grads, metrics
