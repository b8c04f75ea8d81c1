"""Outer optimizers as pure (init, update) pairs over flat dicts of tensors (optax shape).

`init(params) -> state`, `update(grads, state, params, lr) -> (updates, state)`; the new
parameters are `params + updates`. The state is a flat `dict[str, Tensor]` ("count",
"m/<name>", "v/<name>"), so it goes straight into safetensors. Nothing is mutated.
Adam follows `torch.optim.Adam` exactly (tested).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

Flat = dict[str, Tensor]


def adam_init(params: Flat) -> Flat:
    state: Flat = {"count": torch.zeros((), dtype=torch.float64)}
    for k, p in params.items():
        state[f"m/{k}"] = torch.zeros_like(p)
        state[f"v/{k}"] = torch.zeros_like(p)
    return state


def adam_update(
    grads: Flat,
    state: Flat,
    params: Flat,
    lr: float,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> tuple[Flat, Flat]:
    keys = list(grads)
    g = [grads[k] for k in keys]
    m = torch._foreach_add(torch._foreach_mul([state[f"m/{k}"] for k in keys], b1), g, alpha=1 - b1)
    v = torch._foreach_mul([state[f"v/{k}"] for k in keys], b2)
    v = torch._foreach_addcmul(v, g, g, value=1 - b2)
    t = float(state["count"]) + 1.0
    bc1, bc2 = 1 - b1**t, 1 - b2**t
    denom = torch._foreach_add(torch._foreach_div(torch._foreach_sqrt(v), bc2**0.5), eps)
    upd = torch._foreach_mul(torch._foreach_div(m, denom), -lr / bc1)
    new: Flat = dict(state)
    new["count"] = state["count"] + 1
    for k, mk, vk in zip(keys, m, v, strict=True):
        new[f"m/{k}"], new[f"v/{k}"] = mk, vk
    return dict(zip(keys, upd, strict=True)), new


def sgd_init(params: Flat) -> Flat:
    return {"count": torch.zeros((), dtype=torch.float64)}


def sgd_update(grads: Flat, state: Flat, params: Flat, lr: float) -> tuple[Flat, Flat]:
    keys = list(grads)
    upd = torch._foreach_mul([grads[k] for k in keys], -lr)
    return dict(zip(keys, upd, strict=True)), {"count": state["count"] + 1}


OPTIMIZERS: dict[str, tuple[Callable[..., Flat], Callable[..., tuple[Flat, Flat]]]] = {
    "adam": (adam_init, adam_update),
    "sgd": (sgd_init, sgd_update),
}


def apply_updates(params: Flat, updates: Flat) -> Flat:
    keys = [k for k in params if k in updates]
    new = torch._foreach_add([params[k] for k in keys], [updates[k] for k in keys])
    out = dict(params)
    out.update(zip(keys, new, strict=True))
    return out
