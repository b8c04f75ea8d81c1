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
