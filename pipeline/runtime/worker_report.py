"""SHELL: what a Ray Train worker says about its run: `ray.train.report` (with rank 0's
checkpoint), the console line, rank 0's tracker. Called from `pipeline.runtime.train_loop`."""

from __future__ import annotations

import sys
import tempfile
from typing import Any

import yaml

from pipeline import checkpoint as ckpt
from pipeline import config
from pipeline.meta import outer


def report(
    metrics: dict[str, float],
    state: outer.MetaState,
    cfg_tree: dict,
    history: list,
    *,
    with_checkpoint: bool,
    tracker: Any = None,
    extra: dict | None = None,
) -> None:
    """`ray.train.report`; with a checkpoint on rank 0. `tracker` (the final report only) also
    gets the checkpoint as an MLflow artifact: it copies the directory before it is deleted."""
    import ray.train  # Ray: metrics (and the checkpoint) to the controller

    if not with_checkpoint:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="metaray-ckpt-") as d:
        ckpt.save(d, state, config=cfg_tree, history=history, extra=extra)
        if tracker is not None:
            from pipeline.tracking import redact_tree

            with tempfile.TemporaryDirectory(prefix="metaray-ckpt-mlflow-") as shared:
                # MLflow gets the same checkpoint with its config's credentials redacted
                ckpt.save(shared, state, config=redact_tree(cfg_tree), history=history)
                tracker.log_artifact(shared, "checkpoint")
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def report_done(step: int, history: list[dict[str, float]]) -> None:
    """A resumed run that was already finished: report its last metrics, train nothing."""
    import ray.train  # Ray: the controller needs one report per attempt

    ray.train.report({"step": step, **(history[-1] if history else {})})


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def say(line: str) -> None:
    # Not print(): Ray Train patches print in workers and the line would show up twice.
    sys.stdout.write(f"[metaray] {line}\n")
    sys.stdout.flush()


def line(m: dict[str, float], total: int) -> str:
    parts = [f"step {int(m['step'])}/{total}"]
    for k in ("loss_pre", "loss_post", "val_loss_pre", "val_loss_post"):
        if k in m:
            parts.append(f"{k}={m[k]:.4f}")
    parts.append(f"episodes/s={m.get('episodes_per_s', 0):.1f}")
    parts.append(f"data_wait={100 * m.get('data_wait_frac', 0):.1f}%")
    return " ".join(parts)


def start_tracker(cfg: config.RunConfig, rank: int, start: int) -> Any:
    """Rank 0's tracker (`pipeline.tracking.make_tracker`); a no-op on other ranks."""
    from pipeline.tracking import NullTracker, make_tracker, redact_tree

    if rank != 0:
        return NullTracker()
    tracker = make_tracker(cfg.tracking)
    tags = {"resumed_from_step": str(start)} if start else None
    tracker.start(cfg.checkpoint.run_name, config.flat_params(cfg), tags=tags)
    safe = redact_tree(config.to_dict(cfg))  # credentials never reach MLflow
    tracker.log_text(yaml.safe_dump(safe, sort_keys=False), "config.yaml")
    if cfg.bank.enabled and cfg.bank.snapshot_uri:  # where this run's adapted tasks are kept
        bank = safe["bank"]
        tracker.set_tags({"bank.snapshot_uri": bank["snapshot_uri"], "bank.name": bank["name"]})
    return tracker
