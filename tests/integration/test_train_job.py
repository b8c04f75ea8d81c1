"""`ray job submit` round trip against a `ray start --head` cluster (token auth on): the job
runs jobs/train.py from an uploaded working directory and leaves a loadable checkpoint."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import checkpoint as ckpt

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).parent / "ray")


def _working_dir(dest: Path) -> Path:
    """What a fresh clone ships to the job (no .venv, no data: those stay on the machine)."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pipeline", "jobs", "configs"):
        shutil.copytree(ROOT / name, dest / name, ignore=skip)
    shutil.copy(ROOT / "pyproject.toml", dest)
    return dest


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(extra)
    return env


def test_job_submit_trains_and_checkpoints(ray_head, smoke_shards, tmp_path):
    # Without the cluster's token the client is refused, and says what is missing.
    denied = subprocess.run(
        [RAY, "job", "list", "--address", ray_head.address],
        env=_env({}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert denied.returncode != 0 and "token" in (denied.stdout + denied.stderr).lower()

    wd, storage = _working_dir(tmp_path / "wd"), tmp_path / "runs"
    cmd = [
        RAY,
        "job",
        "submit",
        "--address",
        ray_head.address,
        "--working-dir",
        str(wd),
        "--",
        "python",
        "jobs/train.py",
        "--config",
        "configs/smoke.yaml",
        f"data.uri={smoke_shards}",
        f"checkpoint.storage={storage}",
        "checkpoint.run_name=job",
        "outer.steps=4",
        "cluster.num_workers=1",
    ]
    done = subprocess.run(cmd, env=_env(ray_head.env), capture_output=True, text=True, timeout=400)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "run 'job' finished: 4/4 steps with 1 worker(s)" in out
    metas = sorted((storage / "job").glob("checkpoint_*/meta.json"))
    assert metas, f"no checkpoint under {storage / 'job'}"
    loaded = ckpt.load(metas[-1].parent)
    assert loaded.state.step == 4 and len(loaded.history) == 4
