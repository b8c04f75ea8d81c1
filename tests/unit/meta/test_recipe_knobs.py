"""The recipe's knobs in the core's train_step: learned per-tensor inner lrs (LSLR), a
schedule over inner step counts, the pre-adaptation loss weight and the inner trust region
(issue 11)."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import InnerConfig, OuterConfig
from pipeline.meta import outer
from pipeline.meta.inner import adapt
from pipeline.models.meta_rnn import MetaRNN
from tests.unit.meta_cases import seq_batch


def _model() -> MetaRNN:
    torch.manual_seed(0)
    return MetaRNN(vocab=11, embed=4, hidden=6, task="lm")


SGD = OuterConfig(optimizer="sgd", lr=1.0, meta_batch=3)


def _step(model, inner: InnerConfig, state=None, batch=None):
    state = state or outer.init_state(model, inner, SGD, seed=0)
    new, _ = outer.train_step(
        state, batch or seq_batch("lm"), model=model, inner_cfg=inner, outer_cfg=SGD
    )
    return state, new


def test_lslr_learns_one_inner_lr_per_tensor():
    model = _model()
    inner = InnerConfig(algorithm="metasgd", lr_shape="tensor", lr=0.1, steps=1)
    state, new = _step(model, inner)
    assert all(v.dim() == 0 for v in state.lrs.values())
    assert all(new.lrs[k].dim() == 0 for k in state.lrs)
    assert any(float(new.lrs[k]) != 0.1 for k in state.lrs)  # learned, not fixed


def test_step_schedule_cycles_the_inner_step_count():
    model = _model()
    fixed2 = InnerConfig(algorithm="maml", lr=0.1, steps=2)
    sched = InnerConfig(algorithm="maml", lr=0.1, steps=1, step_schedule=(1, 2))
    start = outer.init_state(model, fixed2, SGD, seed=0)._replace(step=1)  # schedule[1] = 2
    _, a = _step(model, fixed2, start)
    _, b = _step(model, sched, start)
    for k in a.params:
        torch.testing.assert_close(a.params[k], b.params[k])


def test_pre_weight_adds_the_loss_before_adaptation():
    model = _model()
    batch = seq_batch("lm")
    base = InnerConfig(algorithm="maml", lr=0.1, steps=1)
    state = outer.init_state(model, base, SGD, seed=0)
    g_meta, _ = outer.meta_gradients(state, batch, model=model, inner_cfg=base)
    plain = InnerConfig(algorithm="fomaml", steps=0)
    g0, _ = outer.meta_gradients(state, batch, model=model, inner_cfg=plain)
    weighted = base.model_copy(update={"pre_weight": 0.5})
    _, new = _step(model, weighted, state, batch)
    for k, p in state.params.items():  # SGD at lr 1: p - (g_meta + 0.5 g0)
        torch.testing.assert_close(new.params[k], p - (g_meta[k] + 0.5 * g0[k]))


def test_learn_init_false_keeps_the_init_and_learns_only_the_lrs():
    model = _model()
    inner = InnerConfig(algorithm="metasgd", lr_shape="tensor", lr=0.1, steps=1, learn_init=False)
    state, new = _step(model, inner)
    for k, p in state.params.items():
        torch.testing.assert_close(new.params[k], p)
    assert any(float(new.lrs[k]) != 0.1 for k in state.lrs)
    assert all(float(v) >= 0.0 for v in new.lrs.values())  # clamped: never gradient ascent


def _step_norms(before, after) -> torch.Tensor:
    return (
        torch.stack(
            [(after[k] - before[k]).reshape(after[k].shape[0], -1).square().sum(1) for k in after]
        )
        .sum(0)
        .sqrt()
    )


def test_max_step_norm_bounds_each_tasks_step_and_leaves_small_steps_alone():
    model = _model()
    batch = seq_batch("lm")  # 3 tasks
    params = {k: v.detach() for k, v in model.named_parameters()}
    free = adapt(params, batch.support, model=model, steps=1, lrs=0.5, first_order=True)
    start = {k: v.expand(3, *v.shape) for k, v in params.items()}
    norms = _step_norms(start, free)
    tau = float(norms.min() + norms.max()) / 2  # some tasks above, some below
    held = adapt(
        params, batch.support, model=model, steps=1, lrs=0.5, first_order=True, max_step_norm=tau
    )
    clipped = _step_norms(start, held)
    for t in range(3):
        if norms[t] <= tau:  # inside the region: the plain step
            assert all(torch.equal(held[k][t], free[k][t]) for k in held)
        else:  # outside: the same direction, shrunk to the boundary
            assert float(clipped[t]) == pytest.approx(tau, rel=1e-5)
            for k in held:
                torch.testing.assert_close(
                    held[k][t] - start[k][t], (free[k][t] - start[k][t]) * tau / norms[t]
                )


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_outer_lrs_lr_moves_the_learned_lrs_at_their_own_rate_and_the_init_at_outer_lr(optimizer):
    """`outer.lrs_lr`: Meta-SGD's learned inner lrs step at their own outer lr (0.3 in the
    recipe) while the init trains at `outer.lr` (multitask's rate): one step with lrs_lr =
    10 x lr moves the lrs exactly 10x as far and the init exactly as far as without it."""
    model = _model()
    inner = InnerConfig(algorithm="metasgd", lr=0.1, steps=1)
    base = OuterConfig(optimizer=optimizer, lr=0.01, meta_batch=3)
    fast = base.model_copy(update={"lrs_lr": 0.1})
    state = outer.init_state(model, inner, base, seed=0)
    batch = seq_batch("lm")
    a, _ = outer.train_step(state, batch, model=model, inner_cfg=inner, outer_cfg=base)
    b, _ = outer.train_step(state, batch, model=model, inner_cfg=inner, outer_cfg=fast)
    for k in state.params:
        torch.testing.assert_close(b.params[k], a.params[k], rtol=0, atol=0)
    moved = [k for k in state.lrs if not torch.equal(a.lrs[k], state.lrs[k])]
    assert moved  # the lrs learn
    for k in moved:
        da, db = a.lrs[k] - state.lrs[k], b.lrs[k] - state.lrs[k]
        unclamped = b.lrs[k] > 0  # lrs are clamped at 0
        torch.testing.assert_close(db[unclamped], 10 * da[unclamped], rtol=1e-4, atol=1e-7)


def test_init_objective_multitask_trains_the_init_as_multitask_and_the_lrs_by_meta():
    """`inner.init_objective=multitask`: the init steps exactly as the multitask model does on
    the same episodes' words (support and query: the loss before adaptation), while the
    learned lrs step exactly as plain Meta-SGD's do."""
    from pipeline.config import RunConfig
    from pipeline.eval.baselines import multitask_config

    model = _model()
    batch = seq_batch("lm")
    meta = InnerConfig(algorithm="metasgd", lr=0.1, steps=1)
    mixed = meta.model_copy(update={"init_objective": "multitask"})
    state = outer.init_state(model, meta, SGD, seed=0)
    _, plain = _step(model, meta, state, batch)
    _, new = _step(model, mixed, state, batch)
    for k in state.lrs:
        torch.testing.assert_close(new.lrs[k], plain.lrs[k], rtol=0, atol=0)
    mt_inner, _ = multitask_config(RunConfig(inner=meta))
    words = (torch.cat([s, q], 1) for s, q in zip(batch.support, batch.query, strict=True))
    joined = batch._replace(query=type(batch.query)(*words))
    mt_state = outer.init_state(model, mt_inner, SGD, seed=0)._replace(params=state.params)
    mt, _ = outer.train_step(mt_state, joined, model=model, inner_cfg=mt_inner, outer_cfg=SGD)
    for k in state.params:
        torch.testing.assert_close(new.params[k], mt.params[k], rtol=0, atol=0)
    assert any(not torch.equal(new.params[k], plain.params[k]) for k in state.params)


@pytest.mark.parametrize(
    "update",
    [{"algorithm": "maml"}, {"learn_init": False}, {"pre_weight": 0.5}],
)
def test_init_objective_multitask_rejects_settings_it_would_ignore(update):
    with pytest.raises(ValueError, match="init_objective"):
        InnerConfig(**{"algorithm": "metasgd", "init_objective": "multitask", **update})
