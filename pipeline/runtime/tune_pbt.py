"""SHELL: what Population Based Training needs from a trial: its checkpoints in Tune's hands,
and a start from another trial's checkpoint.

Tune's PBT exploits through Tune's own checkpoints: a weak trial is restarted with a strong
trial's latest checkpoint and a perturbed outer.lr. Ray Train V2's `TuneReportCallback`
hands Tune only the metrics and the checkpoint's *path* (as a metric), so Tune would hold no
checkpoint and PBT would skip every exploit, silently. Here:

- `fit_reporting_checkpoints`: the trial's Train run fits in a thread; a Train callback sends
  each report (metrics + checkpoint path) through a Ray queue to the trial's own thread, which
  reports it with `ray.tune.report(metrics, checkpoint=...)`: Tune keeps the checkpoint (a
  copy in the trial's Tune folder, safetensors + JSON like every metaray checkpoint);
- `from_handed`: a trial Tune (re)starts with a checkpoint continues from exactly that state
  (`checkpoint.resume_from`: parameters, optimizer, step, RNG) in a run directory of its own,
  named after the checkpoint, so the trial's superseded checkpoints are not resumed instead;
- `SynchSafePBT`: Tune's PBT without a stale STOP that ends an exploited trial early.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
from typing import Any

import ray.train
from ray.tune.schedulers import PopulationBasedTraining

from pipeline import config

_END = "__metaray_fit_ended__"
_PATH = "checkpoint_path"  # the key TuneReportCallback uses, for the same metrics in Tune


class _ForwardReports(ray.train.UserCallback):
    """In Train's controller: each report's rank-0 metrics and checkpoint path to the queue
    (bounded: the controller waits while the trial has not taken the previous one, as
    `TuneReportCallback` does, so Tune's decisions apply at the step they were made)."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def after_report(self, run_context: Any, metrics: list, checkpoint: Any) -> None:
        item = dict(metrics[0])
        if checkpoint is not None:
            item[_PATH] = checkpoint.path
        self.queue.put(item)


def _filesystem(cfg: config.RunConfig, run_config: Any) -> Any:
    if run_config.storage_filesystem is not None or "://" not in cfg.checkpoint.storage:
        return run_config.storage_filesystem
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(cfg.checkpoint.storage)[0]


def fit_reporting_checkpoints(cfg: config.RunConfig) -> None:
    """Fit `cfg`'s Train run, reporting every result to Tune with its checkpoint."""
    import ray.tune
    from ray.util.queue import Queue

    from pipeline.runtime.launch import build_trainer, make_run_config, release

    queue = Queue(maxsize=1, actor_options={"num_cpus": 0})
    run_config = make_run_config(cfg)
    fs = _filesystem(cfg, run_config)
    run_config = dataclasses.replace(run_config, callbacks=[_ForwardReports(queue)])
    trainer = build_trainer(cfg, run_config=run_config)
    failed: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # raised again in the trial's thread, below
            failed.append(exc)
        finally:
            queue.put({_END: True})

    thread = threading.Thread(target=fit, name="metaray-trial-fit", daemon=True)
    thread.start()
    try:
        while _END not in (item := queue.get()):
            path = item.get(_PATH)  # kept as a metric too, as TuneReportCallback does
            handed = ray.train.Checkpoint(path, filesystem=fs) if path else None
            ray.tune.report(item, checkpoint=handed)
        thread.join()
        if failed:
            raise failed[0]
    finally:  # the trial's episode actors would outlive it when Tune reuses the process
        release(trainer)
        ray.kill(queue.actor)


class SynchSafePBT(PopulationBasedTraining):
    """Tune's `PopulationBasedTraining`, without a stale STOP for an exploited trial.

    When the weaker trial reaches the boundary first, Tune pauses it and saves it; if the
    other trial arrives before that save has been processed, PBT's exploit stops the weaker
    trial mid-save. Tune then keeps a STOP decision for it (to apply once the save resolves)
    but drops the save itself, so the STOP waits for the trial's next save: the first
    checkpoint after its restart from the donor's state, which ends it there (a sibling of
    the race ray-project/ray#28511 fixed; this path is still in Ray 2.60's controller, and a
    CI run hit it). A trial being (re)started has nothing in flight: a decision Tune still
    holds for it is stale."""

    def choose_trial_to_run(self, tune_controller: Any) -> Any:
        trial = super().choose_trial_to_run(tune_controller)
        if trial is not None:
            held = getattr(tune_controller, "_cached_trial_decisions", {})
            held.pop(trial.trial_id, None)
        return trial


def from_handed(cfg: config.RunConfig, handed: Any) -> config.RunConfig:
    """`cfg` for a trial Tune (re)starts with checkpoint `handed` (None: a first start): PBT's
    exploit (another trial's state, this trial's perturbed outer.lr) or a restart after a
    failure (this trial's own latest) both continue from that checkpoint's exact state."""
    from pipeline import checkpoint as ckpt

    if handed is None:
        return cfg
    path = handed.path
    s3 = cfg.checkpoint.storage.startswith("s3://")
    uri = f"s3://{path}" if s3 and "://" not in path else path
    with ckpt.located(uri, s3_endpoint=cfg.data.s3_endpoint, select="last") as found:
        step = ckpt.verify(found.path)["step"]
    tag = hashlib.sha256(uri.encode()).hexdigest()[:6]
    ck = cfg.checkpoint
    name = f"{ck.run_name}-x{tag}-s{step}"
    update = {"run_name": name, "resume_from": uri}
    return cfg.model_copy(update={"checkpoint": ck.model_copy(update=update)})
