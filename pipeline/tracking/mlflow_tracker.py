"""The MLflow tracker: an ordered queue of JSON-able operations sent by one background thread.

Why a queue: a training step must never wait on the tracking server. `log_metrics` only
appends to a deque (microseconds); the thread batches consecutive metric calls into one
`log_batch`. When the server is unreachable the operation stays at the head of the queue,
a warning is printed once, and the thread retries every few seconds; when the server
answers again the backlog is flushed in order. `end()` waits at most
`tracking.flush_timeout_s`, then writes what is left to a JSONL file that
`python -m pipeline.tracking replay FILE` sends later.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.config import TrackingConfig
from pipeline.tracking.redact import redact_tree, safe_params
from pipeline.tracking.sender import _is_transient, _Sender, _short_http_timeouts

log = logging.getLogger("metaray.tracking")
RETRY_EVERY_S = 3.0
# Metrics wait up to this long to travel together: one request per second, not one per step
# (a request costs the client ~1 ms of CPU, which a 2-core trainer would feel).
SEND_EVERY_S = 1.0
TRAINING_GROUPS = ("train/", "val/", "system/")  # metric groups of a training run
# The run's tags that say where it came from; the model carries them too, since MLflow would
# otherwise take them from the process that logs it (on Ray, rank 0's worker script).
SOURCE_TAGS = (
    "mlflow.source.name",
    "mlflow.source.type",
    "mlflow.source.git.commit",
    "mlflow.user",
    "metaray.command",
)


class MlflowTracker:
    def __init__(self, cfg: TrackingConfig, uri: str) -> None:
        self._cfg, self._uri = cfg, uri
        self._ops: deque[dict[str, Any]] = deque()
        self._cv = threading.Condition()
        self._closing = False
        self._flushing = False  # flush() waits: the sender does not hold metrics back
        self._deadline = float("inf")
        self._down = False
        self._thread: threading.Thread | None = None
        self._sender: _Sender | None = None
        # Artifacts wait here; a spilled buffer refers to them, so they sit beside it.
        self._buffer_dir = Path(cfg.spill_dir()).resolve()
        self._buffer_dir.mkdir(parents=True, exist_ok=True)
        self._staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self._buffer_dir))
        self._history: dict[str, list[tuple[int, float]]] = {}
        self._inner: dict[int, dict[int, float]] = {}
        self._inner_unit = ""
        self._name = "metaray"
        self._source: dict[str, str] = {}
        self._copies = 0
        self.spilled: Path | None = None
        self.sender_cpu_s = 0.0  # CPU the background sender spent sending (bench/)

    @property
    def run_id(self) -> str | None:
        return self._sender.run_id if self._sender else None

    @property
    def uri(self) -> str:
        return self._uri

    @property
    def experiment_id(self) -> str | None:
        return self._sender.experiment_id if self._sender else None

    # -- the API: each call only enqueues -------------------------------------------------
    def start(
        self,
        run_name: str,
        params: Mapping[str, Any],
        *,
        tags: Mapping[str, str] | None = None,
        run_id: str | None = None,
    ) -> None:
        """`run_id`: reattach to that run (a resumed sweep's parent) instead of a new one."""
        _short_http_timeouts()
        self._name = run_name
        self._source = {k: str(v) for k, v in (tags or {}).items() if k in SOURCE_TAGS}
        self._sender = _Sender(self._uri, self._cfg.experiment, self._cfg.register_as)
        if run_id:
            self._put({"op": "attach", "run_id": run_id})
        else:
            self._put(
                {
                    "op": "create",
                    "name": run_name,
                    "tags": dict(tags or {}),
                    "parent": self._cfg.parent_run_id,
                }
            )
        if not run_id:  # a reattached run has its params (MLflow refuses to change them)
            self._put({"op": "params", "params": safe_params(params)})
        self._thread = threading.Thread(target=self._loop, name="metaray-tracking", daemon=True)
        self._thread.start()
        # Callers (the Tune driver) may want the run id at once: wait briefly, never long.
        with self._cv:
            self._cv.wait_for(lambda: self.run_id is not None or self._down, timeout=10)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        for k, v in clean.items():
            self._history.setdefault(k, []).append((step, v))
        if clean:
            self._put(
                {
                    "op": "metrics",
                    "metrics": clean,
                    "step": int(step),
                    "ts": int(time.time() * 1000),
                    "mono": time.monotonic(),
                }
            )
            if self._cfg.parent_run_id and any(k.startswith("val/") for k in clean):
                # A Tune trial: the scheduler decides on this validation and may stop the trial
                # (killing this process) right after; what it decided on is in MLflow first.
                self.flush(self._cfg.flush_timeout_s)

    def flush(self, timeout_s: float) -> bool:
        """Wait (at most `timeout_s`) until everything queued so far is sent."""
        with self._cv:
            self._flushing = True
            self._cv.notify_all()
            done = self._cv.wait_for(lambda: not self._ops or self._down, timeout=timeout_s)
            self._flushing = False
            return done

    def log_inner_curve(self, losses: Mapping[int, float], step: int, unit: str = "") -> None:
        """Kept for `plots/inner_steps.png` only: the metrics `val/loss_pre`/`val/loss_post`
        already hold its ends, and a metric per k would repeat them."""
        self._inner[int(step)] = {int(k): float(v) for k, v in losses.items()}
        self._inner_unit = unit

    def log_dataset(self, dataset: Mapping[str, str], context: str = "training") -> None:
        """The shard set as an MLflow dataset input (`describe.dataset_input`)."""
        self._put({"op": "dataset", "dataset": dict(dataset), "context": context})

    def set_tags(self, tags: Mapping[str, str]) -> None:
        self._put({"op": "tags", "tags": {k: str(v) for k, v in tags.items()}})

    def log_text(self, text: str, artifact_file: str) -> None:
        self._put({"op": "text", "text": text, "file": artifact_file})

    def log_table(self, rows: list[Mapping[str, Any]], artifact_file: str) -> None:
        """`mlflow.log_table`: rows of one dict each (shown in the UI's evaluation views)."""
        self._put({"op": "table", "rows": [dict(r) for r in rows], "file": artifact_file})

    def log_artifact(self, path: str | os.PathLike[str], artifact_path: str | None = None) -> None:
        """Copied now (a temp checkpoint dir may vanish before the sender gets to it)."""
        src = Path(path)
        if not src.exists():
            warnings.warn(f"tracking: artifact {src} does not exist; not logged", stacklevel=2)
            return
        self._copies += 1
        dst = self._staging / f"artifact-{self._copies}" / src.name
        if src.is_dir():
            shutil.copytree(src, dst)
        else:
            dst.parent.mkdir(parents=True)
            shutil.copy2(src, dst)
        self._put({"op": "artifact", "path": str(dst), "artifact_path": artifact_path})

    def log_model(
        self, weights: Any, run_config: Mapping[str, Any], *, lrs: Any = None, step: int = 0
    ) -> None:
        """`weights`: a safetensors file or a dict of tensors (the meta-learned parameters);
        `lrs`: the inner learning rates (Meta-SGD's learned ones) the model adapts with;
        `step`: the outer step the model is from (MLflow shows it with the model)."""
        data = self._staging / "model"
        data.mkdir(parents=True, exist_ok=True)
        if isinstance(weights, (str, os.PathLike)):
            shutil.copyfile(weights, data / "weights.safetensors")
        else:
            from safetensors.torch import save_file

            tensors = {k: v.detach().cpu().contiguous() for k, v in dict(weights).items()}
            save_file(tensors, str(data / "weights.safetensors"))
        if isinstance(lrs, Mapping):
            from safetensors.torch import save_file

            rates = {k: v.detach().cpu().float().contiguous() for k, v in lrs.items()}
            save_file(rates, str(data / "lrs.safetensors"))
        safe = redact_tree(run_config)  # what MLflow stores must not carry credentials
        (data / "config.json").write_text(json.dumps(safe, indent=1), encoding="utf-8")
        # the source travels in the op: a replayed buffer logs it from yet another process
        self._put({"op": "model", "dir": str(data), "step": int(step), "tags": self._source})

    def end(self, status: str = "FINISHED") -> None:
        if self._thread is None:
            return
        self._log_plots()
        self._put({"op": "end", "status": status})
        with self._cv:
            self._closing = True
            self._deadline = time.monotonic() + self._cfg.flush_timeout_s
            self._cv.notify_all()
        self._thread.join(timeout=self._cfg.flush_timeout_s + 15)
        with self._cv:
            left = list(self._ops)
            self._ops.clear()
        if left:
            self.spilled = self._spill(left)
        else:
            shutil.rmtree(self._staging, ignore_errors=True)
            with contextlib.suppress(OSError):  # no clutter in the user's directory
                self._buffer_dir.rmdir()
        self._thread = None

    # -- internals -------------------------------------------------------------------------
    def _put(self, op: dict[str, Any]) -> None:
        with self._cv:
            self._ops.append(op)
            if op["op"] != "metrics" or len(self._ops) == 1:  # a step need not wake the sender
                self._cv.notify_all()

    def _log_plots(self) -> None:
        try:
            from pipeline.tracking import plots

            # against the meta-step: training runs only (an evaluation's x axis is inner steps)
            training = {k: v for k, v in self._history.items() if k.startswith(TRAINING_GROUPS)}
            if any(k.startswith(("train/", "val/")) for k in training):
                png = plots.learning_curves(training, self._staging / "learning_curves.png")
                self.log_artifact(png, "plots")
            if self._inner:
                png = plots.inner_step_curves(
                    self._inner, self._staging / "inner_steps.png", unit=self._inner_unit
                )
                self.log_artifact(png, "plots")
        except Exception as exc:  # a plot must never fail a run
            warnings.warn(f"tracking: plots not rendered: {exc}", stacklevel=2)

    def _queued_values(self) -> int:
        return sum(len(o["metrics"]) for o in self._ops if o["op"] == "metrics")

    def _take(self) -> list[dict[str, Any]]:
        head = self._ops[0]
        if head["op"] != "metrics":
            return [head]
        batch, count = [], 0
        for op in self._ops:  # coalesce consecutive metric calls, <= 1000 values per call
            if op["op"] != "metrics" or count + len(op["metrics"]) > 1000:
                break
            batch.append(op)
            count += len(op["metrics"])
        return batch or [head]

    def _loop(self) -> None:
        assert self._sender is not None
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._ops or self._closing)
                if not self._ops or time.monotonic() > self._deadline:
                    return
                if self._ops[0]["op"] == "metrics" and not self._closing:
                    # let a second's worth of steps gather (or 1000 values), then send once
                    self._cv.wait_for(
                        lambda: self._closing or self._flushing or self._queued_values() >= 1000,
                        timeout=max(0.0, self._ops[0]["mono"] + SEND_EVERY_S - time.monotonic()),
                    )
                batch = self._take()
            cpu0 = time.thread_time()
            try:
                self._sender.apply(batch)
            except Exception as exc:
                self.sender_cpu_s += time.thread_time() - cpu0
                if not _is_transient(exc):
                    warnings.warn(f"tracking: {batch[0]['op']} not logged: {exc}", stacklevel=1)
                else:
                    if not self._down:
                        warnings.warn(
                            f"tracking server {self._uri} unreachable ({type(exc).__name__}: "
                            f"{str(exc)[:200]}); training continues, buffering locally and "
                            f"retrying every {RETRY_EVERY_S:.0f} s",
                            stacklevel=1,
                        )
                    with self._cv:
                        self._down = True
                        self._cv.notify_all()
                        self._cv.wait(timeout=RETRY_EVERY_S)
                    continue
            self.sender_cpu_s += time.thread_time() - cpu0
            with self._cv:
                for _ in batch:
                    self._ops.popleft()
                if self._down:
                    log.warning("tracking server %s is back; sending the buffer", self._uri)
                    self._down = False
                self._cv.notify_all()

    def _spill(self, ops: list[dict[str, Any]]) -> Path:
        out_dir = self._buffer_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / f"{self._name}-{int(time.time())}-{os.getpid()}.jsonl"
        header = {
            "op": "header",
            "uri": self._uri,
            "experiment": self._cfg.experiment,
            "register_as": self._cfg.register_as,
            "run_id": self.run_id,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(o) + "\n" for o in [header, *ops]), encoding="utf-8")
        os.replace(tmp, path)
        warnings.warn(
            f"tracking server {self._uri} did not answer within {self._cfg.flush_timeout_s:g} s: "
            f"{len(ops)} tracking calls saved to {path}; send them later with "
            f"`python -m pipeline.tracking replay {path}`",
            stacklevel=2,
        )
        return path
