"""What the inner and outer loops need from a model: the `TaskModel` protocol.

A task model is a pure function of a parameter dict over task-batched inputs `[T, ...]`,
with its loss kind and the names ANIL adapts. Two speed hooks are optional and fixed when
the model is built (an attribute that is `None` when the model has no hand-derived form),
so the loops choose their path once from `loss_and_grad` / `grad_hvp`, never by probing:
- `loss_and_grad(params, x, y, mask, names) -> (loss [T], {name: grad [T, ...]})`: the
  per-task support loss and its gradient by hand (MLP; GRU lm/classify: hand-written BPTT);
  differentiable, so second-order MAML can backpropagate through it.
- `grad_hvp(params, x, y, mask, u, need_grad) -> (grads, Hessian-vector products with u)`
  (MLP; GRU lm/classify): meta-gradients of MAML/FOMAML/Meta-SGD then need no autograd.
  Both take an optional `cache=` dict: `loss_and_grad` leaves its pass there and `grad_hvp`
  reuses it at the same params and data (the GRU; the MLP ignores it).
Both always equal autograd (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from torch import Tensor, nn

Params = dict[str, Tensor]
LossAndGrad = Callable[[Params, Tensor, Tensor, Tensor, set[str]], tuple[Tensor, Params]]
GradHVP = Callable[[Params, Tensor, Tensor, Tensor, Params, bool], tuple[Params, Params]]


class TaskModel(Protocol):
    kind: str  # regression | lm | classify: which loss (`pipeline.meta.losses.task_loss`)
    head_names: tuple[str, ...]  # what ANIL adapts
    loss_and_grad: LossAndGrad | None  # hand-derived support gradient, or None: autograd
    grad_hvp: GradHVP | None  # hand-derived gradient + HVP, or None: autograd meta-gradients

    def functional(self, params: Params, x: Tensor, mask: Tensor) -> Tensor:
        """Outputs `[T, ...]`; each parameter shared (its shape) or task-batched `[T, ...]`."""
        ...

    def reinit(self) -> nn.Module:
        """A freshly initialised model of the same architecture (torch's global RNG)."""
        ...

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]: ...
