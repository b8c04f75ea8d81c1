"""The ONE inner loop: `adapt`. Training, evaluation, bank warm starts and Tune all call it.
Its gradient is chosen once per call from the model (`support_gradient`, see
`pipeline.models.task_model.TaskModel`); the loop itself has one body.

Task batching without vmap: a parameter that every task shares (`[out, in]`) is expanded to
`[T, out, in]`; the model runs the whole meta-batch with bmm; and since task t's loss depends
only on task t's slice, the gradient of the SUM of the per-task losses w.r.t. the expanded
tensor is every task's own gradient at once. Same numbers as a per-task loop (tested), a
fraction of the dispatch overhead of vmap over small matmuls.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from pipeline.meta.losses import model_loss
from pipeline.models.task_model import TaskModel

if TYPE_CHECKING:
    from pipeline.data.episodes import Split

Params = dict[str, Tensor]


_DIMS: weakref.WeakKeyDictionary[Any, dict[str, int]] = weakref.WeakKeyDictionary()


def ref_dims(model: TaskModel) -> dict[str, int]:
    """Each parameter's own number of dims (more: task-batched). Cached per model:
    named_parameters() costs µs we would pay every step."""
    dims = _DIMS.get(model)
    if dims is None:
        dims = _DIMS[model] = {k: p.dim() for k, p in model.named_parameters()}
    return dims


def batch_params(
    model: TaskModel, params: Params, n_tasks: int, names: Iterable[str], leaf: bool = True
) -> Params:
    """Give the parameters in `names` a leading task dim (an expand view when shared).
    With `leaf`, a tensor outside any autograd graph becomes a leaf that requires grad."""
    dims = ref_dims(model)
    out = dict(params)
    for k in names:
        p = params[k]
        if p.dim() == dims[k]:
            p = p.expand(n_tasks, *p.shape)
        if leaf and not p.requires_grad:  # detached start (evaluation): a leaf we can differentiate
            p = p.detach().clone().requires_grad_()
        out[k] = p
    return out


def _lr(lrs: float | Tensor | dict[str, Tensor], k: str) -> float | Tensor:
    return lrs[k] if isinstance(lrs, dict) else lrs


# One inner step's gradient: (params, support, names, first_order) -> a gradient per name.
Gradient = Callable[[Params, "Split", list[str], bool], list[Tensor]]


def _hand_gradient(model: TaskModel) -> Gradient:
    hand = model.loss_and_grad
    assert hand is not None

    def grad(p: Params, support: Split, names: list[str], first_order: bool) -> list[Tensor]:
        # hand-derived backward (MLP, GRU): plain forward ops, no autograd call here
        with torch.set_grad_enabled(torch.is_grad_enabled() and not first_order):
            _, g = hand(p, support.x, support.y, support.mask, set(names))
        return [g[k] for k in names]

    return grad


def _autograd_gradient(model: TaskModel) -> Gradient:
    def grad(p: Params, support: Split, names: list[str], first_order: bool) -> list[Tensor]:
        with torch.enable_grad():  # adapting needs gradients even when called under no_grad
            loss = model_loss(model, p, support).sum()
            return list(
                torch.autograd.grad(loss, [p[k] for k in names], create_graph=not first_order)
            )

    return grad


def support_gradient(model: TaskModel) -> tuple[Gradient, bool]:
    """The inner loop's gradient, chosen once from the model: its hand-derived one, else
    autograd; and whether it takes shared parameters (hand-written gradients come out per
    task, `[T, ...]`, even from shared weights; autograd needs task-batched leaves)."""
    if model.loss_and_grad is not None:
        return _hand_gradient(model), True
    return _autograd_gradient(model), False


def trust_region_scale(ups: list[Tensor], n_tasks: int, max_norm: float) -> Tensor:
    """Per task `[T]`: the factor that shrinks its step (the `[T, ...]` tensors in `ups`
    together) to an L2 norm <= max_norm. Detached: a constant to the meta-gradient, as a
    clipping factor is, so the hand-derived sweep (`meta/manual.py`) and autograd agree."""
    with torch.no_grad():
        sq = sum(u.reshape(n_tasks, -1).square().sum(1) for u in ups)
        return (max_norm / sq.sqrt().clamp_min(1e-12)).clamp(max=1.0)


def per_task(scale: Tensor, like: Tensor) -> Tensor:
    """`[T]` viewed to multiply a `[T, ...]` tensor."""
    return scale.view(-1, *([1] * (like.dim() - 1)))


def adapt(
    params: Params,
    support: Split,
    *,
    model: TaskModel,
    steps: int,
    lrs: float | Tensor | dict[str, Tensor],
    first_order: bool = False,
    trainable: Iterable[str] | None = None,
    max_step_norm: float | None = None,
) -> Params:
    """`steps` SGD steps on each task's support loss; returns task-batched params `[T, ...]`.

    params: shared (`[...]`, e.g. the meta-parameters) or already task-batched (`[T, ...]`,
    e.g. warm starts from the memory bank). support: a Split of tensors with leading task
    dim T. lrs: a float, or per-name tensors (scalars for MAML; parameter-shaped learned
    tensors for Meta-SGD). first_order: treat the inner gradients as constants (FOMAML,
    Reptile, evaluation). trainable: the names adapted (ANIL: the head); the others stay as
    given and are shared by all tasks. max_step_norm: a trust region, each task's step (all
    adapted tensors together, after the lrs) shrunk to at most this L2 norm; it bounds
    what large learned lrs do to a task unlike the training ones (bytes never seen).
    """
    n_tasks = support.x.shape[0]
    names = list(params) if trainable is None else [k for k in params if k in set(trainable)]
    grad, takes_shared = support_gradient(model)
    # With a hand-written gradient the first step keeps shared weights shared: its matmuls are
    # one mm over all tasks' rows (better than a bmm of T small ones); `p - lr * g` then
    # gives task-batched params.
    p = dict(params) if takes_shared else batch_params(model, params, n_tasks, names)
    for _ in range(steps):
        grads = grad(p, support, names, first_order)
        ups = [
            _lr(lrs, k) * (g.detach() if first_order else g)
            for k, g in zip(names, grads, strict=True)
        ]
        if max_step_norm is not None:
            scale = trust_region_scale(ups, n_tasks, max_step_norm)
            ups = [u * per_task(scale, u) for u in ups]
        p = dict(p)
        for k, u in zip(names, ups, strict=True):
            p[k] = p[k] - u
    if takes_shared and steps == 0:
        p = batch_params(model, p, n_tasks, names, leaf=False)  # still [T, ...] as documented
    return p


def adapt_then_score(
    params: Params,
    support: Split,
    query: Split,
    *,
    model: TaskModel,
    steps: Iterable[int],
    lrs: float | Tensor | dict[str, Tensor],
    trainable: Iterable[str] | None = None,
    score: Callable[[Params, Any], Any],
    max_step_norm: float | None = None,
) -> dict[int, Any]:
    """`score(adapted, query)` after each inner-step count in `steps`, adapting first order
    from `params` (shared or task-batched) and continuing from the previous count (plain SGD
    has no state, so 5 steps then 5 more equal 10). Validation during training
    (`outer.evaluate`) and the few-shot evaluation (`pipeline.eval.methods`) both use it."""
    p = {k: v.detach() for k, v in params.items()}
    done, out = 0, {}
    for s in sorted(set(steps)):
        if s > done:
            p = adapt(
                p,
                support,
                model=model,
                steps=s - done,
                lrs=lrs,
                first_order=True,
                trainable=trainable,
                max_step_norm=max_step_norm,
            )
            p = {k: v.detach() for k, v in p.items()}
            done = s
        with torch.no_grad():
            out[s] = score(p, query)
    return out


def _all_batched(model: TaskModel, params: Params, n_tasks: int) -> Params:
    """Every tensor with a leading task dim `[T, ...]` (an expand view where shared)."""
    dims = ref_dims(model)
    return {k: v if v.dim() > dims[k] else v.expand(n_tasks, *v.shape) for k, v in params.items()}


def adapt_then_score_with_fallback(
    params: Params,
    fallback: Params,
    support: Split,
    query: Split,
    *,
    model: TaskModel,
    steps: Iterable[int],
    lrs: float | Tensor | dict[str, Tensor],
    trainable: Iterable[str] | None = None,
    score: Callable[[Params, Any], Any],
    max_step_norm: float | None = None,
) -> tuple[dict[int, Any], dict[int, Tensor]]:
    """`adapt_then_score` from `params` (e.g. the bank's warm starts) with a second trajectory
    from `fallback` (the meta-init) run beside it: at each count each task is scored on
    whichever of the two has the lower loss on its own support words there. Also returns,
    per count, which tasks fell back (`[T]` bool). Why: a start from a far stored task can
    fit the first steps best and then diverge under learned lrs fitted around the meta-init
    (bench/RESULTS.md, the bank on the recipe's meta-init); the support loss sees it."""
    n = support.x.shape[0]
    warm, meta = _all_batched(model, params, n), _all_batched(model, fallback, n)
    both = {k: torch.cat([warm[k], meta[k]]) for k in warm}
    twice = type(support)(*(torch.cat([a, a]) for a in support))

    def pick(p: Params, q: Any) -> tuple[Tensor, Any]:
        with torch.no_grad():
            loss = model_loss(model, p, twice)
        back = loss[n:] < loss[:n]  # a tie keeps the warm start
        chosen = {k: torch.where(per_task(back, v[:n]), v[n:], v[:n]) for k, v in p.items()}
        return back, score(chosen, q)

    out = adapt_then_score(
        both,
        twice,
        query,
        model=model,
        steps=steps,
        lrs=lrs,
        trainable=trainable,
        score=pick,
        max_step_norm=max_step_norm,
    )
    return {s: v for s, (_, v) in out.items()}, {s: b for s, (b, _) in out.items()}
