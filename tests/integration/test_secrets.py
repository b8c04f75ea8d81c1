"""`metaray train` as a user runs it (its own process, embedded Ray with its own temp dir),
looked at from the outside while it runs and after:

- every socket that the run's processes (the command and all its descendants: GCS, raylet,
  workers, dashboard and its agent) listen on is bound to loopback (read from
  /proc/<pid>/fd and /proc/net/tcp{,6});
- a password in `tracking.uri` against a real `mlflow server`, and a secret in
  `AWS_SECRET_ACCESS_KEY`, are nowhere: not in the console, any file of the Ray session
  (worker logs included), the checkpoints or the MLflow store; the run is still tracked (the
  credentials reached MLflow as its own variables).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "Pw4Tracking9xq"
AWS_SECRET = "AwsS3cretValue77zz"
LOOPBACK = ("0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F")


def _files_holding(root: Path, needle: bytes) -> list[str]:
    found = []
    for p in root.rglob("*"):
        if p.is_file() and not p.is_socket() and needle in p.read_bytes():
            found.append(str(p))
    return found


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(d))
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        out.add(pid)
        todo += children.get(pid, [])
    return out


def _listening(pids: set[int]) -> list[tuple[str, str]]:
    """(local address as /proc/net writes it, process name) of every listening TCP socket."""
    inodes: dict[str, str] = {}
    for pid in pids:
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = name
        except OSError:  # the process ended meanwhile
            continue
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" and f[9] in inodes:  # 0A: LISTEN
                out.append((f[1], inodes[f[9]]))
    return out


def test_ports_on_loopback_and_no_credential_anywhere(smoke_shards, mlflow_server, tmp_path):
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
        "outer.steps=400",  # a few seconds of steps, to look at the sockets meanwhile
        "outer.val_every=100",
        "checkpoint.every=100",
        "tracking.enabled=true",
        f"tracking.uri=http://alice:{PASSWORD}@{host}",
        "tracking.experiment=secrets-it",
    ]
    out = tmp_path / "console.txt"
    try:
        with out.open("wb") as console:
            proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=console, stderr=console)
            seen: list[tuple[str, str]] = []
            deadline = time.monotonic() + 240
            while proc.poll() is None and time.monotonic() < deadline:
                if b"step " in out.read_bytes():  # workers up and stepping
                    seen = _listening(_descendants(proc.pid))
                    break
                time.sleep(0.2)
            proc.wait(timeout=300)
        text = out.read_bytes()
        assert proc.returncode == 0, text.decode(errors="replace")[-3000:]
        assert len(seen) >= 5, seen  # GCS, raylet, workers...: the scan did see the run
        assert [s for s in seen if not s[0].startswith(LOOPBACK)] == []
        for secret in (PASSWORD.encode(), AWS_SECRET.encode()):
            assert secret not in text
            for place in (ray_tmp, tmp_path / "runs", mlflow_server.root):
                assert _files_holding(place, secret) == []
        assert list((tmp_path / "runs" / "smoke").glob("checkpoint_*/meta.json"))
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    client = MlflowClient(mlflow_server.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("secrets-it").experiment_id])
    assert run.info.status == "FINISHED" and "loss" in run.data.metrics
