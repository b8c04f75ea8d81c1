"""Shared evaluation fixtures: a meta-trained sinusoid MLP with its test episodes, and
sinusoid shards with a short MAML run's checkpoint (package scope: built once)."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import load
from pipeline.eval import methods as ev
from pipeline.models import build_model
from tests.unit.eval.cases import checkpoint_of, sine_rows


@pytest.fixture(scope="package", autouse=True)
def one_thread():
    # Small matmuls on a loaded 2-core machine: 2 threads oversubscribe (measured 30x slower).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="package")
def sine():
    from pipeline.data import episodes as ep
    from pipeline.meta import outer

    cfg = load(
        None,
        [
            "data.episode=regression",
            "model.kind=mlp",
            "model.hidden=40",
            "model.layers=2",
            "data.k_support=10",
            "data.k_query=10",
            "inner.lr=0.01",
            "outer.meta_batch=10",
            "outer.lr=0.003",
        ],
    )
    train, test = sine_rows(100, 1), sine_rows(12, 2)
    rows = {**train, **test}
    model = build_model(cfg.model, cfg.data)
    state = outer.init_state(model, cfg.inner, cfg.outer, seed=0)
    for step in range(300):
        b = ep.build_step(
            rows.__getitem__, sorted(train), cfg.data, seed=0, step=step, meta_batch=10
        )
        state, _ = outer.train_step(
            state, ep.to_torch(b), model=model, inner_cfg=cfg.inner, outer_cfg=cfg.outer
        )
    eps = ev.make_episodes(
        rows.__getitem__, sorted(test), cfg.data, shot=10, k_query=10, n_episodes=4, seed=5
    )
    return cfg, model, state, eps


@pytest.fixture(scope="package")
def sine_run(tmp_path_factory):
    """Sinusoid shards and a short MAML run's checkpoint (bank.threshold=-1: always warm)."""
    from pipeline.cli import main

    tmp = tmp_path_factory.mktemp("sine-run")
    shards = tmp / "sine"
    assert (
        main(
            [
                "shards",
                "build",
                "sinusoid",
                "--out",
                str(shards),
                "--train-tasks",
                "60",
                "--val-tasks",
                "4",
                "--test-tasks",
                "10",
                "--points",
                "40",
            ]
        )
        == 0
    )
    checkpoint_of(
        tmp,
        [
            f"data.uri={shards}",
            "data.episode=regression",
            "model.kind=mlp",
            "model.hidden=40",
            "model.layers=2",
            "data.k_support=10",
            "data.k_query=10",
            "outer.meta_batch=10",
            "outer.lr=0.003",
            "outer.val_every=1000",
            "bank.threshold=-1",
        ],
        steps=250,
    )
    return tmp, shards
