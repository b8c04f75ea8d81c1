"""Outer optimizers as pure (init, update) pairs (`pipeline/meta/optim.py`)."""

import torch

from pipeline.meta import optim


def test_adam_matches_torch_optim_adam():
    torch.manual_seed(0)
    p = {"a": torch.randn(3, 2), "b": torch.randn(4)}
    ref = {k: v.clone().requires_grad_() for k, v in p.items()}
    opt = torch.optim.Adam(ref.values(), lr=0.01)
    state = optim.adam_init(p)
    for _ in range(4):
        grads = {k: torch.randn_like(v) for k, v in p.items()}
        upd, state = optim.adam_update(grads, state, p, 0.01)
        p = optim.apply_updates(p, upd)
        for k in ref:
            ref[k].grad = grads[k]
        opt.step()
    for k in p:
        torch.testing.assert_close(p[k], ref[k].detach(), rtol=1e-6, atol=1e-7)
