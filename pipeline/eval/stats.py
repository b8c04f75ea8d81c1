"""PURE statistics for few-shot evaluation: means with 95% confidence intervals and paired
differences, over tasks and episodes (numpy only).

Results are held per task: `{task: array of per-episode values}`. Episodes of one task are
not independent evidence about the task population, so the overall figure is two-stage:
the mean of per-task means, with a t-interval over tasks (the units we want to generalise
over). With a single task the interval is over its episodes instead. Per-task figures use
a t-interval over that task's episodes. Paired differences are taken episode by episode
(the same support/query split under both methods) before any averaging.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from statistics import NormalDist
from typing import Any

import numpy as np

MIN_CI_TASKS = 4  # a CI over 3 or fewer tasks means nothing: such groups show the mean only

# Two-sided 95% Student t quantiles t_{0.975, df} for df = 1..30.
_T975 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]
_Z975 = NormalDist().inv_cdf(0.975)

PerTask = Mapping[str, np.ndarray]


def t975(df: int) -> float:
    """t_{0.975} with `df` degrees of freedom (Cornish-Fisher beyond the table: < 1e-3 off)."""
    if df < 1:
        return math.inf
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def mean_ci(values: Any) -> dict[str, float]:
    """Mean and 95% t-interval of independent values; a single value gets an infinite one."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "half": math.nan, "n": 0}
    mean = float(v.mean())
    half = t975(n - 1) * float(v.std(ddof=1)) / math.sqrt(n) if n > 1 else math.inf
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "half": half, "n": n}


def summarize(per_task: PerTask) -> dict[str, Any]:
    """Overall mean of task means with a 95% CI over tasks (over episodes if one task),
    plus each task's mean and CI over its episodes."""
    tasks = {t: mean_ci(v) for t, v in sorted(per_task.items())}
    task_means = [s["mean"] for s in tasks.values() if s["n"]]
    if len(task_means) >= 2:
        overall = mean_ci(task_means)
        over = "tasks"
    else:
        overall = mean_ci(np.concatenate([np.ravel(v) for v in per_task.values()]))
        over = "episodes"
    overall.update(
        n_tasks=len(task_means),
        n_episodes=int(sum(s["n"] for s in tasks.values())),
        ci_over=over,
    )
    return {"overall": overall, "tasks": tasks}


def paired(a: PerTask, b: PerTask) -> dict[str, Any]:
    """Summary of `a - b` taken per episode (the same episodes under both methods)."""
    if set(a) != set(b):
        raise ValueError(f"paired: different tasks {sorted(set(a) ^ set(b))}")
    diffs = {}
    for task in a:
        x, y = np.asarray(a[task], np.float64), np.asarray(b[task], np.float64)
        if x.shape != y.shape:
            raise ValueError(f"paired: task {task!r} has {x.shape} vs {y.shape} episodes")
        diffs[task] = x - y
    return summarize(diffs)


def subset(per_task: PerTask, tasks: set[str]) -> dict[str, np.ndarray]:
    return {t: v for t, v in per_task.items() if t in tasks}


def fmt(stat: Mapping[str, float], digits: int = 3) -> str:
    """`1.234 ± 0.056` (the 95% half-width)."""
    if not stat.get("n"):
        return "n/a"
    half = stat["half"]
    tail = "± inf" if not math.isfinite(half) else f"± {half:.{digits}f}"
    return f"{stat['mean']:.{digits}f} {tail}"
