"""SHELL: what the training loop asks of the process it runs in: its rank, the checkpoint it
was handed, and where its reports go.

- `TrainWorker`: a Ray Train worker (every `metaray train` run, and sweep trials of several
  workers): `ray.train.get_context`, `ray.train.get_checkpoint`, `ray.train.report`, which
  persists each checkpoint into the run directory and keeps Train's last two.
- `TuneTrial`: the loop runs inside a Tune trial's own process (`tune.trial_runs`), one rank,
  with no Train controller or worker process to start. Checkpoints are written to the same
  run directory, under the same names, by metaray (meta.json last: complete or absent; the
  last two kept), and each report goes to `ray.tune.report` with the checkpoint's path under
  the key Train's `TuneReportCallback` uses, so Tune sees the same results either way; for PBT
  (`hand=True`) with the checkpoint itself, as `tune_pbt` does for Train runs.
"""

from __future__ import annotations

from typing import Any, Protocol

from pipeline.runtime.selection import copy_checkpoint

CHECKPOINT_PATH = "checkpoint_path"  # ray.tune.integration.ray_train's key
KEEP = 2  # checkpoints kept per run: by Ray Train (launch.make_run_config) and by TuneTrial


class LoopHost(Protocol):
    def rank_world(self) -> tuple[int, int]: ...

    def handed(self) -> Any:
        """The checkpoint handed to this attempt from outside (a `ray.train.Checkpoint`), or
        None: the run then resumes from its own run directory."""

    def report(self, metrics: dict[str, float], checkpoint_dir: str | None, name: str) -> None:
        """Report `metrics`; with `checkpoint_dir`, persist it as the run's checkpoint `name`."""


class TrainWorker:
    def rank_world(self) -> tuple[int, int]:
        import ray.train  # Ray: which rank of how many this worker is

        ctx = ray.train.get_context()
        return ctx.get_world_rank(), ctx.get_world_size()

    def handed(self) -> Any:
        import ray.train

        return ray.train.get_checkpoint()

    def report(self, metrics: dict[str, float], checkpoint_dir: str | None, name: str) -> None:
        import ray.train  # Ray: metrics (and the checkpoint) to the controller

        if checkpoint_dir is None:
            ray.train.report(metrics)
        else:
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(checkpoint_dir),
                checkpoint_dir_name=name,
            )


class TuneTrial:
    def __init__(self, run_uri: str, s3_endpoint: str | None = None, *, hand: bool = False):
        """`hand`: each checkpoint is also reported to Tune as a checkpoint (Tune keeps a copy
        in the trial's folder): what PBT exploits through, and restores a paused trial from."""
        self.run_uri, self.s3_endpoint, self.hand = run_uri, s3_endpoint, hand

    def rank_world(self) -> tuple[int, int]:
        return 0, 1

    def handed(self) -> Any:
        return None  # a trial Tune restarts resumes from its run directory (selection.resume)

    def report(self, metrics: dict[str, float], checkpoint_dir: str | None, name: str) -> None:
        import ray.tune  # Ray: the trial's result to Tune's scheduler

        handed = None
        if checkpoint_dir is not None:
            if self.hand:
                handed = ray.tune.Checkpoint.from_directory(checkpoint_dir)
            where = copy_checkpoint(
                self.run_uri,
                name,
                checkpoint_dir,
                prefix="checkpoint_",
                keep=KEEP,
                s3_endpoint=self.s3_endpoint,
            )
            metrics = {**metrics, CHECKPOINT_PATH: where}
        ray.tune.report(metrics, checkpoint=handed)
