"""The GRU's hand-derived Hessian-vector product equals autograd's double backward, and the
no-autograd meta-gradient it enables equals the autograd one (float64)."""

import pytest
import torch

from pipeline.meta import outer
from pipeline.meta.losses import model_loss
from pipeline.models.gru_hvp import gru_grad_hvp
from pipeline.models.meta_rnn import MetaRNN
from tests.unit.meta_cases import configs, seq_batch


def _model(task, layers, vocab):
    torch.manual_seed(0)
    return MetaRNN(
        cell="gru", vocab=vocab, embed=4, hidden=5, layers=layers, task=task, n_way=3
    ).double()


@pytest.mark.parametrize("task", ["lm", "classify"])
@pytest.mark.parametrize("layers,vocab", [(1, 11), (2, 11), (1, 40)], ids=["fold", "2L", "nofold"])
@pytest.mark.parametrize("shared", [True, False], ids=["shared", "batched"])
def test_hvp_equals_autograd(task, layers, vocab, shared):
    model = _model(task, layers, vocab)
    batch = seq_batch(task, t=3, vocab=vocab, dtype=torch.float64)
    s = batch.support
    g = torch.Generator().manual_seed(1)
    base = {k: v.detach() for k, v in model.named_parameters()}
    if shared:  # the meta-parameters as expand views (the sweep's theta_0)
        p = {k: v.expand(3, *v.shape) for k, v in base.items()}
    else:
        p = {
            k: (v + 0.1 * torch.randn(3, *v.shape, generator=g, dtype=v.dtype))
            for k, v in base.items()
        }
    u = {k: torch.randn(v.shape, generator=g, dtype=v.dtype) for k, v in p.items()}
    grads, hv = gru_grad_hvp(p, s.x, s.y, s.mask, u, layers=layers, kind=task)
    leaf = {k: v.clone().requires_grad_() for k, v in p.items()}
    ag = torch.autograd.grad(
        model_loss(model, leaf, s).sum(), list(leaf.values()), create_graph=True
    )
    dot = sum((a * u[k]).sum() for a, k in zip(ag, leaf, strict=True))
    ahv = torch.autograd.grad(dot, list(leaf.values()))
    for (k, a), h in zip(zip(leaf, ag, strict=True), ahv, strict=True):
        torch.testing.assert_close(grads[k], a.detach(), rtol=1e-9, atol=1e-10, msg=k)
        torch.testing.assert_close(hv[k], h, rtol=1e-8, atol=1e-10, msg=k)
    _, hv2 = gru_grad_hvp(p, s.x, s.y, s.mask, u, layers=layers, kind=task, need_grad=False)
    torch.testing.assert_close(hv2, hv)


@pytest.mark.parametrize("alg", ["maml", "metasgd", "metasgd-fo"])
@pytest.mark.parametrize("max_step_norm", [None, 0.05], ids=["free", "trust"])
def test_manual_meta_gradient_equals_autograd(alg, max_step_norm):
    model = _model("lm", 2, 11)
    ic, oc = configs(alg.removesuffix("-fo"), steps=3, lr=0.3)
    ic = ic.model_copy(update={"first_order": alg.endswith("-fo"), "max_step_norm": max_step_norm})
    state = outer.init_state(model, ic, oc)
    state = state._replace(
        params={k: v.double() for k, v in state.params.items()},
        lrs={k: v.double() for k, v in state.lrs.items()},
    )
    batch = seq_batch("lm", t=3, dtype=torch.float64)
    assert hasattr(model, "grad_hvp")  # the GRU takes the no-autograd sweep by default
    hand, m1 = outer.meta_gradients(state, batch, model=model, inner_cfg=ic)
    auto, m2 = outer.meta_gradients(state, batch, model=model, inner_cfg=ic, manual=False)
    for k in auto:
        torch.testing.assert_close(hand[k], auto[k], rtol=1e-8, atol=1e-11, msg=k)
    assert m1["loss_post"] == pytest.approx(m2["loss_post"], rel=1e-12)
    if max_step_norm is not None:  # the region bites here: not the unconstrained gradient
        free = ic.model_copy(update={"max_step_norm": None})
        plain, _ = outer.meta_gradients(state, batch, model=model, inner_cfg=free)
        assert any(not torch.allclose(plain[k], hand[k]) for k in hand)
