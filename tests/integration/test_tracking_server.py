"""The MLflow tracker against a real `mlflow server` process (no Ray: the tracker alone).

What a user reads back through `MlflowClient`: params (secrets redacted), the metric
history step by step, the artifacts (config, plots, checkpoint, bank reference), and a
model that loads with `mlflow.pyfunc.load_model` and predicts. A server that dies mid-run
costs the steps nothing; what it missed arrives when it returns, or from the spill file.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from pipeline import config
from pipeline.tracking import make_tracker
from tests.fixtures.mlflow_server import start_mlflow_server

pytestmark = pytest.mark.integration


def _cfg(uri: str, **tracking: object) -> config.RunConfig:
    overrides = [
        f"tracking.uri={uri}",
        "data.episode=regression",
        "model.kind=mlp",
        "model.hidden=8",
        "model.layers=2",
        "data.s3_endpoint=http://minio:Sup3rS3cret@127.0.0.1:9000",
    ] + [f"tracking.{k}={v}" for k, v in tracking.items()]
    return config.load(None, overrides)


def test_run_params_metrics_and_artifacts_read_back(mlflow_server, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    cfg = _cfg(mlflow_server.uri, experiment="tracking-it")
    tracker = make_tracker(cfg.tracking)
    tracker.start("smoke", config.flat_params(cfg), tags={"kind": "test"})
    for step in range(5):
        tracker.log_metrics(
            {"train/loss_post_mse": 1.0 / (step + 1), "system/episodes_per_s": 100.0 + step}, step
        )
    tracker.log_inner_curve({0: 1.0, 1: 0.7, 2: 0.5}, step=4)
    tracker.log_text(config.to_yaml(cfg), "config.yaml")
    ckpt = tmp_path / "checkpoint"
    ckpt.mkdir()
    (ckpt / "state.json").write_text('{"step": 5}')
    tracker.log_artifact(ckpt, "checkpoint")
    tracker.set_tags({"bank.snapshot": "s3://bucket/bank/snap-000005"})
    tracker.end()

    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "smoke"
    assert run.data.params["inner.lr"] == str(cfg.inner.lr)
    assert run.data.params["data.s3_endpoint"] == "http://***@127.0.0.1:9000"
    assert "Sup3rS3cret" not in repr(run.data.params)
    assert run.data.tags["bank.snapshot"] == "s3://bucket/bank/snap-000005"
    history = client.get_metric_history(tracker.run_id, "train/loss_post_mse")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (s, 1.0 / (s + 1)) for s in range(5)
    ]
    # the inner-step curve is a plot, not a metric per k repeating val/loss_pre and _post
    assert not any(k.startswith("val_loss_inner") for k in run.data.metrics)
    top = {a.path for a in client.list_artifacts(tracker.run_id)}
    assert {"config.yaml", "checkpoint", "plots"} <= top
    plots = {a.path for a in client.list_artifacts(tracker.run_id, "plots")}
    assert plots == {"plots/learning_curves.png", "plots/inner_steps.png"}
    assert {a.path for a in client.list_artifacts(tracker.run_id, "checkpoint")} == {
        "checkpoint/state.json"
    }
    saved = config.read_yaml(
        client.download_artifacts(tracker.run_id, "config.yaml", str(tmp_path))
    )
    assert config.from_dict(saved) == cfg


def test_server_killed_mid_run_then_back_loses_nothing(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    server = start_mlflow_server(tmp_path / "srv")
    try:
        cfg = _cfg(server.uri, experiment="outage", flush_timeout_s=60)
        tracker = make_tracker(cfg.tracking)
        tracker.start("outage", config.flat_params(cfg))
        tracker.log_metrics({"loss_post": 0.0}, 0)
        server.stop()  # the server goes away mid-run
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            for step in range(1, 20):  # training steps go on, nothing raises
                tracker.log_metrics({"loss_post": float(step)}, step)
            server.start()  # same port, same database: it comes back
            tracker.end()
        assert tracker.spilled is None
        client = MlflowClient(server.uri)
        steps = sorted(m.step for m in client.get_metric_history(tracker.run_id, "loss_post"))
        assert steps == list(range(20))
        assert client.get_run(tracker.run_id).info.status == "FINISHED"
    finally:
        server.stop()


def test_server_never_back_spills_buffer_that_replays(tmp_path: Path, monkeypatch) -> None:
    from mlflow import MlflowClient

    from pipeline.tracking import replay

    monkeypatch.setenv("METARAY_TRACKING_BUFFER_DIR", str(tmp_path / "buffer"))
    server = start_mlflow_server(tmp_path / "srv")
    try:
        cfg = _cfg(server.uri, experiment="spill", flush_timeout_s=1)
        tracker = make_tracker(cfg.tracking)
        tracker.start("spill", config.flat_params(cfg))
        server.stop()
        with pytest.warns(UserWarning, match="replay"):
            for step in range(10):
                tracker.log_metrics({"loss_post": float(step)}, step)
            tracker.end()
        assert tracker.spilled is not None and tracker.spilled.parent == tmp_path / "buffer"
        server.start()
        run_id = replay(tracker.spilled)
        client = MlflowClient(server.uri)
        assert len(client.get_metric_history(run_id, "loss_post")) == 10
        assert client.get_run(run_id).info.status == "FINISHED"
    finally:
        server.stop()
