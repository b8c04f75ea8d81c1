"""Run checkpoints: exact round trip, RNG restored, no pickle, incomplete/corrupt ones refused."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from pipeline import checkpoint
from pipeline.errors import CheckpointError
from pipeline.meta.outer import MetaState


def _state() -> MetaState:
    g = torch.Generator().manual_seed(3)
    params = {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)}
    lrs = {k: torch.tensor(0.01) for k in params}
    opt = {"count": torch.tensor(7.0, dtype=torch.float64)}
    opt.update({f"m/{k}": torch.randn_like(v) for k, v in params.items()})
    return MetaState(params, lrs, opt, 7)


def test_round_trip_is_exact_and_restores_rng(tmp_path):
    state = _state()
    cfg = {"outer": {"steps": 10, "seed": 0}, "data": {"uri": "s3://b/p"}}
    history = [{"step": 1, "loss_post": 0.5}]
    torch.manual_seed(11)
    np.random.seed(12)
    random.seed(13)
    checkpoint.save(tmp_path / "ck", state, config=cfg, history=history, extra={"world": 2})
    expected = (torch.rand(3), np.random.rand(3), random.random())

    back = checkpoint.load(tmp_path / "ck")
    assert back.state.step == 7
    for part in ("params", "lrs", "opt"):
        mine, theirs = getattr(state, part), getattr(back.state, part)
        assert set(mine) == set(theirs)
        for k in mine:
            assert mine[k].dtype == theirs[k].dtype
            assert torch.equal(mine[k], theirs[k]), (part, k)
    assert back.config == cfg and back.history == history and back.extra == {"world": 2}

    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    checkpoint.restore_rng(back.rng)
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
    # Nothing but safetensors and JSON on disk; no temporary files left behind.
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["meta.json", "state.safetensors"]


def test_incomplete_and_corrupt_checkpoints_are_refused(tmp_path):
    d = checkpoint.save(tmp_path / "ck", _state(), config={})
    (d / "meta.json").unlink()
    with pytest.raises(CheckpointError, match="meta.json is missing"):
        checkpoint.load(d)

    d = checkpoint.save(tmp_path / "ck2", _state(), config={})
    raw = bytearray((d / "state.safetensors").read_bytes())
    raw[-1] ^= 0xFF
    (d / "state.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="sha256"):
        checkpoint.load(d)

    d = checkpoint.save(tmp_path / "ck3", _state(), config={})
    meta = json.loads((d / "meta.json").read_text())
    meta["format"] = 99
    (d / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format 99"):
        checkpoint.load(d)
