"""A node lost mid-run, on a real two-node Ray cluster on this host (two `ray start --block`,
each with its own temp dir and ports): `metaray train` with one worker on each node, then the
second node's raylet SIGKILLed once the run is stepping. The run must say which node left and
what it waits for, stop once `cluster.node_wait_s` is over with a message naming the workers
it could not place (not wait forever), and keep its checkpoints for the rerun."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.fixtures.ray_cluster import VENV_BIN, _free_port, start_logged, stop_group

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _ray_start(args: list[str], env: dict, temp: Path, log: Path) -> subprocess.Popen:
    cmd = [str(VENV_BIN / "ray"), "start", "--block", "--num-cpus=1", f"--temp-dir={temp}"]
    cmd += ["--object-store-memory=200000000", f"--dashboard-agent-listen-port={_free_port()}"]
    cmd += [f"--metrics-export-port={_free_port()}", "--node-ip-address=127.0.0.1", *args]
    return start_logged(cmd, env, temp.parent, log)


def _raylet_of(pid: int) -> int:
    """The raylet process started under `ray start` process `pid`."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
            cmdline = Path(f"/proc/{d}/cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid and b"raylet" in cmdline.split(b"\0")[0]:
            return int(d)
    raise AssertionError(f"no raylet under pid {pid}")


def _wait(what, deadline_s: float, why: str) -> None:
    deadline = time.monotonic() + deadline_s
    while not what():
        assert time.monotonic() < deadline, why
        time.sleep(0.5)


def test_a_lost_node_is_said_and_the_wait_for_it_is_bounded(smoke_shards, tmp_path) -> None:
    base = Path(tempfile.mkdtemp(prefix="mrn-", dir="/tmp"))  # short: Ray's socket paths
    token = base / "auth_token"
    token.write_text(secrets.token_hex(32))
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", PYTHONPATH=str(ROOT))
    env["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] = "0.5"
    env["METARAY_SHARED_FS"] = "1"  # both nodes are this host: one filesystem
    # the GCS notices a dead raylet in ~1.5 s instead of ~15 s (Ray's default health check)
    env.update(RAY_health_check_period_ms="500", RAY_health_check_failure_threshold="3")
    env.pop("RAY_ADDRESS", None)
    gcs = f"127.0.0.1:{_free_port()}"
    head = node = run = None
    try:
        head = _ray_start(
            ["--head", f"--port={gcs.split(':')[1]}", "--include-dashboard=false"],
            env,
            base / "head",
            base / "head.log",
        )
        node = _ray_start([f"--address={gcs}"], env, base / "node", base / "node.log")
        status = [str(VENV_BIN / "ray"), "status", f"--address={gcs}"]

        def two_nodes() -> bool:
            out = subprocess.run(status, env=env, capture_output=True, text=True).stdout
            return out.count("node_") >= 2

        _wait(two_nodes, 120, "the two-node cluster did not come up")
        log = tmp_path / "train.txt"
        cmd = [str(VENV_BIN / "metaray"), "train", "--config", str(ROOT / "configs/smoke.yaml")]
        cmd += [
            f"data.uri={smoke_shards}",
            f"checkpoint.storage={tmp_path / 'runs'}",
            f"cluster.address={gcs}",
            "cluster.num_workers=2",  # one per node: each node has 1 CPU
            "cluster.episode_actors=1",
            "cluster.node_wait_s=8",
            "outer.steps=100000",
            "checkpoint.every=5",
            "tracking.enabled=false",
        ]
        run = start_logged(cmd, env, tmp_path, log)
        stepping = lambda: b"/100000 steps" in log.read_bytes() or run.poll() is not None  # noqa: E731
        _wait(stepping, 240, "the run did not start stepping")
        assert run.poll() is None, log.read_text(errors="replace")[-3000:]
        os.kill(_raylet_of(node.pid), signal.SIGKILL)
        t_kill = time.monotonic()
        rc = run.wait(timeout=300)
        waited = time.monotonic() - t_kill
        said = log.read_text(errors="replace")
        assert rc == 1, said[-3000:]
        assert "[metaray] node " in said and "left the cluster" in said, said[-3000:]
        assert "waiting up to 8 s (cluster.node_wait_s)" in said
        assert "Ray could not place 2 worker(s) of 1 CPU for 8 s (cluster.node_wait_s)" in said
        assert "checkpoints are kept" in said
        assert waited < 120, waited  # bounded: death detection + one 8 s placement attempt
        assert list((tmp_path / "runs" / "smoke").glob("checkpoint_*/meta.json"))
    finally:
        for proc in (run, node, head):
            if proc is not None:
                stop_group(proc)
        shutil.rmtree(base, ignore_errors=True)
