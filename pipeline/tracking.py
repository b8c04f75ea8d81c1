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
import re
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from pipeline.config import RunConfig, TrackingConfig

REDACTED = "***redacted***"
# Key names that suggest a secret, matched anywhere in the dotted key.
_SECRET_KEY = re.compile(r"secret|token|passw|key|credential|auth|cookie|session_id", re.I)
# AWS access key ids (AKIA..., ASIA... temporary) anywhere in a value.
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA)[A-Z0-9]{16}\b")
# A 40-character AWS-secret-shaped token (mixed case, digits, / or +), not a hex digest.
_AWS_SECRET = re.compile(r"(?<![A-Za-z0-9/+])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
# scheme://user[:password]@host: the userinfo is stripped, the host kept (it is useful).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s]+)@")


def _looks_like_aws_secret(token: str) -> bool:
    return all(re.search(p, token) for p in (r"[a-z]", r"[A-Z]", r"\d"))


def redact_value(value: Any) -> Any:
    """`value` without credentials: URI userinfo stripped, key-shaped strings hidden."""
    if not isinstance(value, str):
        return value
    if _AWS_KEY_ID.search(value):
        return REDACTED
    if any(_looks_like_aws_secret(m.group(0)) for m in _AWS_SECRET.finditer(value)):
        return REDACTED
    return _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", value)


def safe_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Params as MLflow stores them (strings, <= 6000 chars), with secrets redacted."""
    out: dict[str, str] = {}
    for key, value in params.items():
        if _SECRET_KEY.search(key.rsplit(".", 1)[-1]) and value not in (None, ""):
            out[key] = REDACTED
        else:
            out[key] = str(redact_value(value))[:6000]
    return out


def redact_tree(tree: Mapping[str, Any]) -> dict[str, Any]:
    """A nested config dict with the same redactions as `safe_params`, for what is logged whole
    (config.yaml, the checkpoint and model artifacts' config)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out[key] = redact_tree(value)
        elif _SECRET_KEY.search(key) and value not in (None, ""):
            out[key] = REDACTED
        else:
            out[key] = redact_value(value)
    return out


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


def pin_uri(cfg: RunConfig) -> RunConfig:
    """`cfg` with `tracking.uri` resolved on the driver, before it travels to workers."""
    if not cfg.tracking.enabled:
        return cfg
    tracking = cfg.tracking.model_copy(update={"uri": resolve_uri(cfg.tracking)})
    return cfg.model_copy(update={"tracking": tracking})


class Tracker(Protocol):
    """What rank 0 and the Tune driver call. No method raises because of the server."""

    @property
    def run_id(self) -> str | None: ...

    def start(
        self, run_name: str, params: Mapping[str, Any], *, tags: Mapping[str, str] | None = None,
        run_id: str | None = None,
    ) -> None: ...

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_inner_curve(self, losses: Mapping[int, float], step: int) -> None: ...

    def set_tags(self, tags: Mapping[str, str]) -> None: ...

    def log_text(self, text: str, artifact_file: str) -> None: ...

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        ...

    def log_model(self, weights: Any, run_config: Mapping[str, Any]) -> None: ...

    def end(self, status: str = "FINISHED") -> None: ...


class NullTracker:
    """Tracking disabled (or not rank 0): every call is a no-op."""

    run_id: str | None = None

    def start(self, run_name: str, params: Mapping[str, Any], *, tags: Any = None,
              run_id: str | None = None) -> None:  # fmt: skip
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_inner_curve(self, losses: Mapping[int, float], step: int) -> None:
        pass

    def set_tags(self, tags: Mapping[str, str]) -> None:
        pass

    def log_text(self, text: str, artifact_file: str) -> None:
        pass

    def log_artifact(self, path: Any, artifact_path: str | None = None) -> None:
        pass

    def log_model(self, weights: Any, run_config: Mapping[str, Any]) -> None:
        pass

    def end(self, status: str = "FINISHED") -> None:
        pass


def make_tracker(cfg: TrackingConfig) -> Tracker:
    """The tracker for this process: MLflow when `tracking.enabled`, else a no-op."""
    if not cfg.enabled:
        return NullTracker()
    from pipeline.tracking_mlflow import MlflowTracker

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
    from pipeline.tracking_sender import replay_file

    return replay_file(Path(path))


if __name__ == "__main__":  # python -m pipeline.tracking replay FILE
    if len(sys.argv) != 3 or sys.argv[1] != "replay":
        sys.exit("usage: python -m pipeline.tracking replay BUFFER.jsonl")
    print(replay(sys.argv[2]))
