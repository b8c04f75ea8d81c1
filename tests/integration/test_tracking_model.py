"""The final model as an MLflow model: registered by name, loaded without pickle, same outputs."""

from __future__ import annotations

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from pipeline import config
from pipeline.meta import outer
from pipeline.models import build_model
from pipeline.tracking import make_tracker

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("episode", ["regression", "lm"])
def test_final_model_registers_loads_and_predicts_like_the_module(
    mlflow_server, episode: str
) -> None:
    kind = "mlp" if episode == "regression" else "gru"
    name = f"metaray-{episode}"
    cfg = config.load(
        None,
        [
            f"tracking.uri={mlflow_server.uri}",
            "tracking.experiment=models",
            f"tracking.register_as={name}",
            f"data.episode={episode}",
            f"model.kind={kind}",
            "model.hidden=8",
            "data.max_len=12",
        ],
    )
    model = build_model(cfg.model, cfg.data)
    state = outer.init_state(model, cfg.inner, cfg.outer, seed=3)
    tracker = make_tracker(cfg.tracking)
    tracker.start("model", config.flat_params(cfg))
    # what the trainer hands over: the checkpoint's flat state (params/.., lrs/.., opt/..)
    weights = outer.state_to_tensors(state)
    if episode == "lm":  # the trainer's form: bare params under "params."
        weights = {f"params.{k}": v for k, v in state.params.items()}
    tracker.log_model(weights, config.to_dict(cfg))
    tracker.end()

    client = MlflowClient(mlflow_server.uri)
    (version,) = client.search_model_versions(f"name='{name}'")
    assert version.run_id == tracker.run_id
    mlflow.set_tracking_uri(mlflow_server.uri)
    loaded = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}")

    params = dict(state.params)
    if episode == "regression":
        xs = [-1.0, 0.0, 2.5]
        x = torch.tensor(xs).reshape(1, -1, 1)
        want = model.functional(params, x, torch.ones(1, 3)).reshape(-1)
        got = loaded.predict({"x": xs})
        assert got.tolist() == pytest.approx(want.tolist(), abs=1e-6)
    else:
        got = loaded.predict({"text": ["hello", "zzzzzzzzzz", "a"]})
        assert got.shape == (3,)
        # nats per byte of an untrained byte model: near log(259), and text-dependent
        assert all(4.0 < v < 7.0 for v in got)
        assert len({round(float(v), 6) for v in got}) == 3
