"""The evaluation engine (`pipeline/eval/methods.py`) through the core's inner loop."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import load
from pipeline.eval import baselines
from pipeline.eval import methods as ev
from pipeline.eval import report as eval_report
from pipeline.models import build_model


def test_meta_trained_init_beats_random_init_on_sinusoid(sine):
    cfg, model, state, eps = sine
    methods = [
        ev.Method("random init", baselines.random_init(model, cfg, seed=9), 0.01),
        ev.Method("meta-init", state.params, state.lrs),
    ]
    raw = ev.evaluate_methods(model, methods, {10: eps}, ev.EvalSpec(steps=(0, 1, 10)))
    rep = eval_report.build(raw, kind="regression", metric="MSE", higher_is_better=False)
    diff = rep["paired"]["10"]["meta-init - random init"]
    for step in ("1", "10"):  # lower MSE, and the whole 95% CI of the paired gap below zero
        assert diff[step]["overall"]["hi"] < 0, diff[step]["overall"]
    meta = rep["results"]["10"]["meta-init"]
    assert meta["10"]["overall"]["mean"] < meta["0"]["overall"]["mean"]  # adaptation helps
    # The report's paired figure is the mean of per-episode differences of the raw values.
    per = rep["per_episode"]["10"]
    task = sorted(per["meta-init"]["1"])[0]
    gap = np.subtract(per["meta-init"]["1"][task], per["random init"]["1"][task]).mean()
    assert diff["1"]["tasks"][task]["mean"] == pytest.approx(gap)


def test_zero_steps_is_the_start_and_steps_continue_the_same_inner_loop(sine):
    from pipeline.data import episodes as ep
    from pipeline.meta.inner import adapt
    from pipeline.meta.losses import model_loss

    cfg, model, state, eps = sine
    m = ev.Method("meta-init", state.params, state.lrs)
    vals = ev.run_method(model, m, eps[:3], (0, 2, 5))
    b = ep.to_torch(ep.collate([e.batch for e in eps[:3]]))
    direct0 = model_loss(model, state.params, b.query)
    p5 = adapt(state.params, b.support, model=model, steps=5, lrs=state.lrs, first_order=True)
    direct5 = model_loss(model, p5, b.query)
    task = eps[0].tasks[0]
    assert vals[0][task][:3] == pytest.approx(direct0.tolist(), rel=1e-5)
    assert vals[5][task][:3] == pytest.approx(direct5.detach().tolist(), rel=1e-4)


def test_a_warm_start_worse_than_the_meta_init_falls_back_to_its_trajectory(sine):
    """`bank.fallback` in evaluation: a task-batched start far from every task (the meta-init
    plus noise) ends worse on the support, so every count scores the meta-init's trajectory:
    the same values as the meta-init itself, and every task-episode recorded as fallen back."""
    import torch

    cfg, model, state, eps = sine
    torch.manual_seed(0)
    far = {k: v + 2.0 * torch.randn_like(v) for k, v in state.params.items()}
    batched = lambda s: {k: v.expand(s.x.shape[0], *v.shape) for k, v in far.items()}  # noqa: E731
    meta = ev.run_method(model, ev.Method("meta-init", state.params, state.lrs), eps[:4], (0, 2))
    m = ev.Method("bank", state.params, state.lrs, start=batched, fallback=state.params)
    got = ev.run_method(model, m, eps[:4], (0, 2))
    alone = ev.run_method(
        model, ev.Method("far", state.params, state.lrs, start=batched), eps[:4], (0, 2)
    )
    for s in (0, 2):
        for task in meta[s]:
            assert got[s][task] == pytest.approx(meta[s][task], rel=1e-5)
            assert np.mean(alone[s][task]) > np.mean(meta[s][task])  # the far start is worse
        assert m.extra["fell_back"][s] == [True] * 4


def test_tuned_lr_is_the_grid_point_with_the_best_validation_metric(sine):
    cfg, model, state, eps = sine
    base = ev.Method("random init", baselines.random_init(model, cfg, seed=3), 0.01)
    lr, scores = ev.tune_lr(model, base, eps[:4], (1e-4, 0.01, 0.03), (0, 1, 5), kind="regression")
    assert lr == min(scores, key=scores.get) and set(scores) == {1e-4, 0.01, 0.03}


def test_classification_reports_per_language_accuracy_in_range():
    cfg = load(
        None,
        [
            "data.episode=classify",
            "model.kind=gru",
            "model.hidden=8",
            "model.embed=4",
            "data.n_way=3",
            "data.max_len=8",
        ],
    )
    words = {
        t: {"text": np.array([f"{t}{i}" for i in range(12)], dtype=object)}
        for t in ("aa", "bb", "cc", "dd")
    }
    model = build_model(cfg.model, cfg.data)
    eps = ev.make_episodes(
        words.__getitem__, sorted(words), cfg.data, shot=2, k_query=3, n_episodes=2, seed=0
    )
    m = ev.Method("random init", baselines.random_init(model, cfg, seed=0), 0.1)
    vals = ev.run_method(model, m, eps, (0, 1), n_way=3)
    assert set(vals[1]) == set(words)  # every language reported
    assert all(0.0 <= v <= 1.0 for per in vals[1].values() for v in per)
    assert sum(len(v) for v in vals[1].values()) == 3 * len(eps)  # one value per class
