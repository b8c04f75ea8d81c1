"""PNG plots logged as MLflow artifacts: training curves, loss against inner steps, evaluation.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global figure state,
no display), so it is safe in Ray workers and background threads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.data.episodes import UNIFORM_BPB
from pipeline.eval.stats import MIN_CI_TASKS


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    FigureCanvasAgg(fig)
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    os.replace(tmp, out)  # atomic: a reader never sees half a PNG
    return out


# metric-name ending -> the unit its panel shows; metrics sharing a unit share a panel.
UNITS = (
    ("_bpb", "bits per byte"),
    ("_mse", "mean squared error"),
    ("_nats", "nats"),
    ("_per_s", "episodes per second"),
    ("_frac", "fraction of step time"),
    ("_mb", "peak RSS (MiB)"),
)
SKIP = ("system/train_s",)  # a clock: a straight line that says nothing a plot should


def _unit(name: str) -> str | None:
    return next((u for end, u in UNITS if name.endswith(end)), None)


def learning_curves(
    history: Mapping[str, Sequence[tuple[int, float]]], path: str | os.PathLike[str]
) -> Path:
    """One panel per unit (losses in their unit, throughput, data wait, memory) against the
    meta-step; legends outside the data."""
    panels: dict[str, dict[str, Sequence[tuple[int, float]]]] = {}
    for name, points in sorted(history.items()):
        unit = _unit(name)
        if points and unit and name not in SKIP:
            panels.setdefault(unit, {})[name] = points
    order = [u for _, u in UNITS if u in panels] or ["(no metrics)"]
    fig = Figure(figsize=(8.5, 2.4 * len(order) + 0.6), layout="constrained")
    axes = fig.subplots(len(order), 1, sharex=True, squeeze=False)[:, 0]
    for ax, unit in zip(axes, order, strict=True):
        for name, points in panels.get(unit, {}).items():
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=name, marker="." if len(points) < 30 else None)
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        if panels.get(unit):
            ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[-1].set_xlabel("meta-step (outer step)")
    fig.suptitle("training: loss (lower is better), throughput, data wait, memory")
    return _save(fig, path)


def inner_step_curves(
    curves: Mapping[int, Mapping[int, float]],
    path: str | os.PathLike[str],
    *,
    keep: int = 6,
    unit: str = "",
) -> Path:
    """Validation query loss after k inner steps, one line per validation (the last `keep`)."""
    fig = Figure(figsize=(7.5, 4))
    ax = fig.add_subplot(1, 1, 1)
    for step in sorted(curves)[-keep:]:
        ks = sorted(curves[step])
        ax.plot(ks, [curves[step][k] for k in ks], marker="o", label=f"meta-step {step}")
    ax.set_xlabel("inner steps on the support set")
    ax.set_xticks(sorted({k for c in curves.values() for k in c}))
    ax.set_ylabel(f"validation query loss ({unit})" if unit else "validation query loss")
    ax.set_title("validation loss against inner steps (lower is better)")
    if curves:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _draw_series(
    ax: Any,
    steps: Sequence[int],
    series: Mapping[str, Any],
    *,
    legend: bool = True,
    bars: bool = True,
) -> None:
    """Mean ± 95% CI against inner steps, one line per series, dodged so bars never overlap
    (`bars=False`: the means only)."""
    import math

    n = max(1, len(series))
    gaps = [b - a for a, b in zip(steps, steps[1:], strict=False)]
    width = 0.5 * min(1.0, min(gaps, default=1.0))
    for i, (label, per) in enumerate(series.items()):
        offset = (i - (n - 1) / 2) * width / n
        xs = [s + offset for s in steps]
        stats = [per[str(s)].get("overall", per[str(s)]) for s in steps]
        means = [h["mean"] for h in stats]
        half = [
            h["half"] if bars and h.get("half") is not None and math.isfinite(h["half"]) else 0.0
            for h in stats
        ]  # (None: a report read back from JSON, or a group too small for a CI)
        ax.errorbar(xs, means, yerr=half, marker="o", capsize=3, label=label)
    ax.set_xticks(list(steps))
    ax.set_xlabel("inner steps on the support set")
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(0.0, -0.18), ncol=2)


def eval_figure(rep: Mapping[str, Any], shot: str) -> Figure:
    """Evaluation at one shot count: the metric per method against inner steps (top left) and
    meta-init minus each method on the same episodes (top right); below, that paired
    difference within each task group (seen / unseen script), whose verdicts the console
    prints one by one. 95% CI bars over tasks, dodged."""
    steps = list(rep["steps"])
    better = "higher" if rep["higher_is_better"] else "lower"
    pairs = rep["paired"].get(shot, {})
    groups = rep.get("by_group", {}).get(shot, {}) if pairs else {}
    fig = Figure(figsize=(13 if pairs else 6.5, 9.6 if groups else 5.2), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[1.2, 1]) if groups else (fig, None)
    ax = top.add_subplot(1, 2 if pairs else 1, 1)
    _draw_series(ax, steps, rep["results"][shot])
    if rep["metric"] == "bits per byte":
        ax.axhline(UNIFORM_BPB, color="grey", ls="--", lw=0.8)
        ax.annotate(
            f"{UNIFORM_BPB:.2f} bits: a uniform guess over bytes",
            (steps[0], UNIFORM_BPB),
            xytext=(2, 3),
            textcoords="offset points",
            fontsize="small",
            color="grey",
        )
    ax.set_ylabel(f"{rep['metric']} ({better} is better)")
    first = next(iter(rep["results"][shot].values()))[str(steps[0])]
    over = first.get("overall", first).get("ci_over", "tasks")  # the console table's unit
    # a PNG travels without the console's "scoring:" line, so it names the rule itself
    rule = (
        "\nunder the support-fitted floor (every method alike)" if rep.get("support_floor") else ""
    )
    ax.set_title(
        f"K={shot} support examples: query {rep['metric']}, mean ± 95% CI over {over}{rule}"
    )
    if not pairs:
        return fig
    side = "below" if not rep["higher_is_better"] else "above"
    bx = top.add_subplot(1, 2, 2)
    _draw_series(bx, steps, pairs)
    bx.axhline(0.0, color="black", lw=0.8)
    bx.set_ylabel(f"meta-init minus method ({side} 0 = meta-init better)")
    bx.set_title(f"paired difference on the same episodes, 95% CI over {over}")
    for i, (g, per) in enumerate(groups.items()):
        gx = bottom.add_subplot(1, len(groups), i + 1, sharey=bx)
        n = len(rep["groups"][g])
        small = n < MIN_CI_TASKS
        series = {m: v for m, v in per.items() if m in pairs}
        _draw_series(gx, steps, series, legend=False, bars=not small)
        gx.axhline(0.0, color="black", lw=0.8)
        gx.set_title(f"{g} ({n} tasks): " + ("mean only, too few for a CI" if small else "95% CI"))
        gx.set_ylabel(f"meta-init minus method ({side} 0 = better)")
    return fig


def eval_plots(rep: Mapping[str, Any], outdir: str | os.PathLike[str]) -> list[Path]:
    """`eval_k<K>.png` per shot count."""
    return [
        _save(eval_figure(rep, k), Path(outdir) / f"eval_k{k}.png") for k in map(str, rep["shots"])
    ]
