"""End to end on a local "cluster": moto S3, a real `mlflow server` and a `ray start --head`
(the shared fixtures); shards to s3://, training and evaluation as `ray job submit` jobs;
the job states, the MLflow runs and artifacts, and the results table checked."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _e2e():
    spec = importlib.util.spec_from_file_location("metaray_e2e", ROOT / "infra/local/e2e.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


def test_shards_train_evaluate_through_ray_jobs_s3_and_mlflow(
    s3_server, mlflow_server, ray_head, tmp_path
):
    e2e = _e2e()
    svc = e2e.Services(
        s3_endpoint=s3_server.endpoint,
        bucket=s3_server.bucket("metaray-e2e"),
        mlflow_uri=mlflow_server.uri,
        ray_address=ray_head.address,
        ray_env=ray_head.env,
        aws_env={k: v for k, v in s3_server.env.items() if k != "AWS_ENDPOINT_URL"},
    )
    result = e2e.flow(svc, tmp_path, log=print)
    train, ev = result["train"], result["eval"]
    assert train.status == "SUCCEEDED", train.logs[-4000:]
    assert ev is not None and ev.status == "SUCCEEDED", ev.logs[-4000:] if ev else "not run"
    assert ev.returncode == 0 and train.returncode == 0

    # S3 holds what the jobs wrote: shards, a checkpoint, the bank's snapshot/WAL.
    keys = s3_server.keys(svc.bucket)
    assert any(k.startswith("shards/wordlang/") and k.endswith("manifest.json") for k in keys)
    assert any(k.startswith("runs/e2e/") and k.endswith("meta.json") for k in keys)
    assert any(k.startswith("bank/e2e/") for k in keys), "no bank snapshot or WAL in S3"

    # The results table: every method at every step, on the held-out languages, in the log.
    rep = result["report"]
    assert rep["metric"] == "bits per byte" and rep["shots"] == [8, 32]
    assert rep["test_tasks"] == ["fa", "ko", "pt", "ta"]
    assert rep["groups"] == {"seen script": ["fa", "pt"], "unseen script": ["ko", "ta"]}
    methods = {"random init", "multitask", "meta-init", "bank warm start"}
    assert set(rep["methods"]) == methods
    for k in ("8", "32"):
        for m in methods:
            for step in ("0", "1", "2", "5", "10"):
                o = rep["results"][k][m][step]["overall"]
                assert 0 < o["mean"] < 20 and o["lo"] <= o["mean"] <= o["hi"], (k, m, step, o)
    # A near-untrained random init predicts ~uniformly over 259 byte symbols.
    assert rep["results"]["8"]["random init"]["0"]["overall"]["mean"] == pytest.approx(
        math.log2(259), abs=0.3
    )
    for name in ("meta-init", "Δ meta-init - multitask", "seen script", "unseen script"):
        assert name in ev.logs

    # MLflow: the training run with its metrics, and the evaluation's artifacts.
    runs = e2e.mlflow_runs(mlflow_server.uri)
    assert "e2e" in runs and runs["e2e"]["run"].data.metrics, sorted(runs)
    evaluation = [r for r in runs.values() if "evaluation/eval.json" in r["artifacts"]]
    assert evaluation, {n: r["artifacts"] for n, r in runs.items()}
    arts = evaluation[0]["artifacts"]
    assert {"evaluation/eval_k8.png", "evaluation/eval_table.txt"} <= set(arts)
    assert e2e.check(result, mlflow_server.uri) == []
