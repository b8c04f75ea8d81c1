"""Experiment tracking: an MLflow tracker for rank 0 / the driver, and a null tracker.

Every caller goes through `make_tracker(tracking_cfg)`; the returned object never raises
because of the tracking server: the MLflow tracker queues every call and a background
thread sends them, so a slow or dead server costs a step nothing and degrades to a
warning plus a local buffer (sent when the server answers again, spilled to a JSONL
file at `end()` if it never does; `python -m pipeline.tracking replay FILE` sends it).

Params pass through `safe_params` first: credentials and anything secret-looking are
never logged.

Where runs go: `tracking.uri`, else `MLFLOW_TRACKING_URI`, else `sqlite:///<cwd>/mlflow.db`
(artifacts beside it in `mlartifacts/`). The deployment path is a real server, started on
loopback with one worker, a database backend and proxied artifacts (local disk or S3):

    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow server --host 127.0.0.1 --port 5000 \
        --workers 1 --backend-store-uri sqlite:////srv/mlflow/mlflow.db \
        --artifacts-destination s3://bucket/mlflow    # or /srv/mlflow/artifacts
    export MLFLOW_TRACKING_URI=http://127.0.0.1:5000

(`postgresql://...` works as the backend too, with a driver installed; for S3-compatible
stores give the server `MLFLOW_S3_ENDPOINT_URL` and credentials in its environment.)
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from pipeline.config import RunConfig, TrackingConfig


def resolve_uri(cfg: TrackingConfig) -> str:
    """Config URI, else MLFLOW_TRACKING_URI, else `sqlite:///<cwd>/mlflow.db`.

    Relative SQLite/file paths are made absolute here, because Ray workers and Tune trials
    run in other working directories than the command that started them."""
    uri = cfg.uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())
    if "://" not in uri:
        return Path(uri).resolve().as_uri()
    return uri


def spilled_since(cfg: TrackingConfig, t0: float) -> list[Path]:
    """Buffers spilled into `cfg.spill_dir()` since `t0` (time.time()): for the run's summary."""
    d = Path(cfg.spill_dir())
    return sorted(p for p in d.glob("*.jsonl") if p.stat().st_mtime >= t0) if d.is_dir() else []


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """`http://user:pass@host/x` -> (`http://host/x`, user, pass); other URIs unchanged."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri, None, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    clean = urlunsplit(parts._replace(netloc=host))
    return clean, unquote(user) or None, unquote(password) if password else None


def move_credentials(uri: str) -> str:
    """Credentials in a tracking URI go to MLflow's own variables, `MLFLOW_TRACKING_USERNAME`
    / `MLFLOW_TRACKING_PASSWORD`, in this process's environment (embedded Ray's workers,
    started after this, inherit it); the URI that MLflow prints, that configs and
    checkpoints carry and that Ray logs keeps only the host. On a running cluster, give the
    workers those two variables yourself (the job's or the cluster's environment)."""
    clean, user, password = split_credentials(uri)
    if user:
        os.environ["MLFLOW_TRACKING_USERNAME"] = user
    if password:
        os.environ["MLFLOW_TRACKING_PASSWORD"] = password
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env and split_credentials(env)[1]:  # the same, for the variable the workers inherit
        os.environ["MLFLOW_TRACKING_URI"] = move_credentials(env)
    return clean


def pin_uri(cfg: RunConfig) -> RunConfig:
    """`cfg` with `tracking.uri` resolved on the driver, before it travels to workers, and
    without credentials (`move_credentials`). Call it before Ray starts."""
    if not cfg.tracking.enabled:
        return cfg
    uri = move_credentials(resolve_uri(cfg.tracking))
    buffer = str(Path(cfg.tracking.spill_dir()).resolve())  # the driver's cwd, not a worker's
    tracking = cfg.tracking.model_copy(update={"uri": uri, "buffer_dir": buffer})
    return cfg.model_copy(update={"tracking": tracking})


class Tracker(Protocol):
    """What rank 0 and the Tune driver call. No method raises because of the server."""

    @property
    def run_id(self) -> str | None: ...

    @property
    def experiment_id(self) -> str | None: ...

    def start(
        self,
        run_name: str,
        params: Mapping[str, Any],
        *,
        tags: Mapping[str, str] | None = None,
        run_id: str | None = None,
    ) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_inner_curve(self, losses: Mapping[int, float], step: int, unit: str = "") -> None: ...

    def log_dataset(self, dataset: Mapping[str, str], context: str = "training") -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def log_table(self, rows: list[Mapping[str, Any]], artifact_file: str) -> None: ...

    def log_artifact(
        self, path: str | os.PathLike[str], artifact_path: str | None = None
    ) -> None: ...

    def log_model(
        self, weights: Any, run_config: Mapping[str, Any], *, lrs: Any = None, step: int = 0
    ) -> None: ...

    def end(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Tracking disabled (or not rank 0): every call is a no-op."""

    run_id: str | None = None
    experiment_id: str | None = None

    def start(
        self,
        run_name: str,
        params: Mapping[str, Any],
        *,
        tags: Any = None,
        run_id: str | None = None,
    ) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_inner_curve(self, losses: Mapping[int, float], step: int, unit: str = "") -> None:
        pass

    def log_dataset(self, dataset: Mapping[str, str], context: str = "training") -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_table(self, rows: list[Mapping[str, Any]], artifact_file: str) -> None:
        pass

    def log_artifact(self, path: Any, artifact_path: str | None = None) -> None:
        pass

    def log_model(
        self, weights: Any, run_config: Mapping[str, Any], *, lrs: Any = None, step: int = 0
    ) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass


def make_tracker(cfg: TrackingConfig) -> Tracker:
    """The tracker for this process: MLflow when `tracking.enabled`, else a no-op."""
    if not cfg.enabled:
        return NullTracker()
    from pipeline.tracking.mlflow_tracker import MlflowTracker

    return MlflowTracker(cfg, resolve_uri(cfg))


_END_STATUS = {"DONE": "FINISHED", "STOPPED": "KILLED", "ERROR": "FAILED", "INTERRUPTED": "KILLED"}


def close_children(
    cfg: TrackingConfig, parent_run_id: str | None, states: Mapping[str, str]
) -> dict[str, str]:
    """Tag a sweep's child runs with their trial state (`states`: run name -> DONE, STOPPED,
    ERROR) and close those left RUNNING (a trial the scheduler stopped is killed before its
    rank 0 can end its run). Returns run name -> child run id."""
    if not (cfg.enabled and parent_run_id):
        return {}
    try:
        from mlflow import MlflowClient

        client = MlflowClient(resolve_uri(cfg))
        parent = client.get_run(parent_run_id)
        runs = client.search_runs(
            [parent.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
            max_results=5000,
            order_by=["attributes.start_time DESC"],
        )
        ids = {}
        for run in runs:
            name, state = run.info.run_name, states.get(run.info.run_name)
            if state is None:
                continue
            ids.setdefault(name, run.info.run_id)  # newest first: a resumed trial's own run
            client.set_tag(run.info.run_id, "tune.state", state)
            if run.info.status == "RUNNING":
                client.set_terminated(run.info.run_id, _END_STATUS.get(state, "KILLED"))
        return ids
    except Exception as exc:  # the server may be gone: the sweep's result stands regardless
        warnings.warn(f"tracking: could not update the sweep's trial runs: {exc}", stacklevel=2)
        return {}


def replay(path: str | os.PathLike[str]) -> str | None:
    """Send a spilled buffer file to its tracking server; returns the run id."""
    from pipeline.tracking.sender import replay_file

    return replay_file(Path(path))
