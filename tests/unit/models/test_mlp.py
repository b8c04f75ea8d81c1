"""The sinusoid MLP (`pipeline/models/mlp.py`): its hand-derived gradient equals autograd."""

import torch

from pipeline.meta import inner
from pipeline.meta.losses import model_loss
from tests.unit.meta_cases import sine_batch, tiny_mlp


def test_analytic_mlp_gradient_equals_autograd():
    model = tiny_mlp()
    batch = sine_batch(t=3)
    p = inner.batch_params(model, dict(model.named_parameters()), 3, dict(model.named_parameters()))
    loss, g = model.loss_and_grad(p, batch.support.x, batch.support.y, batch.support.mask, set(p))
    ref = torch.autograd.grad(model_loss(model, p, batch.support).sum(), list(p.values()))
    torch.testing.assert_close(loss, model_loss(model, p, batch.support))
    for k, r in zip(p, ref, strict=True):
        torch.testing.assert_close(g[k], r, rtol=1e-5, atol=1e-6)
