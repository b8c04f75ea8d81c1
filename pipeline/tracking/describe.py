"""What a run says about itself in MLflow, and where a user finds it afterwards.

`source_tags(cfg)` runs on the driver (the command line and the git checkout are there, not on
a Ray worker) and travels to rank 0 with the config. `dataset_input(manifest, uri)` describes a
shard set as an MLflow dataset (the manifest's digest: the same shards, the same digest).
`where_to_look(uri, experiment_id, run_id)` is the closing line of `train` and `evaluate`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

from pipeline.tracking.redact import redact_value


def _git(*args: str) -> str | None:
    """git in the checkout the running code comes from (not the working directory)."""
    here = str(Path(__file__).resolve().parents[2])
    try:
        out = subprocess.run(
            ["git", "-C", here, *args], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def config_file(argv: list[str] | None = None) -> str | None:
    argv = list(sys.argv if argv is None else argv)
    for i, a in enumerate(argv):
        if a == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--config="):
            return a.split("=", 1)[1]
    return None


def command_tags(kind: str) -> dict[str, str]:
    """MLflow's own source tags (the run page's Source, Created by and commit) and metaray's
    command line: every run metaray opens (train, evaluate) carries them."""
    argv = [Path(sys.argv[0]).name, *sys.argv[1:]] if sys.argv else []
    command = redact_value(" ".join(shlex.quote(a) for a in argv))
    tags = {
        "metaray.kind": kind,
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": command.split(" ", 1)[0] if command else "metaray",
        "metaray.command": command,
        "mlflow.user": os.environ.get("USER", "") or "metaray",
    }
    commit = _git("rev-parse", "HEAD")
    if commit:
        tags["mlflow.source.git.commit"] = commit
        dirty = _git("status", "--porcelain", "--untracked-files=no")
        tags["metaray.git.dirty"] = "true" if dirty else "false"
    return tags


def source_tags(cfg: Any, kind: str = "train") -> dict[str, str]:
    """A training run's `command_tags` plus its config file and a description of the run."""
    tags = command_tags(kind)
    command = tags["metaray.command"]
    path = config_file()
    if path:
        tags["metaray.config_file"] = path
    d, m, i, o = cfg.data, cfg.model, cfg.inner, cfg.outer
    tags["mlflow.note.content"] = (
        f"metaray {kind}: {m.kind} {d.episode} model meta-learned with {i.algorithm} "
        f"({i.steps} inner step(s), lr {i.lr:g}), {o.steps} outer steps of meta-batch "
        f"{o.meta_batch}, on the shard set {redact_value(d.uri)}"
        + (f" (config {path})" if path else "")
        + f".\n\nCommand: `{command}`"
    )
    return tags


def dataset_input(manifest_json: bytes, uri: str, family: str, summary: dict) -> dict[str, Any]:
    """A JSON-able description of a shard set for `MlflowClient.log_inputs`."""
    digest = hashlib.sha256(manifest_json).hexdigest()[:32]
    return {
        "name": Path(uri.rstrip("/")).name or uri,
        "digest": digest,
        "source_type": "s3" if uri.startswith("s3://") else "local",
        "source": json.dumps({"uri": redact_value(uri)}),
        "profile": json.dumps({"family": family, **summary}),
    }


def run_url(uri: str, experiment_id: str | None, run_id: str | None) -> str:
    """The run's page: on the server itself, or on `mlflow ui`'s default address."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}" if experiment_id and run_id else ""
    if uri.startswith(("http://", "https://")):
        return f"{redact_value(uri).rstrip('/')}/{page}"
    return f"http://127.0.0.1:5000/{page}"


def where_to_look(uri: str, experiment_id: str | None, run_id: str | None) -> str:
    """The next step after a run: how to open it in MLflow's UI."""
    page = f"#/experiments/{experiment_id}/runs/{run_id}" if experiment_id and run_id else ""
    toggle = "(MLflow 3 opens experiments in its GenAI view: pick the 'Model training' toggle)"
    if uri.startswith(("http://", "https://")):
        return f"see the run in MLflow: {redact_value(uri).rstrip('/')}/{page} {toggle}"
    store = uri if "://" in uri else f"sqlite:///{Path(uri).resolve()}"
    return (
        f"see the run in MLflow: mlflow ui --backend-store-uri {store} --host 127.0.0.1 "
        f"--port 5000, then open http://127.0.0.1:5000/{page} {toggle}"
    )
