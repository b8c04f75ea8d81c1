"""`ray job submit` round trip against a `ray start --head` cluster (token auth on): the
README's cluster example runs jobs/train.py from an uploaded working directory as written and
leaves a loadable checkpoint; the job API refuses a client without the token."""

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
    shutil.copy(ROOT / ".gitignore", dest)  # Ray's upload leaves out what it lists (data/)
    return dest


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(extra)
    return env


def test_the_job_api_refuses_a_client_without_the_token(ray_head):
    denied = subprocess.run(
        [RAY, "job", "list", "--address", ray_head.address],
        env=_env({}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert denied.returncode != 0 and "token" in (denied.stdout + denied.stderr).lower()


def _readme_job_commands() -> list[list[str]]:
    """The `ray job submit` commands of the README's cluster example, as shell words."""
    import re
    import shlex

    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- cluster-example.*?```bash\n(.*?)```", text, re.S).group(1)
    joined = block.replace("\\\n", " ")
    return [
        shlex.split(ln.split("#", 1)[0]) for ln in joined.splitlines() if "ray job submit" in ln
    ]


def test_the_readme_cluster_example_runs_as_written(ray_head, tmp_path):
    """The README's `ray job submit` with its `$PWD` paths trains from a fresh checkout's
    working dir; the same command with the relative paths of the config is refused, with the
    reason and the fix in the job's log."""
    from pipeline.cli import main as metaray

    (cmd,) = _readme_job_commands()
    work = _working_dir(tmp_path / "checkout")  # `.` of the README: a clone without data/
    data = work / "data" / "quickstart-wordlang"  # built beside it, git-ignored in a clone
    assert metaray(["shards", "build", "wordlang", "--out", str(data), "--top-n", "300"]) == 0
    words = [w.replace("$PWD", str(work)) for w in cmd]
    words[words.index("--address") + 1] = ray_head.address  # this test's head, not :8265
    words[words.index("--working-dir") + 1] = str(work)
    words[0] = RAY
    fast = ["outer.steps=4", "outer.val_every=2", "checkpoint.every=2"]  # seconds, not minutes
    done = subprocess.run(
        [*words, *fast], env=_env(ray_head.env), capture_output=True, text=True, timeout=400
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]
    assert "run 'quickstart' finished: 4/4 steps" in out
    assert "TrainingReport(" not in out
    # metaray's own lines in the job's log carry no colour (Ray's client banner has its own)
    job_log = done.stdout.split("Tailing logs until the job exits", 1)[-1]
    ours = [ln for ln in job_log.splitlines() if "quickstart" in ln or "step " in ln]
    assert ours and not any("\x1b[" in ln for ln in ours), ours[:5]
    loaded = ckpt.load(work / "runs" / "quickstart" / "checkpoint_000004")  # loads, verifies
    assert loaded.state.step == 4 and len(loaded.history) == 4
    assert (work / "mlflow.db").exists()

    relative = [*words[: words.index("--config") + 2], *fast]  # the config's own data/, runs
    done = subprocess.run(
        relative, env=_env(ray_head.env), capture_output=True, text=True, timeout=400
    )
    out = done.stdout + done.stderr
    assert done.returncode != 0
    assert "data.uri='data/quickstart-wordlang'" in out and "relative path" in out
    assert "s3://" in out and "$PWD" in out
