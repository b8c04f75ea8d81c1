"""The MLflow model's predict without MLflow: it adapts on the support rows, then scores."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from safetensors.torch import save_file

from pipeline import config
from pipeline.meta import outer
from pipeline.models import build_model
from pipeline.tracking.pyfunc_model import MetarayPyfunc, input_example


@pytest.mark.parametrize("episode", ["lm", "regression"])
def test_predict_adapts_on_support_rows_and_scores_the_others(tmp_path, episode) -> None:
    kind = "gru" if episode == "lm" else "mlp"
    over = [f"data.episode={episode}", f"model.kind={kind}", "model.hidden=8", "inner.lr=0.5"]
    cfg = config.load(None, [*over, "data.max_len=12"])
    state = outer.init_state(build_model(cfg.model, cfg.data), cfg.inner, cfg.outer, seed=0)
    save_file({f"params.{k}": v for k, v in state.params.items()}, tmp_path / "weights.safetensors")
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict(cfg)))
    model = MetarayPyfunc(str(tmp_path))
    if episode == "lm":
        rows = pd.DataFrame({"text": ["abab", "abab", "abab"], "support": [True, True, False]})
        out = model.predict(rows, {"steps": 5})
        assert list(out.columns) == ["bits_per_byte", "bits_per_byte_meta_init"] and len(out) == 1
        assert out["bits_per_byte"][0] < out["bits_per_byte_meta_init"][0] - 0.3
    else:
        rows = pd.DataFrame({"x": [0.5, 0.5], "y": [3.0, 0.0], "support": [True, False]})
        out = model.predict(rows, {"steps": 5})
        # after adapting on (0.5, 3.0) the prediction at 0.5 moves towards 3
        assert abs(out["y_pred"][0] - 3.0) < abs(out["y_pred_meta_init"][0] - 3.0)
    assert len(model.predict(input_example(episode))) == 1  # the logged input example works


def test_predict_keeps_each_step_inside_inner_max_step_norm(tmp_path) -> None:
    """The served model adapts with the run's trust region: with a tiny `inner.max_step_norm`
    five steps leave the score where the meta-init put it; without it they improve it."""
    over = ["data.episode=lm", "model.hidden=8", "inner.lr=0.5", "data.max_len=12"]
    rows = pd.DataFrame({"text": ["abab", "abab", "abab"], "support": [True, True, False]})
    moved = {}
    for region in (None, 1e-6):
        cfg = config.load(None, over + ([f"inner.max_step_norm={region}"] if region else []))
        state = outer.init_state(build_model(cfg.model, cfg.data), cfg.inner, cfg.outer, seed=0)
        d = tmp_path / str(region)
        d.mkdir()
        save_file({f"params.{k}": v for k, v in state.params.items()}, d / "weights.safetensors")
        (d / "config.json").write_text(json.dumps(config.to_dict(cfg)))
        out = MetarayPyfunc(str(d)).predict(rows, {"steps": 5})
        moved[region] = out["bits_per_byte_meta_init"][0] - out["bits_per_byte"][0]
    assert moved[None] > 0.3
    assert abs(moved[1e-6]) < 1e-3
