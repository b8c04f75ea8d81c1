"""The closing lines of `metaray train`: what was trained, in metaray's unit, whether
validation followed training, and where to look next (MLflow)."""

from __future__ import annotations

from typing import Any

from pipeline import config
from pipeline.data.episodes import UNIFORM_BPB
from pipeline.runtime.console import loss_unit, to_unit

# Validation "has not improved" when its last figure is no better than its first by this much
# (relative), while the training loss fell by more than this.
MIN_CHANGE = 0.01


def _mean(rows: list[dict[str, float]], key: str) -> float:
    vals = [r[key] for r in rows if key in r]
    return sum(vals) / len(vals) if vals else float("nan")


def validation_note(history: list[dict[str, float]], episode: str) -> str | None:
    """A warning when validation post-adaptation loss did not improve while training loss
    fell (the meta-init fits the training tasks, not new ones), else None."""
    vals = [(int(h["step"]), h["val_loss_post"]) for h in history if "val_loss_post" in h]
    if len(vals) < 2 or len(history) < 4:
        return None
    tenth = max(1, len(history) // 10)
    train0, train1 = _mean(history[:tenth], "loss_post"), _mean(history[-tenth:], "loss_post")
    (s0, v0), (s1, v1) = vals[0], vals[-1]
    best_step, best = min(vals, key=lambda sv: sv[1])
    fell = train1 < train0 * (1 - MIN_CHANGE)
    if not fell or v1 < v0 * (1 - MIN_CHANGE):
        return None
    unit = loss_unit(episode)

    def u(v: float) -> str:
        return f"{to_unit(v, episode):.3f} {unit}"

    return (
        f"  note: validation loss after adaptation has not improved ({u(v0)} at step {s0} -> "
        f"{u(v1)} at step {s1}; best {u(best)} at step {best_step}) while training loss fell "
        f"({u(train0)} -> {u(train1)}): the meta-init fits the training tasks, not new ones. "
        f"Try more training tasks, fewer outer steps, or a smaller model; the checkpoint of "
        f"step {best_step} is the better one if it was kept."
    )


def _run_dir(cfg: config.RunConfig) -> str:
    """What `evaluate`/`adapt` take: the run directory (its model is found there)."""
    return f"{cfg.checkpoint.storage.rstrip('/')}/{cfg.checkpoint.run_name}"


def _validation_line(cfg: config.RunConfig, m: dict[str, float], u: Any) -> str:
    floored = cfg.data.episode == "lm" and cfg.outer.val_support_floor
    how = "  (scored under the support-fitted floor: outer.val_support_floor)" if floored else ""
    return (
        f"  validation: loss before adaptation {u(m['val_loss_pre'])}, "
        f"after {cfg.inner.steps} inner step(s) {u(m['val_loss_post'])}{how}"
    )


def summary(cfg: config.RunConfig, r: Any) -> str:
    from pipeline.tracking.describe import where_to_look
    from pipeline.tracking.factory import resolve_uri

    m, episode = r.metrics, cfg.data.episode
    unit = loss_unit(episode)

    def u(v: float) -> str:
        return f"{to_unit(v, episode):.4f} {unit}"

    lines = [
        f"[metaray] run {cfg.checkpoint.run_name!r} finished: {r.steps}/{cfg.outer.steps} steps "
        f"with {cfg.cluster.num_workers} worker(s) in {r.seconds:.1f} s (start-up included)",
    ]
    if r.history:
        first, last = r.history[0], r.history[-1]
        lines.append(
            f"  meta-train loss after adaptation {u(first.get('loss_post', float('nan')))} "
            f"(step {int(first['step'])}) -> {u(last.get('loss_post', float('nan')))} "
            f"(step {int(last['step'])})"
            + (
                f"  (bits per byte: {UNIFORM_BPB:.2f} = a uniform guess over bytes)"
                if episode == "lm"
                else ""
            )
        )
    if "val_loss_post" in m:
        lines.append(_validation_line(cfg, m, u))
    note = validation_note(r.history, episode)
    if note:
        lines.append(note)
    if "episodes_per_s" in m:
        wait = 100 * m.get("data_wait_frac", 0)
        lines.append(
            f"  last interval: {m['episodes_per_s']:.1f} episodes/s, "
            f"{wait:.1f}% of step time waiting for data"
        )
    if getattr(r, "stopped_early", False):
        lines.append(
            f"  stopped early: no new best validation loss in {cfg.outer.early_stop_patience} "
            "validation(s) (outer.early_stop_patience)"
        )
    lines.append(f"  last checkpoint: {r.checkpoint}")
    for path in getattr(r, "spilled", []):
        lines.append(
            f"  tracking: the server did not answer; this run's calls are saved in {path}: "
            f"send them with `python -m pipeline.tracking replay {path}`"
        )
    if getattr(r, "model", ""):
        lines.append(f"  model (checkpoint.select={cfg.checkpoint.select}): {r.model}")
    run = getattr(r, "tracking_run", {}) or {}
    if cfg.tracking.enabled:
        uri = resolve_uri(cfg.tracking)
        lines.append("  next: " + where_to_look(uri, run.get("experiment_id"), run.get("run_id")))
    lines.append(f"  next: metaray evaluate --checkpoint {_run_dir(cfg)} --shards {cfg.data.uri}")
    return "\n".join(lines)


def as_dict(cfg: config.RunConfig, r: Any) -> dict[str, Any]:
    """`metaray train --json`: what the summary says, as data (losses in metaray's unit)."""
    from pipeline.runtime.console import display_metrics
    from pipeline.tracking.describe import run_url
    from pipeline.tracking.factory import resolve_uri

    run = getattr(r, "tracking_run", {}) or {}
    uri = resolve_uri(cfg.tracking) if cfg.tracking.enabled else None
    return {
        "run_name": cfg.checkpoint.run_name,
        "steps": r.steps,
        "total_steps": cfg.outer.steps,
        "seconds": round(r.seconds, 3),
        "checkpoint": r.checkpoint,
        "metrics": display_metrics(r.metrics, cfg.data.episode),
        "note": validation_note(r.history, cfg.data.episode),
        "mlflow": {
            "run_id": run.get("run_id"),
            "experiment_id": run.get("experiment_id"),
            "url": run_url(uri, run.get("experiment_id"), run.get("run_id")) if uri else None,
        },
    }
