"""What a finished sweep tells its user: a table of trials, the best trial, its config as YAML.

Kept apart from `tune.py` so it reads a `ResultGrid` only through its public surface
(`config`, `metrics`, `metrics_dataframe`, `error`, `path`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import config
from pipeline.config import RunConfig
from pipeline.runtime.tune_config import SweepConfig


@dataclass
class TrialRow:
    trial_id: str
    run_name: str
    values: dict[str, Any]
    best: float  # best value of the sweep metric over the trial's reports (nan: none)
    steps: int  # meta-steps the trial trained
    state: str  # DONE, STOPPED (early, by the scheduler), ERROR, INTERRUPTED
    checkpoint: str | None  # last checkpoint the trial reported


@dataclass
class SweepResult:
    metric: str
    rows: list[TrialRow]
    best: TrialRow | None
    table: str
    best_config_path: str | None = None
    experiment_path: str | None = None
    parent_run_id: str | None = None
    concurrency: int = 0
    interrupted: bool = False  # stopped (Ctrl+C, driver lost) before every trial ended
    extra: dict[str, Any] = field(default_factory=dict)

    def report(self, sweep: SweepConfig) -> str:
        lines = [self.table, ""]
        if self.interrupted:
            lines.append(
                f"[metaray] sweep {sweep.name!r} was interrupted: rerun the same "
                "command to resume it (finished trials are kept)"
            )
        if self.best is None:
            lines.append(f"[metaray] sweep {sweep.name!r}: no trial reported {self.metric}")
            return "\n".join(lines)
        b = self.best
        lines += [
            f"[metaray] best trial {b.trial_id}: {self.metric}={b.best:.4f} after {b.steps} steps",
            f"  best config: {self.best_config_path}",
            f"    train it:  metaray train --config {self.best_config_path}",
            f"  best checkpoint: {b.checkpoint}",
            f"  sweep state: {self.experiment_path} (rerun the same command to resume)",
        ]
        if self.parent_run_id:
            lines.append(f"  MLflow parent run: {self.parent_run_id}")
        return "\n".join(lines)


def _last(df: Any, column: str) -> Any:
    if df is None or column not in df:
        return None
    values = df[column].dropna()
    return values.iloc[-1] if len(values) else None


def _row(
    result: Any, base: RunConfig, sweep: SweepConfig, statuses: dict[str, tuple[str, str]]
) -> TrialRow:
    df = result.metrics_dataframe
    metrics = result.metrics or {}
    trial_id = str(
        metrics.get("trial_id")
        or statuses.get(str(result.path), ("", ""))[0]
        or Path(str(result.path)).name
    )
    best = math.nan
    if df is not None and sweep.metric in df:
        series = df[sweep.metric].dropna()
        if len(series):
            best = float(series.min() if sweep.mode == "min" else series.max())
    steps = _last(df, "step")
    steps = int(steps) if steps is not None else 0
    if result.error is not None:
        state = "ERROR"
    elif statuses.get(trial_id, ("", "TERMINATED"))[1] not in ("TERMINATED", "ERROR"):
        state = "INTERRUPTED"  # pending/running/paused when the sweep stopped
    else:
        state = "DONE" if steps >= base.outer.steps else "STOPPED"
    space_keys = list(sweep.space)
    values = {k: result.config.get(k) for k in space_keys}
    return TrialRow(
        trial_id=trial_id,
        run_name=f"{base.checkpoint.run_name}-{trial_id}",
        values={k: v.item() if hasattr(v, "item") else v for k, v in values.items()},
        best=best,
        steps=steps,
        state=state,
        checkpoint=_last(df, "checkpoint_path"),
    )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_table(rows: list[TrialRow], metric: str, keys: list[str]) -> str:
    head = ["trial", *keys, f"best {metric}", "steps", "state"]
    body = [
        [r.trial_id, *(_fmt(r.values.get(k)) for k in keys), _fmt(r.best), str(r.steps), r.state]
        for r in rows
    ]
    widths = [
        max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
    out = [line, "-" * len(line)]
    out += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)) for b in body]
    return "\n".join(out)


def _expected_trials(sweep: SweepConfig) -> int:
    n = sweep.num_samples
    for dist in sweep.space.values():
        n *= len(dist.get("grid", [None]))
    return n


def summarize(grid: Any, base: RunConfig, sweep: SweepConfig) -> SweepResult:
    # Per-trial status is not on Result; the grid's analysis has it (absent: assume ended).
    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or []
    statuses = {
        str(key): (str(t.trial_id), str(t.status)) for t in trials for key in (t.trial_id, t.path)
    }
    rows = sorted((_row(r, base, sweep, statuses) for r in grid), key=lambda r: r.trial_id)
    scored = [r for r in rows if not math.isnan(r.best)]
    best = None
    if scored:
        pick = min if sweep.mode == "min" else max
        best = pick(scored, key=lambda r: r.best)
    interrupted = any(r.state == "INTERRUPTED" for r in rows)
    interrupted = interrupted or len(rows) < _expected_trials(sweep)
    if interrupted:  # Tune may mark a trial cut short by Ctrl+C as terminated: a trial that
        # never reported the metric was not stopped by the scheduler (which needs the metric)
        for r in rows:
            if r.state == "STOPPED" and math.isnan(r.best):
                r.state = "INTERRUPTED"
    table = format_table(rows, sweep.metric, list(sweep.space))
    return SweepResult(
        metric=sweep.metric, rows=rows, best=best, table=table, interrupted=interrupted
    )


def write_best(cfg: RunConfig, path: str, sweep: SweepConfig, best: TrialRow) -> str:
    """The best trial's config as a YAML file `metaray train --config` accepts as is."""
    out = Path(path).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Best trial {best.trial_id} of sweep {sweep.name!r}: "
        f"{sweep.metric}={best.best:.6g} after {best.steps} steps.\n"
        f"#   metaray train --config {out}\n"
    )
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(header + config.to_yaml(cfg), encoding="utf-8")
    os.replace(tmp, out)
    return str(out)
