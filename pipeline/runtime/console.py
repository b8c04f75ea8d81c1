"""What a user reads: metaray's own lines, progress bars, and the libraries around it kept quiet.

- `quiet()` (driver and every Ray worker): Ray's colour codes off when the output is not a
  terminal, Ray Train's per-report `TrainingReport(...)` dump, MLflow's database-migration
  INFO, matplotlib's font-cache notice and Ray's start-up INFO silenced. Warnings stay.
- `Progress`: a tqdm bar when stderr is a terminal; else a plain line at most every
  `PLAIN_EVERY_S` (elapsed, rate, ETA), so a log file stays readable.
- `emit` / `follow_workers`: rank 0 of a Ray Train run writes progress events on its stdout;
  the driver, which receives every worker's output, draws them as its own bar or lines and
  drops the noise (a worker's stdout is no terminal and Ray prefixes it: a bar there cannot
  work). C++ lines from Ray's actors can only be filtered there, on the driver.
- Metric names and units: `display_metrics` turns the trainer's losses (nats per byte for
  language models) into the bits per byte every other metaray figure uses.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

PLAIN_EVERY_S = 10.0
RAY_LEVEL = logging.WARNING  # ray.init's own logging: its start-up INFO is not for our users
LN2 = math.log(2.0)
# logger -> level: chatty INFO from libraries that a user of metaray does not act on.
QUIET_LOGGERS = {
    "ray.train.v2._internal.execution.context": logging.WARNING,  # "Reporting training result"
    "ray.train.v2._internal.callbacks": logging.ERROR,  # PreemptionWatcher start-up notices
    "alembic": logging.WARNING,  # MLflow's SQLite migrations on first use
    "mlflow.store.db.utils": logging.WARNING,
    "mlflow.pyfunc": logging.WARNING,  # "Validating input example against model signature"
    "mlflow.models": logging.WARNING,
    "mlflow.tracking._tracking_service.client": logging.WARNING,  # "View run ... at: <uri>"
    "matplotlib.font_manager": logging.ERROR,  # "building the font cache"
    # "Token authentication is enabled": it is, and metaray keeps it on; no action to take
    "ray._private.authentication.authentication_token_setup": logging.ERROR,
}


def is_tty(stream: Any = None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def quiet() -> None:
    """Silence what is noise to a metaray user, in this process (idempotent)."""
    if not is_tty(sys.stdout):
        os.environ["RAY_COLOR_PREFIX"] = "0"  # read by Ray's log printer on every line
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


def say(line: str, stream: Any = None) -> None:
    """One metaray line (not print(): Ray Train patches print in workers)."""
    out = stream or sys.stdout
    out.write(f"[metaray] {line}\n")
    out.flush()


def fmt_s(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, int(round(seconds)))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """`with Progress("train", total=300, unit="step") as p: p.update(done, loss=...)`."""

    def __init__(
        self,
        desc: str,
        total: int,
        *,
        unit: str = "step",
        initial: int = 0,
        stream: Any = None,
        every_s: float = PLAIN_EVERY_S,
    ) -> None:
        self.desc, self.total, self.unit, self.every_s = desc, max(1, int(total)), unit, every_s
        self.stream = stream or sys.stderr
        self.done = self._first = int(initial)
        self._t0 = self._last_line = time.monotonic()
        self._post = ""
        self._bar = None
        if is_tty(self.stream) and _columns(self.stream) > 0:  # (a 0-wide pty shows no bar)
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total, initial=initial, desc=desc, unit=unit, file=self.stream
            )

    def update(self, done: int, **postfix: Any) -> None:
        done = min(int(done), self.total)
        self._post = ", ".join(f"{k} {_num(v)}" for k, v in postfix.items())
        if self._bar is not None:
            self._bar.set_postfix_str(self._post, refresh=False)
            self._bar.update(done - self.done)
            self.done = done
            return
        self.done = done
        now = time.monotonic()
        if now - self._last_line >= self.every_s or done >= self.total:
            self._last_line = now
            say(self.line(now), self.stream)

    def line(self, now: float | None = None) -> str:
        elapsed = (now or time.monotonic()) - self._t0
        rate = (self.done - self._first) / elapsed if elapsed > 0 else 0.0
        left = (self.total - self.done) / rate if rate > 0 else float("inf")
        pct = 100 * self.done / self.total
        text = (
            f"{self.desc}: {self.done}/{self.total} {self.unit}s ({pct:.0f}%), "
            f"{fmt_s(elapsed)} elapsed, {rate:.2f} {self.unit}s/s, ETA {fmt_s(left)}"
        )
        return text + (f" | {self._post}" if self._post else "")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _columns(stream: Any) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return 0


def _num(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# -- metric names and units ---------------------------------------------------------------
_GROUP = {
    "loss_pre": "train/loss_pre",
    "loss_post": "train/loss_post",
    "val_loss_pre": "val/loss_pre",
    "val_loss_post": "val/loss_post",
    "episodes_per_s": "system/episodes_per_s",
    "data_wait_frac": "system/data_wait_frac",
    "train_s": "system/train_s",
    "peak_rss_mb": "system/peak_rss_mb",
}
_LOSSES = ("loss_pre", "loss_post", "val_loss_pre", "val_loss_post")


def loss_unit(episode: str) -> str:
    """The unit metaray reports losses in: bits per byte for language models."""
    return {"lm": "bpb", "regression": "mse", "classify": "nats"}.get(episode, "")


def to_unit(value: float, episode: str) -> float:
    return value / LN2 if episode == "lm" else value


def display_metrics(metrics: Mapping[str, float], episode: str) -> dict[str, float]:
    """Trainer metrics -> grouped MLflow names with the unit in the name (`train/loss_post_bpb`,
    `val/loss_pre_bpb`, `system/peak_rss_mb`); `loss` (= loss_post) and `step` dropped."""
    unit = loss_unit(episode)
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if k not in _GROUP or not isinstance(v, (int, float)):
            continue
        if k in _LOSSES:
            out[f"{_GROUP[k]}_{unit}"] = to_unit(float(v), episode)
        else:
            out[_GROUP[k]] = float(v)
    return out


# -- rank 0 -> driver: progress and events ride the worker's stdout ------------------------
EVENT = "[metaray-event] "  # a JSON object follows; the driver's filter draws it, never prints it
NOISE = re.compile(
    "|".join(
        (
            r"Reporting training result \d+: TrainingReport\(",  # Ray Train V2, every report
            r"'PreemptionWatcher'.*max_restarts > 0",  # a C++ E-line about a harmless actor
            r"INFO mlflow\.store\.db\.utils",  # MLflow's SQLite migrations
            r"INFO alembic\.runtime\.migration|Context impl SQLiteImpl|non-transactional DDL",
            r"Matplotlib is building the font cache",
            # Train's placement-group cleaner, every few seconds when no dashboard serves the
            # State API (a cluster started without one); it keeps monitoring: not a failure
            r"Failed to query Ray Train Controller actor state",
            r"View run .* at: |View experiment at: ",  # MLflow's URLs (may carry credentials)
        )
    )
)


def emit(event: dict[str, Any]) -> None:
    """Rank 0: one event line on stdout for the driver (`follow_workers`) to draw."""
    sys.stdout.write(EVENT + json.dumps(event) + "\n")
    sys.stdout.flush()


class _Follower:
    """Wraps Ray's driver-side printer of worker output: drops the libraries' noise, prints
    metaray's lines without Ray's `(RayTrainWorker pid=...)` prefix, draws progress events."""

    def __init__(self, printer: Callable[[dict], None], draw: bool = True) -> None:
        self.printer, self.bar, self.run, self.events = printer, None, {}, []
        self.draw = draw  # False (a sweep: many trials, Tune prints its own table): drop events
        self._lock = threading.Lock()

    def __call__(self, data: dict) -> None:
        kept = []
        for line in data.get("lines", []):
            if NOISE.search(line):
                continue
            if EVENT in line:
                self._event(line.split(EVENT, 1)[1])
            elif "[metaray] " in line:
                sys.stdout.write(line[line.index("[metaray] ") :] + "\n")
                sys.stdout.flush()
            else:
                kept.append(line)
        if kept:
            self.printer({**data, "lines": kept})

    def _event(self, text: str) -> None:
        try:
            ev = json.loads(text)
        except ValueError:
            return
        if not self.draw:
            return
        with self._lock:
            self.events.append(ev)
            if ev.get("kind") == "run":
                self.run = {k: str(v) for k, v in ev.items() if k != "kind" and v}
            elif ev.get("kind") == "step":
                if self.bar is None:
                    self.bar = Progress(ev.get("desc", "train"), ev["total"], initial=ev["start"])
                self.bar.update(ev["step"], **ev.get("show", {}))

    def close(self) -> None:
        with self._lock:
            if self.bar is not None:
                self.bar.close()
                self.bar = None


@contextmanager
def follow_workers(draw: bool = True) -> Iterator[_Follower | None]:
    """Driver, Ray initialised with log_to_driver: filter and draw the workers' output while
    the block runs. Uses Ray's log dispatcher (a private API, checked: Ray 2.60); where it is
    missing the workers' lines print as Ray prints them, and nothing else changes."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as disp
    except ImportError:
        yield None
        return
    with disp._lock:
        found = [(n, h) for n, h in disp.handlers if n == "ray_print_logs"]
    if not found:
        yield None
        return
    follower = _Follower(found[0][1], draw)
    with disp._lock:
        disp.handlers = [(n, follower if n == "ray_print_logs" else h) for n, h in disp.handlers]
    try:
        yield follower
    finally:
        time.sleep(0.3)  # the last lines of the workers are still on their way
        with disp._lock:
            disp.handlers = [(n, found[0][1] if h is follower else h) for n, h in disp.handlers]
        follower.close()


def step_event(metrics: Mapping[str, float], total: int, start: int, episode: str) -> dict:
    """What the driver's bar shows after a report: losses in metaray's unit, throughput."""
    unit = loss_unit(episode)
    show: dict[str, Any] = {}
    for k, label in (("loss_post", "loss"), ("val_loss_post", "val_loss")):
        if k in metrics:
            show[f"{label}_{unit}"] = round(to_unit(metrics[k], episode), 4)
    if "episodes_per_s" in metrics:
        show["episodes/s"] = round(metrics["episodes_per_s"], 1)
    return {
        "kind": "step",
        "step": int(metrics["step"]),
        "total": total,
        "start": start,
        "show": show,
    }
