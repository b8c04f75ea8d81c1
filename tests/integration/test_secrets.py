"""No credential in anything a run leaves behind: `metaray train` as a user runs it (its own
process, embedded Ray with its own temp dir), a password in `tracking.uri` against a real
`mlflow server`, and a secret in `AWS_SECRET_ACCESS_KEY`. Grepped afterwards: the console,
every file of the Ray session (worker logs included), the checkpoints and the MLflow store.
The run itself is tracked (the credentials reached MLflow as its own variables)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Pw4Tracking9xq"
AWS_SECRET = "AwsS3cretValue77zz"


def _files_holding(root: Path, needle: bytes) -> list[str]:
    return [
        str(p)
        for p in root.rglob("*")
        if p.is_file() and not p.is_socket() and needle in p.read_bytes()
    ]


def test_password_in_uri_and_aws_secret_are_nowhere(smoke_shards, mlflow_server, tmp_path):
    from mlflow import MlflowClient

    ray_tmp = Path(tempfile.mkdtemp(prefix="mrs-", dir="/tmp"))  # short: Ray's socket paths
    host = mlflow_server.uri.removeprefix("http://")
    env = dict(os.environ, RAY_TMPDIR=str(ray_tmp), AWS_SECRET_ACCESS_KEY=AWS_SECRET)
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = str(ROOT)
    metaray = str(Path(sys.executable).parent / "metaray")
    cmd = [metaray, "train", "--config", str(ROOT / "configs/smoke.yaml")]
    cmd += [
        f"data.uri={smoke_shards}",
        f"checkpoint.storage={tmp_path / 'runs'}",
        "cluster.num_workers=1",
        "cluster.episode_actors=1",
        "tracking.enabled=true",
        f"tracking.uri=http://alice:{PASSWORD}@{host}",
        "tracking.experiment=secrets-it",
    ]
    try:
        done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, timeout=300)
        console = done.stdout + done.stderr
        assert done.returncode == 0, console.decode(errors="replace")[-3000:]
        for secret in (PASSWORD.encode(), AWS_SECRET.encode()):
            assert secret not in console
            for place in (ray_tmp, tmp_path / "runs", mlflow_server.root):
                assert _files_holding(place, secret) == []
        assert f"alice:{PASSWORD}".encode() not in console
        assert list((tmp_path / "runs" / "smoke").glob("checkpoint_*/meta.json"))
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    client = MlflowClient(mlflow_server.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("secrets-it").experiment_id])
    assert run.info.status == "FINISHED" and "loss" in run.data.metrics
