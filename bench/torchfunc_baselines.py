"""The plain `torch.func` versions of a second-order MAML step, for side-by-side timing.

Same maths and the same Adam as `outer.train_step` with `maml`: per task, `steps` SGD steps
on the support loss (grad-of-grad through `functional_call` of the model on ONE task), the
query loss after them, mean over tasks, `grad` of that w.r.t. the meta-parameters.
- `vmap_step`: `vmap` over the tasks (what torch.func's own MAML example does);
- `loop_step`: a Python loop over the tasks, one `grad` per task, gradients averaged.
Imports only torch and the functional core (no pydantic/Ray), so `gpu_check.py` can use it.
"""

from __future__ import annotations

import ast
import contextlib
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from pipeline.meta import optim
from pipeline.meta.losses import task_loss

Params = dict[str, Tensor]


def config_defaults(cls_name: str) -> dict:
    """Field defaults of a `pipeline/config.py` slice, read with `ast` (no pydantic: the GPU
    machine has none), so a knob added there reaches the bench configs by itself."""
    tree = ast.parse((Path(__file__).resolve().parents[1] / "pipeline" / "config.py").read_text())
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name).body
    out = {}
    for node in body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        value = node.value
        if isinstance(value, ast.Call) and value.args:  # Field(default, ...)
            value = value.args[0]
        with contextlib.suppress(ValueError, TypeError):
            out[node.target.id] = ast.literal_eval(value)
    return out


def plain_cfgs(algorithm: str, steps: int, lr: float, outer_lr: float = 1e-3):
    """(inner, outer) slices as plain namespaces: `pipeline.config`'s defaults, overridden."""
    inner = {**config_defaults("InnerConfig"), "algorithm": algorithm, "steps": steps, "lr": lr}
    outer = {**config_defaults("OuterConfig"), "optimizer": "adam", "lr": outer_lr}
    return SimpleNamespace(**inner), SimpleNamespace(**outer)


def one_task_loss(model: nn.Module, steps: int, lr: float) -> Callable[..., Tensor]:
    """Query loss of one task after `steps` inner steps, differentiable w.r.t. `p` (2nd order)."""

    def loss(p: Params, x: Tensor, y: Tensor, m: Tensor) -> Tensor:
        out = functional_call(model, p, (x, m))
        return task_loss(model.kind, out[None], y[None], m[None])[0]

    def one_task(p: Params, sx, sy, sm, qx, qy, qm) -> Tensor:
        for _ in range(steps):
            g = grad(loss)(p, sx, sy, sm)
            p = {k: p[k] - lr * g[k] for k in p}
        return loss(p, qx, qy, qm)

    return one_task


def _adam(state, g: Params, outer_lr: float):
    updates, opt = optim.adam_update(g, state.opt, state.params, outer_lr)
    return state._replace(params=optim.apply_updates(state.params, updates), opt=opt)


def vmap_step(model: nn.Module, steps: int, lr: float, outer_lr: float):
    """`step(state, batch) -> state` with vmap over tasks."""
    one_task = one_task_loss(model, steps, lr)

    def meta_loss(p: Params, batch) -> Tensor:
        return vmap(one_task, in_dims=(None, 0, 0, 0, 0, 0, 0))(
            p, *batch.support, *batch.query
        ).mean()

    def step(state, batch):
        return _adam(state, grad(meta_loss)(state.params, batch), outer_lr)

    return step


def loop_step(model: nn.Module, steps: int, lr: float, outer_lr: float):
    """`step(state, batch) -> state` with a Python loop over tasks (one `grad` each)."""
    g_one = grad(one_task_loss(model, steps, lr))

    def step(state, batch):
        n = batch.support.x.shape[0]
        total: Params = {k: torch.zeros_like(v) for k, v in state.params.items()}
        for t in range(n):
            g = g_one(state.params, *(s[t] for s in batch.support), *(q[t] for q in batch.query))
            for k in total:
                total[k] += g[k]
        return _adam(state, {k: v / n for k, v in total.items()}, outer_lr)

    return step
