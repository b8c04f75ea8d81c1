"""PNG plots logged as MLflow artifacts: learning curves and loss against inner steps.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global figure state,
no display), so it is safe in Ray workers and background threads.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.png")
    FigureCanvasAgg(fig)
    fig.savefig(tmp, dpi=100, bbox_inches="tight")
    os.replace(tmp, out)  # atomic: a reader never sees half a PNG
    return out


def learning_curves(
    history: Mapping[str, Sequence[tuple[int, float]]], path: str | os.PathLike[str]
) -> Path:
    """One panel for every metric whose name mentions 'loss', one for the rest (throughput)."""
    losses = {k: v for k, v in history.items() if "loss" in k and v}
    others = {k: v for k, v in history.items() if "loss" not in k and v}
    panels = [p for p in (losses, others) if p] or [{}]
    fig = Figure(figsize=(7, 3.2 * len(panels)))
    for i, group in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        for name, points in sorted(group.items()):
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, label=name, marker="." if len(points) < 30 else None)
        ax.set_xlabel("meta-step")
        ax.set_ylabel("loss" if group is losses else "value")
        if group:
            ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
    fig.suptitle("learning curves")
    return _save(fig, path)


def inner_step_curves(
    curves: Mapping[int, Mapping[int, float]], path: str | os.PathLike[str], *, keep: int = 6
) -> Path:
    """Query loss after k inner steps, one line per validation (the last `keep` of them)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot(1, 1, 1)
    for step in sorted(curves)[-keep:]:
        ks = sorted(curves[step])
        ax.plot(ks, [curves[step][k] for k in ks], marker="o", label=f"meta-step {step}")
    ax.set_xlabel("inner steps")
    ax.set_ylabel("query loss")
    ax.set_title("loss against inner steps")
    if curves:
        ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    return _save(fig, path)
