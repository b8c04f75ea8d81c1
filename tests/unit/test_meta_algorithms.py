"""Algorithm-specific behaviour, the optimizer, checkpoint helpers and a short sinusoid run."""

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.func import functional_call, vmap

from pipeline.config import InnerConfig, OuterConfig
from pipeline.meta import inner, optim, outer
from pipeline.meta.losses import model_loss
from pipeline.models.meta_rnn import MetaRNN
from pipeline.models.mlp import MLP
from tests.unit.meta_cases import configs, seq_batch, sine_batch, tiny_mlp, tiny_rnn


def test_metasgd_learning_rates_receive_gradients_and_move():
    model = tiny_mlp()
    ic, oc = configs("metasgd")
    state = outer.init_state(model, ic, oc)
    grads, _ = outer.meta_gradients(state, sine_batch(), model=model, inner_cfg=ic)
    lr_grads = {k: g for k, g in grads.items() if k.startswith("lr/")}
    assert set(lr_grads) == {"lr/" + k for k in state.params}
    assert all(g.abs().sum() > 0 for g in lr_grads.values())
    new = outer.apply_gradients(state, grads, oc)
    assert all(not torch.equal(new.lrs[k], state.lrs[k]) for k in state.lrs)


def test_anil_leaves_the_body_unchanged_in_the_inner_loop():
    model = tiny_rnn("classify")
    ic, oc = configs("anil", steps=3, lr=0.5)
    state = outer.init_state(model, ic, oc)
    batch = seq_batch("classify")
    _, _, adapted = outer.meta_gradients(
        state, batch, model=model, inner_cfg=ic, return_adapted=True
    )
    for k, v in state.params.items():
        assert adapted[k].shape == (3, *v.shape)
        same = all(torch.equal(a, v) for a in adapted[k])
        assert same == (k not in model.head_names), k


def test_analytic_mlp_gradient_equals_autograd():
    model = tiny_mlp()
    batch = sine_batch(t=3)
    p = inner.batch_params(model, dict(model.named_parameters()), 3, dict(model.named_parameters()))
    loss, g = model.loss_and_grad(p, batch.support.x, batch.support.y, batch.support.mask, set(p))
    ref = torch.autograd.grad(model_loss(model, p, batch.support).sum(), list(p.values()))
    torch.testing.assert_close(loss, model_loss(model, p, batch.support))
    for k, r in zip(p, ref, strict=True):
        torch.testing.assert_close(g[k], r, rtol=1e-5, atol=1e-6)


def test_model_is_vmap_safe_and_matches_the_batched_path():
    model = tiny_rnn("lm")
    batch = seq_batch("lm", t=4)
    params = dict(model.named_parameters())
    mapped = vmap(lambda x, m: functional_call(model, params, (x, m)))(
        batch.support.x, batch.support.mask
    )
    torch.testing.assert_close(
        mapped, model.functional(params, batch.support.x, batch.support.mask)
    )


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


def test_state_round_trips_through_safetensors(tmp_path):
    model = tiny_mlp()
    ic, oc = configs("metasgd")
    state = outer.init_state(model, ic, oc)
    state, _ = outer.train_step(state, sine_batch(), model=model, inner_cfg=ic, outer_cfg=oc)
    save_file(outer.state_to_tensors(state), tmp_path / "s.safetensors")
    back = outer.state_from_tensors(load_file(tmp_path / "s.safetensors"))
    assert back.step == 1
    for part in ("params", "lrs", "opt"):
        a, b = getattr(state, part), getattr(back, part)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_all_reduce_hook_sees_the_gradient_dict():
    model = tiny_mlp()
    ic, oc = configs("maml")
    state = outer.init_state(model, ic, oc)
    seen = []

    def halve(grads):
        seen.append(sorted(grads))
        return {k: g * 0 for k, g in grads.items()}  # zero gradients -> Adam moves nothing

    new, _ = outer.train_step(
        state, sine_batch(), model=model, inner_cfg=ic, outer_cfg=oc, all_reduce=halve
    )
    assert seen == [sorted(state.params)]
    assert all(torch.equal(new.params[k], state.params[k]) for k in state.params)


def test_short_sinusoid_run_learns_to_adapt():
    ic = InnerConfig(algorithm="maml", steps=1, lr=0.01)
    oc = OuterConfig(lr=1e-3, meta_batch=25)
    model = MLP(1, 40, 2, 1)
    untrained = outer.init_state(model, ic, oc, seed=0)
    state = untrained
    for step in range(400):
        state, _ = outer.train_step(
            state,
            sine_batch(25, 10, seed=step),
            model=model,
            inner_cfg=ic,
            outer_cfg=oc,
            pre_metrics=False,
        )
    held_out = sine_batch(200, 10, seed=10_000)
    trained = outer.evaluate(state, held_out, model=model, inner_cfg=ic, steps=[0, 1, 10])
    before = outer.evaluate(untrained, held_out, model=model, inner_cfg=ic, steps=[1])
    assert trained[1] < trained[0]  # adaptation helps
    assert trained[1] < 0.8 * before[1]  # meta-training helps adaptation
    assert trained[10] < trained[1]


@pytest.mark.parametrize("task", ["lm", "classify"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("vocab", [11, 40], ids=["folded-embedding", "embedding"])
def test_hand_written_gru_bptt_equals_autograd(task, layers, vocab):
    # vocab 11 < K*L = 24 positions: layer 0 projects the table and gathers; 40: embeds first
    torch.manual_seed(0)
    model = MetaRNN(cell="gru", vocab=vocab, embed=4, hidden=6, layers=layers, task=task, n_way=3)
    batch = seq_batch(task, vocab=vocab)
    shared = dict(model.named_parameters())
    for names in (set(shared), set(model.head_names)):  # full MAML and ANIL's head only
        p = inner.batch_params(model, shared, 3, names)
        s = batch.support
        loss, g = model.loss_and_grad(p, s.x, s.y, s.mask, names)
        ref_loss = model_loss(model, p, s)
        ref = torch.autograd.grad(ref_loss.sum(), [p[k] for k in names])
        torch.testing.assert_close(loss, ref_loss)
        assert g.keys() == names
        for k, r in zip(names, ref, strict=True):
            torch.testing.assert_close(g[k], r, rtol=1e-5, atol=1e-6, msg=k)
