"""Paths a cluster cannot use are refused before any work, with the fix in the message."""

from __future__ import annotations

import json

import pytest

from pipeline import config
from pipeline.config import ConfigError
from pipeline.runtime import cluster_paths as cp
from pipeline.runtime.tune_config import SweepConfig

JOB = json.dumps({"runtime_env": {"working_dir": "gcs://_ray_pkg_abc.zip"}})


def _cfg(*over: str) -> config.RunConfig:
    return config.load(None, ["tracking.enabled=false", *over])


def test_relative_paths_in_a_submitted_job_are_refused(monkeypatch) -> None:
    monkeypatch.setenv(cp.JOB_ENV, JOB)
    with pytest.raises(ConfigError) as e:
        cp.check_job_paths(_cfg("data.uri=data/quickstart-wordlang", "checkpoint.storage=runs"))
    msg = str(e.value)
    assert "data.uri='data/quickstart-wordlang'" in msg and "checkpoint.storage='runs'" in msg
    assert "--working-dir gcs://_ray_pkg_abc.zip" in msg and "s3://" in msg
    assert "data.uri=$PWD/data/quickstart-wordlang" in msg  # the fix, spelled out


def test_a_relative_tracking_store_and_tune_storage_are_refused_in_a_job(monkeypatch) -> None:
    monkeypatch.setenv(cp.JOB_ENV, JOB)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = config.load(None, ["data.uri=/d", "checkpoint.storage=s3://b/runs"])  # tracking on
    with pytest.raises(ConfigError, match=r"tracking.uri='mlflow.db'.*tune.storage|tune"):
        cp.check_job_paths(cfg, SweepConfig(storage="runs/tune"))


def test_absolute_or_s3_paths_pass_and_outside_a_job_nothing_is_checked(monkeypatch) -> None:
    cfg = _cfg("data.uri=/shared/data", "checkpoint.storage=s3://bucket/runs")
    monkeypatch.setenv(cp.JOB_ENV, JOB)
    cp.check_job_paths(cfg)
    monkeypatch.delenv(cp.JOB_ENV)
    cp.check_job_paths(_cfg("data.uri=data/x", "checkpoint.storage=runs"))


def test_local_outputs_on_a_multi_node_cluster_are_refused(monkeypatch) -> None:
    monkeypatch.delenv("METARAY_SHARED_FS", raising=False)
    sweep = SweepConfig(storage="/home/ray/runs/tune")
    cfg = _cfg("data.uri=s3://b/shards", "checkpoint.storage=s3://b/runs")
    with pytest.raises(ConfigError, match=r"tune.storage='/home/ray/runs/tune': .* 3-node"):
        cp.check_shared_storage(cfg, sweep, nodes=3)
    cp.check_shared_storage(cfg, sweep, nodes=1)  # one machine: local is fine
    cp.check_shared_storage(cfg, SweepConfig(storage="s3://b/tune"), nodes=3)
    monkeypatch.setenv("METARAY_SHARED_FS", "1")  # a shared mount, declared
    cp.check_shared_storage(cfg, sweep, nodes=3)
