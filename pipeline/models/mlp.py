"""The sinusoid MLP (1-40-40-1, ReLU) as a pure function of its parameter dict.

`apply(params, x)` takes x `[T, K, in]`; each weight is either shared (`[out, in]`) or
task-batched (`[T, out, in]`), so a whole meta-batch runs as one bmm per layer.
`loss_and_grad` is the hand-derived backward pass of the masked MSE: the inner loop then
needs no autograd call of its own, and second-order MAML is one forward graph plus one
backward (checked against autograd in tests/unit/test_models.py).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pipeline.models.cells import linear


class MLP(nn.Module):
    """A `TaskModel` (pipeline/models/task_model.py) with both hand-derived hooks."""

    kind = "regression"

    def __init__(self, d_in: int = 1, hidden: int = 40, layers: int = 2, d_out: int = 1) -> None:
        super().__init__()
        self._init_args = dict(d_in=d_in, hidden=hidden, layers=layers, d_out=d_out)
        dims = [d_in] + [hidden] * layers
        self.body = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.head = nn.Linear(dims[-1], d_out)
        self.layers = layers
        self.head_names = ("head.weight", "head.bias")

    def functional(
        self, params: dict[str, Tensor], x: Tensor, mask: Tensor | None = None
    ) -> Tensor:
        return apply(params, x, self.layers)

    def reinit(self) -> nn.Module:
        """A freshly initialised model of the same architecture (uses torch's global RNG)."""
        return type(self)(**self._init_args)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        params = dict(self.named_parameters())
        if x.dim() == 2:  # one task [K, in] (also what vmap shows per task)
            return apply(params, x.unsqueeze(0), self.layers).squeeze(0)
        return apply(params, x, self.layers)

    def loss_and_grad(
        self,
        params: dict[str, Tensor],
        x: Tensor,
        y: Tensor,
        mask: Tensor,
        names: set[str],
        cache: dict | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        # `cache` (the GRU keeps its pass for grad_hvp) is unused: the MLP's pass is cheap
        return loss_and_grad(params, x, y, mask, self.layers, names)

    def grad_hvp(
        self,
        params: dict[str, Tensor],
        x: Tensor,
        y: Tensor,
        mask: Tensor,
        u: dict[str, Tensor],
        need_grad: bool = True,
        cache: dict | None = None,
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        return grad_hvp(params, x, y, mask, self.layers, u, need_grad)


def apply(params: dict[str, Tensor], x: Tensor, layers: int) -> Tensor:
    h = x
    for i in range(layers):
        h = torch.relu(linear(h, params[f"body.{i}.weight"], params[f"body.{i}.bias"]))
    return linear(h, params["head.weight"], params["head.bias"])


def loss_and_grad(
    params: dict[str, Tensor], x: Tensor, y: Tensor, mask: Tensor, layers: int, names: set[str]
) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-task masked MSE `[T]` and its gradient w.r.t. `names`, by hand (ReLU MLP).

    Gradients are per task (`[T, ...]`): loss_t depends only on task t's parameters, so
    d(sum_t loss_t)/dp_t is task t's own gradient. Every op here is differentiable, so the
    outer backward of second-order MAML flows through this function.
    """
    acts, pos = [x], []
    h = x
    for i in range(layers):
        h = torch.relu(linear(h, params[f"body.{i}.weight"], params[f"body.{i}.bias"]))
        pos.append(h.sign())  # ReLU's derivative as 0/1 floats (cheaper than z > 0 on CPU)
        acts.append(h)
    out = linear(h, params["head.weight"], params["head.bias"])
    n = mask.sum(-1).clamp_min(1.0)  # [T]
    err = (out - y) * mask.unsqueeze(-1)  # [T, K, 1]
    loss = (err * err).sum((-1, -2)) / n
    d = err * (2.0 / n)[:, None, None]  # dL/dout  [T, K, out]
    grads: dict[str, Tensor] = {}
    weights = [f"body.{i}" for i in range(layers)] + ["head"]
    wanted = [any(f"{w}.{p}" in names for p in ("weight", "bias")) for w in weights]
    for i in range(layers, -1, -1):
        name = weights[i]
        w = params[f"{name}.weight"]
        if f"{name}.weight" in names:
            grads[f"{name}.weight"] = torch.bmm(d.transpose(1, 2), acts[i])  # [T, out, in]
        if f"{name}.bias" in names:
            grads[f"{name}.bias"] = d.sum(1)
        if not any(wanted[:i]):  # nothing below needs a gradient (ANIL: head only)
            break
        d = ((d @ w) if w.dim() == 2 else torch.bmm(d, w)) * pos[i - 1]
    return loss, grads


def grad_hvp(
    params: dict[str, Tensor],
    x: Tensor,
    y: Tensor,
    mask: Tensor,
    layers: int,
    u: dict[str, Tensor],
    need_grad: bool = True,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Per-task gradient of the masked MSE and its Hessian-vector product with `u`, by hand.

    All parameters and `u` are task-batched `[T, ...]`. The HVP is Pearlmutter's R-operator
    pushed through the forward pass and the hand-written backward pass above: about twice
    the ops of one forward+backward, no autograd graph. This is what lets second-order MAML
    on the MLP run without autograd: d(outer)/d(theta) = v - H (lr * v) per inner step.
    """
    names = [f"body.{i}" for i in range(layers)] + ["head"]
    acts, pos = [x], []
    h = x
    for i in range(layers):
        h = torch.relu(linear(h, params[f"{names[i]}.weight"], params[f"{names[i]}.bias"]))
        pos.append(h.sign())
        acts.append(h)
    out = linear(h, params["head.weight"], params["head.bias"])
    # R-forward: directional derivative of every activation along u
    r_acts: list[Tensor | None] = [None]
    r = None
    for i, name in enumerate(names):
        w = params[f"{name}.weight"]
        rz = linear(acts[i], u[f"{name}.weight"], u[f"{name}.bias"])
        if r is not None:
            rz = torch.baddbmm(rz, r, w.transpose(1, 2))
        if i < layers:
            r = rz * pos[i]
            r_acts.append(r)
        else:
            r_out = rz
    m = mask.unsqueeze(-1)
    c = (2.0 / mask.sum(-1).clamp_min(1.0))[:, None, None]
    d = (out - y) * m * c
    rd = r_out * m * c
    g: dict[str, Tensor] = {}
    hv: dict[str, Tensor] = {}
    for i in range(layers, -1, -1):
        name = names[i]
        dt = d.transpose(1, 2)
        if need_grad:  # Meta-SGD needs g for its lr gradient; MAML only the HVP
            g[f"{name}.weight"] = torch.bmm(dt, acts[i])
            g[f"{name}.bias"] = d.sum(1)
        hw = torch.bmm(rd.transpose(1, 2), acts[i])
        if r_acts[i] is not None:
            hw = torch.baddbmm(hw, dt, r_acts[i])
        hv[f"{name}.weight"] = hw
        hv[f"{name}.bias"] = rd.sum(1)
        if i > 0:
            w = params[f"{name}.weight"]
            rd = torch.baddbmm(torch.bmm(rd, w), d, u[f"{name}.weight"]) * pos[i - 1]
            d = torch.bmm(d, w) * pos[i - 1]
    return g, hv
