"""Tracking without a server: secrets never reach params, URIs resolve, plots render."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import config
from pipeline.tracking import (
    REDACTED,
    NullTracker,
    make_tracker,
    pin_uri,
    redact_tree,
    resolve_uri,
    safe_params,
)

AWS_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"


def test_secret_keys_and_secret_values_are_redacted() -> None:
    params = safe_params(
        {
            "data.aws_secret_access_key": "abc",
            "tracking.token": "t0k3n",
            "db.password": "hunter2",
            "s3.credentials": "x",
            "api_key": "k",
            "data.uri": f"s3://bucket/prefix?id={AWS_ID}",
            "data.note": f"secret is {AWS_SECRET}",
            "tracking.uri": "http://alice:s3cr3t@mlflow.internal:5000/",
            "inner.lr": 0.01,
            "checkpoint.run_name": "metaray",
            "data.s3_endpoint": None,
            "bank.snapshot_uri": "s3://bucket/bank",
        }
    )
    text = repr(params)
    for secret in ("abc", "t0k3n", "hunter2", AWS_ID, AWS_SECRET, "alice", "s3cr3t"):
        assert secret not in text
    assert params["tracking.uri"] == "http://***@mlflow.internal:5000/"
    assert params["db.password"] == REDACTED
    assert params["data.uri"] == REDACTED
    # ordinary values pass untouched (as strings, the form MLflow stores)
    assert params["inner.lr"] == "0.01"
    assert params["checkpoint.run_name"] == "metaray"
    assert params["bank.snapshot_uri"] == "s3://bucket/bank"
    assert params["data.s3_endpoint"] == "None"


def test_hex_digests_are_not_mistaken_for_aws_secrets() -> None:
    digest = "3f786850e387550fdab836ed7e6dc881de23001b"  # sha1: 40 chars, no upper case
    assert safe_params({"data.sha": digest})["data.sha"] == digest


def test_flat_config_params_carry_every_key_without_userinfo() -> None:
    cfg = config.load(None, ["data.s3_endpoint=http://minio:minio-pass@127.0.0.1:9000"])
    params = safe_params(config.flat_params(cfg))
    assert set(params) == set(config.flat_params(cfg))
    assert params["data.s3_endpoint"] == "http://***@127.0.0.1:9000"
    assert "minio-pass" not in repr(params)


def test_uri_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = config.TrackingConfig()
    assert resolve_uri(default) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_uri(default) == "http://127.0.0.1:5000"
    explicit = config.TrackingConfig(uri="sqlite:///runs/t.db")
    assert resolve_uri(explicit) == f"sqlite:///{tmp_path.resolve()}/runs/t.db"
    # pinned on the driver so workers in other directories write the same store
    pinned = pin_uri(config.load(None, ["tracking.uri=sqlite:///x.db"]))
    assert pinned.tracking.uri == f"sqlite:///{tmp_path.resolve()}/x.db"


def test_disabled_tracking_is_a_null_tracker() -> None:
    tracker = make_tracker(config.TrackingConfig(enabled=False))
    assert isinstance(tracker, NullTracker)
    tracker.start("r", {"a": 1})
    tracker.log_metrics({"loss": 1.0}, 0)
    tracker.end()
    assert tracker.run_id is None


def test_plots_render_pngs(tmp_path: Path) -> None:
    from pipeline.tracking import plots

    history = {"loss_post": [(0, 1.0), (1, 0.5)], "episodes_per_s": [(0, 10.0), (1, 12.0)]}
    curves = plots.learning_curves(history, tmp_path / "lc.png")
    inner = plots.inner_step_curves({0: {0: 1.0, 1: 0.6, 3: 0.4}}, tmp_path / "inner.png")
    for png in (curves, inner):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 5000


def test_whole_config_trees_are_redacted_like_params() -> None:
    cfg = config.load(None, ["bank.snapshot_uri=s3://ak:Sup3rS3cretPw@bucket/bank"])
    tree = redact_tree(config.to_dict(cfg))
    assert tree["bank"]["snapshot_uri"] == "s3://***@bucket/bank"
    assert tree["inner"] == config.to_dict(cfg)["inner"]  # everything else untouched
    assert redact_tree({"aws": {"secret_access_key": "x"}})["aws"]["secret_access_key"] == REDACTED
