"""Where a run's inputs and outputs live when it is not on one machine.

Two ways a path goes wrong on a cluster, both refused before any work with a message:
- a relative path in a job from `ray job submit`: the job runs in a temporary copy of
  `--working-dir` (which leaves out git-ignored folders such as data/ and runs/), so a
  relative `data.uri` is missing there and a relative `checkpoint.storage`, `tune.storage`
  or SQLite tracking store would be written into that copy and deleted with it;
- a node-local path on a cluster of more than one node: workers and trials on other nodes
  cannot see it (checkpoints would land on whichever pod's disk they ran on).
Use s3:// (or an absolute path on a filesystem every node mounts).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.config import ConfigError

JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray in the driver of a submitted job


def in_submitted_job() -> bool:
    return JOB_ENV in os.environ


def _job_working_dir() -> str | None:
    try:
        return json.loads(os.environ[JOB_ENV]).get("runtime_env", {}).get("working_dir")
    except (KeyError, ValueError, AttributeError):
        return None


def _paths(cfg: Any, sweep: Any = None) -> dict[str, str]:
    """key -> local path for every input/output a run reads or writes (s3:// and http(s) left
    out: every node reaches those)."""
    found = {"data.uri": cfg.data.uri, "checkpoint.storage": cfg.checkpoint.storage}
    if sweep is not None:
        found["tune.storage"] = sweep.storage
    if cfg.bank.enabled and cfg.bank.snapshot_uri:
        found["bank.snapshot_uri"] = cfg.bank.snapshot_uri
    if cfg.tracking.enabled:
        uri = cfg.tracking.uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
        if uri.startswith("sqlite:///"):
            found["tracking.uri"] = uri.removeprefix("sqlite:///") or "mlflow.db"
        elif "://" not in uri:
            found["tracking.uri"] = uri
    return {k: v for k, v in found.items() if v and "://" not in v}


def check_job_paths(cfg: Any, sweep: Any = None) -> None:
    """In a submitted job: refuse relative paths (see the module docstring)."""
    if not in_submitted_job():
        return
    bad = {k: v for k, v in _paths(cfg, sweep).items() if not os.path.isabs(v)}
    if not bad:
        return
    where = _job_working_dir()
    copy = f"a temporary copy of --working-dir {where}" if where else "the job's directory"
    listed = ", ".join(f"{k}={v!r}" for k, v in bad.items())
    raise ConfigError(
        f"{listed}: relative path(s) in a submitted Ray job. The job runs in {copy} on the "
        "head node, without git-ignored folders (data/, runs/): inputs are missing there and "
        "outputs would be deleted with it. Pass s3://bucket/prefix, or an absolute path every "
        "node can read, e.g. data.uri=$PWD/data/quickstart-wordlang checkpoint.storage=$PWD/runs "
        "tracking.uri=sqlite:///$PWD/mlflow.db (one machine) or a shared volume"
    )


def alive_nodes() -> int:
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def check_shared_storage(cfg: Any, sweep: Any = None, *, nodes: int | None = None) -> None:
    """On a cluster of more than one node, refuse node-local outputs (Ray must be up)."""
    if shared_fs_declared():
        return
    nodes = alive_nodes() if nodes is None else nodes
    if nodes <= 1:
        return
    outputs = {"checkpoint.storage", "tune.storage", "bank.snapshot_uri"}
    local = {k: v for k, v in _paths(cfg, sweep).items() if k in outputs}
    if local:
        listed = ", ".join(f"{k}={v!r}" for k, v in local.items())
        raise ConfigError(
            f"{listed}: a local path on a {nodes}-node Ray cluster. Trials and workers on other "
            "nodes write their checkpoints there, on their own disks, where no other node (and "
            "no resume) finds them. Use s3://bucket/prefix, or a filesystem every node mounts at "
            "the same absolute path and METARAY_SHARED_FS=1 in the environment to say so"
        )


def shared_fs_declared() -> bool:
    return os.environ.get("METARAY_SHARED_FS") == "1"


@contextmanager
def connected(cfg: Any, sweep: Any = None) -> Iterator[None]:
    """Refuse paths a cluster cannot use and bad inputs (`checks.preflight`), join Ray
    (`launch.connect`), refuse node-local outputs on a multi-node cluster; shut Ray down after
    the block if this started it."""
    from pipeline.runtime.checks import preflight
    from pipeline.runtime.launch import absolute, connect
    from pipeline.tracking import pin_uri

    check_job_paths(cfg, sweep)
    preflight(pin_uri(absolute(cfg)))  # bad inputs answered before Ray starts
    started = connect(cfg)
    try:
        check_shared_storage(cfg, sweep)
        yield
    finally:
        if started:
            import ray

            ray.shutdown()
