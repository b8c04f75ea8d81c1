"""SHELL: what a training loop says about its run: its reports (with rank 0's checkpoint) to
its `LoopHost` (a Ray Train worker's `ray.train.report`, or a Tune trial's), the console line,
rank 0's tracker. Called from `pipeline.runtime.train_loop`."""

from __future__ import annotations

import tempfile
from typing import Any

import yaml

from pipeline import checkpoint as ckpt
from pipeline import config
from pipeline.meta import outer
from pipeline.runtime import console
from pipeline.runtime.loop_host import LoopHost


def report(
    host: LoopHost,
    metrics: dict[str, float],
    state: outer.MetaState,
    cfg_tree: dict,
    history: list,
    *,
    with_checkpoint: bool,
    tracker: Any = None,
    extra: dict | None = None,
) -> None:
    """`host.report`; with a checkpoint on rank 0. `tracker` (the final report only) also
    gets the checkpoint as an MLflow artifact: it copies the directory before it is deleted."""
    if not with_checkpoint:
        host.report(metrics, None, "")
        return
    with tempfile.TemporaryDirectory(prefix="metaray-ckpt-") as d:
        ckpt.save(d, state, config=cfg_tree, history=history, extra=extra)
        if tracker is not None:
            from pipeline.tracking import redact_tree

            with tempfile.TemporaryDirectory(prefix="metaray-ckpt-mlflow-") as shared:
                # MLflow gets the same checkpoint with its config's credentials redacted
                ckpt.save(shared, state, config=redact_tree(cfg_tree), history=history)
                tracker.log_artifact(shared, "checkpoint")
        host.report(metrics, d, f"checkpoint_{int(metrics['step']):06d}")  # named by its step


def report_done(host: LoopHost, step: int, history: list[dict[str, float]]) -> None:
    """A resumed run that was already finished: report its last metrics, train nothing (the
    controller, or Tune, needs one report per attempt)."""
    host.report({"step": step, **(history[-1] if history else {})}, None, "")


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def say(line: str) -> None:
    # the driver prints it without Ray's prefix (pipeline.runtime.console.follow_workers)
    console.say(line)


def start_tracker(cfg: config.RunConfig, rank: int, start: int, tags: Any = None) -> Any:
    """Rank 0's tracker (`pipeline.tracking.make_tracker`); a no-op on other ranks. `tags`:
    what the driver knows of the run (command line, git commit, config file)."""
    from pipeline.data.shards import open_shard_set
    from pipeline.tracking import NullTracker, make_tracker, redact_tree
    from pipeline.tracking.describe import dataset_input

    if rank != 0:
        return NullTracker()
    tracker = make_tracker(cfg.tracking)
    tags = {"metaray.kind": "train", **(tags or {})}
    if start:
        tags["resumed_from_step"] = str(start)
    tracker.start(cfg.checkpoint.run_name, config.flat_params(cfg), tags=tags)
    if tracker.run_id:  # the driver prints where to find the run
        console.emit(
            {"kind": "run", "run_id": tracker.run_id, "experiment_id": tracker.experiment_id}
        )
    shards = open_shard_set(cfg.data.uri, s3_endpoint=cfg.data.s3_endpoint)
    m = shards.manifest  # the shard set as an MLflow dataset input (the manifest's digest)
    tracker.log_dataset(dataset_input(m.to_json(), cfg.data.uri, m.family, m.summary()))
    safe = redact_tree(config.to_dict(cfg))  # credentials never reach MLflow
    tracker.log_text(yaml.safe_dump(safe, sort_keys=False), "config.yaml")
    if cfg.bank.enabled and cfg.bank.snapshot_uri:  # where this run's adapted tasks are kept
        bank = safe["bank"]
        tracker.set_tags({"bank.snapshot_uri": bank["snapshot_uri"], "bank.name": bank["name"]})
    return tracker
