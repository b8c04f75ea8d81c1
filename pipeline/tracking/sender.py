"""The MLflow side of the tracker: applies queued operations to a tracking server.

Shared by the live tracker's background thread (`tracking_mlflow.MlflowTracker`) and by
`replay_file`, which sends a buffer spilled to disk when the server never came back.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("metaray.tracking")

# MLflow error codes that mean "try again later" (connection refused/timeouts arrive as
# INTERNAL_ERROR); any other MLflow error is the server refusing on purpose: drop the op.
_TRANSIENT = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}


def _short_http_timeouts() -> None:
    # MLflow's defaults (7 retries with backoff, 120 s timeout) would hold a dead-server call
    # for minutes and delay end(); sends run off the training thread, so 15 s costs no step
    # (and a loaded server is not mistaken for a dead one). The user's settings still win.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")


def _is_transient(exc: Exception) -> bool:
    code = getattr(exc, "error_code", None)
    if code is not None:
        return code in _TRANSIENT
    return isinstance(exc, (OSError, TimeoutError))  # requests' errors are OSErrors


class _Sender:
    """Applies operations to the server; shared by the live tracker and `replay`."""

    def __init__(self, uri: str, experiment: str, register_as: str | None) -> None:
        from mlflow import MlflowClient

        self.uri, self.experiment, self.register_as = uri, experiment, register_as
        self.client = MlflowClient(uri)
        self.run_id: str | None = None
        self.experiment_id: str | None = None

    def _experiment_id(self) -> str:
        if self.experiment_id is None:
            exp = self.client.get_experiment_by_name(self.experiment)
            if exp is None:
                location = None
                if self.uri.startswith("sqlite:///"):  # artifacts beside the database file
                    db = Path(self.uri.removeprefix("sqlite:///"))
                    location = (db.parent / "mlartifacts").as_uri()
                try:
                    self.experiment_id = self.client.create_experiment(
                        self.experiment, artifact_location=location
                    )
                except Exception:  # another trial created it first
                    exp = self.client.get_experiment_by_name(self.experiment)
                    if exp is None:
                        raise
            if exp is not None:
                self.experiment_id = exp.experiment_id
        return self.experiment_id

    def apply(self, ops: list[dict[str, Any]]) -> None:
        from mlflow.entities import Metric, Param, RunTag

        op = ops[0]
        kind = op["op"]
        if kind == "create":
            tags = dict(op.get("tags") or {})
            if op.get("parent"):
                tags["mlflow.parentRunId"] = op["parent"]
            run = self.client.create_run(self._experiment_id(), run_name=op["name"], tags=tags)
            self.run_id = run.info.run_id
        elif kind == "attach":
            self.run_id = op["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
        elif kind == "metrics":
            metrics = [
                Metric(k, float(v), o["ts"], o["step"])
                for o in ops
                for k, v in o["metrics"].items()
            ]
            self.client.log_batch(self.run_id, metrics=metrics, synchronous=True)
        elif kind == "params":
            items = [Param(k, v) for k, v in op["params"].items()]
            for i in range(0, len(items), 100):  # the server takes at most 100 params a call
                self.client.log_batch(self.run_id, params=items[i : i + 100], synchronous=True)
        elif kind == "tags":
            tags = [RunTag(k, str(v)) for k, v in op["tags"].items()]
            self.client.log_batch(self.run_id, tags=tags, synchronous=True)
        elif kind == "text":
            self.client.log_text(self.run_id, op["text"], op["file"])
        elif kind == "artifact":
            path = Path(op["path"])
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), op.get("artifact_path"))
            elif path.exists():
                self.client.log_artifact(self.run_id, str(path), op.get("artifact_path"))
            else:
                log.warning("tracking: artifact %s no longer exists; not logged", path)
        elif kind == "table":
            import pandas as pd

            self.client.log_table(self.run_id, pd.DataFrame(op["rows"]), op["file"])
        elif kind == "dataset":
            from mlflow.entities import Dataset, DatasetInput, InputTag

            d = op["dataset"]
            ds = Dataset(d["name"], d["digest"], d["source_type"], d["source"], None, d["profile"])
            tag = InputTag("mlflow.data.context", op.get("context", "training"))
            self.client.log_inputs(self.run_id, datasets=[DatasetInput(ds, tags=[tag])])
        elif kind == "model":
            self._log_model(op["dir"], op.get("step", 0), op.get("tags"))
        elif kind == "end":
            self.client.set_terminated(self.run_id, op["status"])

    def _log_model(self, data_dir: str, step: int = 0, tags: dict[str, str] | None = None) -> None:
        """`tags`: the run's source tags (the metaray command, its git commit); they override
        what MLflow reads from this process (on Ray, the worker script)."""
        import mlflow
        import mlflow.pyfunc
        from mlflow.models import Model, infer_signature

        from pipeline.tracking import pyfunc_model

        # Model.log resolves the store and experiment from process-wide state.
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_experiment(experiment_id=self._experiment_id())
        cfg = json.loads((Path(data_dir) / "config.json").read_text(encoding="utf-8"))
        episode = cfg.get("data", {}).get("episode", "lm")
        example = pyfunc_model.input_example(episode)
        served = pyfunc_model.MetarayPyfunc(data_dir)  # the very loader MLflow will call
        steps = {"steps": int(cfg.get("inner", {}).get("steps", 1))}
        signature = infer_signature(example, served.predict(example, steps), params=steps)
        Model.log(
            None,  # artifact_path: deprecated in favour of name, still positional
            name="model",
            flavor=mlflow.pyfunc,
            run_id=self.run_id,
            step=step,
            # Loaded by code + safetensors + JSON: nothing is pickled.
            loader_module="pipeline.tracking.pyfunc_model",
            data_path=data_dir,
            # The project's code travels with the model: `metaray` is no published package.
            code_paths=[str(Path(__file__).resolve().parents[1])],
            signature=signature,
            input_example=example,
            pip_requirements=pinned_requirements(),
            tags=tags or None,
            registered_model_name=self.register_as,
            await_registration_for=30,
        )


# What the model's code imports, pinned to the versions it was trained with.
MODEL_DEPENDENCIES = ("torch", "numpy", "pandas", "safetensors", "pydantic", "pyyaml")


def pinned_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in MODEL_DEPENDENCIES:
        try:
            out.append(f"{name}=={version(name).split('+', 1)[0]}")  # 2.13.0+cpu -> 2.13.0
        except PackageNotFoundError:
            continue
    return out


def replay_file(path: Path) -> str | None:
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    if not lines or lines[0].get("op") != "header":
        raise ValueError(f"{path}: not a metaray tracking buffer (first line is not a header)")
    head, ops = lines[0], lines[1:]
    _short_http_timeouts()
    sender = _Sender(head["uri"], head["experiment"], head.get("register_as"))
    sender.run_id = head.get("run_id")
    for op in ops:
        sender.apply([op])
    return sender.run_id
