"""Evaluation baselines (`pipeline/eval/baselines.py`)."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.eval import baselines


def test_baseline_file_round_trip_without_pickle(tmp_path: Path, sine):
    cfg, model, state, _ = sine
    path = baselines.save_params(tmp_path / "b.safetensors", state.params, {"steps": 7})
    params, meta = baselines.load_params(path)
    assert meta == {"steps": 7} and baselines.matches(params, state.params)
    assert all(torch.equal(params[k], state.params[k]) for k in params)


def test_multitask_keeps_its_best_on_validation_parameters(sine):
    """The baseline gets the meta-learner's best-on-validation selection: what it returns
    scores no worse on validation than its last parameters, and no worse than every other
    validated checkpoint."""
    from pipeline.data import episodes as ep
    from tests.unit.eval.cases import sine_rows

    cfg, model, _, _ = sine
    cfg = cfg.model_copy(update={"outer": cfg.outer.model_copy(update={"val_every": 5})})
    train, val = sine_rows(20, 3), sine_rows(6, 4)
    rows = {**train, **val}
    vb = ep.to_torch(
        ep.build_step(rows.__getitem__, sorted(val), cfg.data, seed=9, step=0, meta_batch=6)
    )
    common = dict(steps=20, seed=0)
    told: list[tuple[int, float]] = []
    best = baselines.pretrain_multitask(
        model,
        cfg,
        rows.__getitem__,
        sorted(train),
        val_batch=vb,
        on_best=lambda step, score: told.append((step, score)),
        **common,
    )
    last = baselines.pretrain_multitask(model, cfg, rows.__getitem__, sorted(train), **common)
    scores = []
    for n in (5, 10, 15, 20):
        p = baselines.pretrain_multitask(
            model, cfg, rows.__getitem__, sorted(train), steps=n, seed=0
        )
        scores.append(baselines.select_score(model, p, vb, cfg.inner.lr))
    assert baselines.select_score(model, best, vb, cfg.inner.lr) == min(scores)
    # the step it names is the one whose parameters were kept
    assert told == [(5 * (scores.index(min(scores)) + 1), min(scores))]
    assert baselines.select_score(model, best, vb, cfg.inner.lr) <= baselines.select_score(
        model, last, vb, cfg.inner.lr
    )


def test_a_saved_baseline_names_its_source_without_credentials(tmp_path: Path):
    params = {"w": torch.zeros(2)}
    src = "http://bob:S3cretPw99@127.0.0.1:9000/runs/x"
    path = baselines.save_params(tmp_path / "b.safetensors", params, {"checkpoint": src})
    _, meta = baselines.load_params(path)
    assert meta["checkpoint"] == "http://***@127.0.0.1:9000/runs/x"
