"""Meta-gradients with no autograd at all, for models with hand-written `grad_hvp` (MLP, GRU).

Forward: the inner loop one step at a time (`loss_and_grad`, as `adapt` runs it), keeping
the trajectory theta_0..theta_S and each step's pass (`cache`, reused by the HVP). Reverse:
v = dL_query/dtheta_S; for each step k from the last, Meta-SGD's lr gradient gets -g_k * v,
and (second order) v <- v - H_k (lr * v), H_k the support-loss Hessian at theta_k, applied as
a Hessian-vector product. Equal to differentiating through the inner loop with autograd
(tests/unit/test_meta_gradients.py), at a fraction of the ops.
"""

from __future__ import annotations

import torch
from torch import Tensor

from pipeline.meta.inner import per_task, trust_region_scale
from pipeline.models.task_model import TaskModel

Params = dict[str, Tensor]
MANUAL_ALGORITHMS = ("maml", "fomaml", "metasgd")


def manual_meta_gradients(
    model: TaskModel,
    params: Params,
    lrs: Params,
    sup,
    qry,
    *,
    steps: int,
    first_order: bool,
    learn_lrs: bool,
    max_step_norm: float | None = None,
) -> tuple[Params, Params, Tensor, Params]:
    """-> (param grads, lr grads (empty unless learn_lrs), per-task query loss, adapted params),
    gradients summed over this chunk's tasks (`outer.meta_gradients` takes the mean).
    max_step_norm: `adapt`'s trust region; its per-task factor s_k is a constant here too,
    so step k is theta - s_k * lr * g and the sweep carries s_k wherever lr appears."""
    names = list(params)
    with torch.no_grad():
        t = sup.x.shape[0]
        p = {k: v.expand(t, *v.shape) for k, v in params.items()}
        traj, caches, scales = [p], [], []
        inner_grads: list[Params] = []  # first order: each step's support gradient, reused
        for _ in range(steps):  # the inner loop (as `adapt`), keeping each step's own pass
            caches.append({})
            keep = None if first_order else caches[-1]  # the HVP's intermediates
            _, g = model.loss_and_grad(p, sup.x, sup.y, sup.mask, set(names), cache=keep)
            if first_order and learn_lrs:
                inner_grads.append(g)
            ups = {k: lrs[k] * g[k] for k in names}
            if max_step_norm is not None:
                s = trust_region_scale(list(ups.values()), t, max_step_norm)
                ups = {k: u * per_task(s, u) for k, u in ups.items()}
                scales.append(s)
            p = {k: p[k] - ups[k] for k in names}
            traj.append(p)
        q, v = model.loss_and_grad(p, qry.x, qry.y, qry.mask, set(names))
        dlr = {k: torch.zeros_like(x) for k, x in lrs.items()} if learn_lrs else {}
        for k in range(steps - 1, -1, -1):
            if first_order:
                if not dlr:
                    break  # FOMAML: v passes through unchanged
                g = inner_grads.pop()  # the support gradient at traj[k], as computed above
            else:
                u = {n: lrs[n] * v[n] for n in names}
                if scales:
                    u = {n: x * per_task(scales[k], x) for n, x in u.items()}
                g, hv = model.grad_hvp(
                    traj[k], sup.x, sup.y, sup.mask, u, need_grad=bool(dlr), cache=caches[k]
                )
            caches[k] = {}  # freed as the sweep passes
            for n in dlr:  # summed over tasks, and over the tensor for one lr per tensor
                gv = g[n] * v[n]
                gv = (gv * per_task(scales[k], gv) if scales else gv).sum(0)
                dlr[n] -= gv if dlr[n].dim() else gv.sum()
            if not first_order:
                v = {n: v[n] - hv[n] for n in names}
        grads = {k: g.sum(0) for k, g in v.items()}
    return grads, dlr, q, p
