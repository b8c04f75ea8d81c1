"""`metaray train` as a user runs it (its own process, embedded Ray with its own temp dir),
looked at from the outside while it runs and after. The run is stopped with Ctrl+C (SIGINT
to its process group, as a terminal sends it) once a few checkpoints are on disk, then the
same command is run again:

- Ctrl+C: exit 130 with a sentence; the rerun resumes from the newest intact checkpoint on
  disk (whether or not Ray registered it) and leaves only the checkpoints Ray tracks;
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
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.fixtures.ray_cluster import start_logged

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


def _newest_intact(run: Path) -> int:
    from pipeline import checkpoint as ckpt

    steps = []
    for d in (d for d in run.glob("checkpoint_*") if d.is_dir()):
        try:
            steps.append(int(ckpt.verify(d)["step"]))
        except Exception:  # an incomplete one: skipped, as the rerun does
            continue
    return max(steps)


def _wait_for(what, proc, deadline_s: float = 240) -> None:
    deadline = time.monotonic() + deadline_s
    while not what():
        assert proc.poll() is None, "the run ended before the moment looked for"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)


def test_ctrl_c_resume_ports_on_loopback_and_no_credential_anywhere(
    smoke_shards, mlflow_server, tmp_path
):
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
        "outer.steps=150",  # some seconds of steps: time to interrupt and to look
        "outer.val_every=100",
        "checkpoint.every=10",
        "tracking.enabled=true",
        f"tracking.uri=http://alice:{PASSWORD}@{host}",
        "tracking.experiment=secrets-it",
    ]
    run = tmp_path / "runs" / "smoke"
    first, second = tmp_path / "first.txt", tmp_path / "second.txt"
    proc = None
    try:
        proc = start_logged(cmd, env, tmp_path, first)
        _wait_for(lambda: len(list(run.glob("checkpoint_*/meta.json"))) >= 3, proc)
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl+C
        assert proc.wait(timeout=120) == 130, first.read_text(errors="replace")[-3000:]
        said = first.read_text(errors="replace")
        assert "interrupted: run 'smoke' keeps its checkpoints" in said
        resume_at = _newest_intact(run)

        proc = start_logged(cmd, env, tmp_path, second)
        _wait_for(lambda: b"step " in second.read_bytes(), proc)  # workers up and stepping
        seen = _listening(_descendants(proc.pid))
        assert proc.wait(timeout=300) == 0, second.read_text(errors="replace")[-3000:]
        text = first.read_bytes() + second.read_bytes()
        assert f"smoke: resumed at step {resume_at}".encode() in text
        kept = [d for d in run.glob("checkpoint_*") if d.is_dir()]
        assert len(kept) == 2  # Ray's num_to_keep; no orphans left
        assert len(seen) >= 5, seen  # GCS, raylet, workers...: the scan did see the run
        assert [s for s in seen if not s[0].startswith(LOOPBACK)] == []
        for secret in (PASSWORD.encode(), AWS_SECRET.encode()):
            assert secret not in text
            for place in (ray_tmp, tmp_path / "runs", mlflow_server.root):
                assert _files_holding(place, secret) == []
    finally:
        if proc is not None and proc.poll() is None:  # a failed check: stop what this test started
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=60)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    client = MlflowClient(mlflow_server.uri)
    runs = client.search_runs([client.get_experiment_by_name("secrets-it").experiment_id])
    assert "FINISHED" in {r.info.status for r in runs}
