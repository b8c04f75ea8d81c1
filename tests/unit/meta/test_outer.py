"""The outer loop (`pipeline/meta/outer.py`): meta-gradients of the task-batched core equal an
independent per-task loop's for every algorithm; second order is really second order (finite
differences, float64); algorithm-specific behaviour; checkpoint helpers; a short sinusoid run."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from pipeline.config import InnerConfig, OuterConfig
from pipeline.meta import outer
from pipeline.models.mlp import MLP
from tests.unit.meta_cases import (
    ALGORITHMS,
    configs,
    reference_grads,
    seq_batch,
    sine_batch,
    tiny_mlp,
    tiny_rnn,
)


def _assert_close(a, b, tol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=tol, atol=tol, msg=k)


@pytest.mark.parametrize("alg", ALGORITHMS)
@pytest.mark.parametrize("manual", [None, False], ids=["default", "autograd"])
def test_batched_equals_per_task_loop_mlp(alg, manual):
    # default: maml/fomaml/metasgd take the hand-derived reverse sweep (grad_hvp), no autograd
    model = tiny_mlp()
    ic, oc = configs(alg, steps=3)
    state = outer.init_state(model, ic, oc)
    batch = sine_batch()
    grads, metrics = outer.meta_gradients(state, batch, model=model, inner_cfg=ic, manual=manual)
    _assert_close(grads, reference_grads(model, state, batch, ic))
    assert metrics["loss_post"] > 0 and metrics["loss_pre"] > 0


@pytest.mark.parametrize("alg", ALGORITHMS)
@pytest.mark.parametrize("task,cell", [("lm", "gru"), ("classify", "gru"), ("classify", "lstm")])
def test_batched_equals_per_task_loop_rnn(alg, task, cell):
    model = tiny_rnn(task, cell)
    ic, oc = configs(alg, steps=2, lr=0.5)
    state = outer.init_state(model, ic, oc)
    batch = seq_batch(task)
    grads, _ = outer.meta_gradients(state, batch, model=model, inner_cfg=ic)
    _assert_close(grads, reference_grads(model, state, batch, ic))


@pytest.mark.parametrize("task", ["lm", "classify"])
def test_first_order_metasgd_equals_per_task_loop_gru(task):
    """The shipped recipe's form (Meta-SGD, first order): the hand sweep reuses the inner
    loop's support gradients for the lrs' gradient instead of recomputing them."""
    model = tiny_rnn(task)
    ic, _ = configs("metasgd", steps=3, lr=0.5)
    ic = ic.model_copy(update={"first_order": True})
    state = outer.init_state(model, ic, OuterConfig(meta_batch=4))
    batch = seq_batch(task)
    grads, _ = outer.meta_gradients(state, batch, model=model, inner_cfg=ic)
    _assert_close(grads, reference_grads(model, state, batch, ic))
    assert any(float(grads[k].abs().max()) > 0 for k in grads if k.startswith("lr/"))


def test_chunks_give_the_same_gradients():
    model = tiny_rnn()
    ic, oc = configs("maml")
    state = outer.init_state(model, ic, oc)
    batch = seq_batch("lm", t=5)
    whole, m1 = outer.meta_gradients(state, batch, model=model, inner_cfg=ic)
    parts, m2 = outer.meta_gradients(state, batch, model=model, inner_cfg=ic, chunk=2)
    _assert_close(whole, parts)
    assert m1["loss_post"] == pytest.approx(m2["loss_post"], rel=1e-6)


@pytest.mark.parametrize("alg", ALGORITHMS)
@pytest.mark.parametrize("manual", [None, False], ids=["default", "autograd"])
def test_task_threads_give_the_same_gradients_every_time(alg, manual):
    """`threads=2` (outer.task_threads): the task groups run side by side on two Python
    threads; the result equals the serial one, and repeated runs are bitwise identical (the
    groups are summed in a fixed order), adapted parameters and losses included."""
    model = tiny_rnn()
    ic, oc = configs(alg, steps=2, lr=0.5)
    state = outer.init_state(model, ic, oc)
    batch = seq_batch("lm", t=5)
    kw = {"model": model, "inner_cfg": ic, "manual": manual, "return_adapted": True}
    serial = outer.meta_gradients(state, batch, **kw)
    runs = [outer.meta_gradients(state, batch, threads=2, **kw) for _ in range(3)]
    _assert_close(runs[0][0], serial[0])
    _assert_close(runs[0][2], serial[2])
    assert runs[0][1] == pytest.approx(serial[1], rel=1e-6)
    for other in runs[1:]:
        assert all(torch.equal(other[0][k], runs[0][0][k]) for k in runs[0][0])
        assert other[1] == runs[0][1]


def test_second_order_differs_from_first_order():
    model = tiny_mlp()
    state = outer.init_state(model, *configs("maml"))
    batch = sine_batch()
    so, _ = outer.meta_gradients(state, batch, model=model, inner_cfg=configs("maml")[0])
    fo, _ = outer.meta_gradients(state, batch, model=model, inner_cfg=configs("fomaml")[0])
    diff = torch.cat([(so[k] - fo[k]).flatten() for k in so]).norm()
    size = torch.cat([so[k].flatten() for k in so]).norm()
    assert diff / size > 0.05  # the Hessian term is far from negligible at inner lr 0.1


@pytest.mark.parametrize("make", [tiny_mlp, tiny_rnn], ids=["mlp-analytic", "gru-autograd"])
def test_second_order_gradient_matches_finite_differences(make):
    model = make().double()
    ic, oc = configs("maml", steps=2, lr=0.1)
    state = outer.init_state(model, ic, oc)
    batch = (
        sine_batch(dtype=torch.float64)
        if model.kind == "regression"
        else seq_batch("lm", dtype=torch.float64)
    )
    grads, _ = outer.meta_gradients(state, batch, model=model, inner_cfg=ic)
    fo, _ = outer.meta_gradients(state, batch, model=model, inner_cfg=configs("fomaml")[0])
    gen = torch.Generator().manual_seed(1)
    direction = {
        k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in state.params.items()
    }

    def meta_loss(eps: float) -> float:
        p = {k: v + eps * direction[k] for k, v in state.params.items()}
        _, m = outer.meta_gradients(state._replace(params=p), batch, model=model, inner_cfg=ic)
        return m["loss_post"]

    eps = 1e-6
    numeric = (meta_loss(eps) - meta_loss(-eps)) / (2 * eps)
    analytic = sum(float((grads[k] * direction[k]).sum()) for k in grads)
    first = sum(float((fo[k] * direction[k]).sum()) for k in fo)
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    assert abs(first - numeric) > 1e-3 * abs(numeric)  # first order would fail this check


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


def test_learned_inner_lrs_stay_within_zero_and_lr_max():
    model = tiny_mlp()
    ic, oc = configs("metasgd", lr=0.5)
    state = outer.init_state(model, ic, oc)
    # a step that pushes half the lrs far up and half far below zero
    grads = {
        "lr/" + k: torch.where(torch.rand_like(v) < 0.5, -1e3, 1e3) for k, v in state.lrs.items()
    }
    oc = oc.model_copy(update={"lr": 10.0})
    new = outer.apply_gradients(state, grads, oc, lr_max=0.7)
    lrs = torch.cat([v.flatten() for v in new.lrs.values()])
    assert float(lrs.min()) == 0.0 and float(lrs.max()) == pytest.approx(0.7)
    uncapped = outer.apply_gradients(state, grads, oc)
    assert float(torch.cat([v.flatten() for v in uncapped.lrs.values()]).max()) > 5.0


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
