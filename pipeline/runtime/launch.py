"""SHELL: build the `TorchTrainer` of a run and launch it (embedded Ray, a cluster, or a job).

`build_trainer` is shared by `metaray train`, `jobs/train.py` and each Tune trial; it starts
the run's episode actors (owned by the calling process, so they end with it) and hands their
handles to the workers. `run_training` connects to Ray, fits, prints a summary, and turns a
worker's metaray error (corrupt shard, bad episode) back into that error, without the
Ray traceback around it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import config
from pipeline.errors import MetarayError


@dataclass
class TrainingResult:
    steps: int
    metrics: dict[str, Any]
    checkpoint: str | None  # path (or URI) of the last checkpoint
    history: list[dict[str, float]] = field(default_factory=list)  # per-step losses
    seconds: float = 0.0  # wall time of fit(), worker start-up included
    result: Any = None  # the ray.train.Result
    tracking_run: dict[str, str] = field(default_factory=dict)  # run_id, experiment_id


def _local(uri: str) -> bool:
    return "://" not in uri


def absolute(cfg: config.RunConfig) -> config.RunConfig:
    """Local paths made absolute on the driver: workers and jobs run in other directories."""
    data = cfg.data
    if _local(data.uri):
        data = data.model_copy(update={"uri": str(Path(data.uri).resolve())})
    ck = cfg.checkpoint
    if _local(ck.storage):
        ck = ck.model_copy(update={"storage": str(Path(ck.storage).resolve())})
    return cfg.model_copy(update={"data": data, "checkpoint": ck})


def make_run_config(cfg: config.RunConfig, *, worker_env: dict[str, str] | None = None) -> Any:
    """`ray.train.RunConfig`: storage + name (the same pair resumes), failure budget."""
    import ray.train

    storage, fs = cfg.checkpoint.storage, None
    if storage.startswith("s3://") and cfg.data.s3_endpoint:
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(endpoint_override=cfg.data.s3_endpoint)
        storage = storage.removeprefix("s3://")
    return ray.train.RunConfig(
        name=cfg.checkpoint.run_name,
        storage_path=storage,
        storage_filesystem=fs,
        failure_config=ray.train.FailureConfig(max_failures=cfg.checkpoint.max_failures),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
        worker_runtime_env={"env_vars": dict(worker_env)} if worker_env else None,
        logging_config=ray.train.LoggingConfig(log_level="WARNING"),  # not a line per report
    )


def build_trainer(
    cfg: config.RunConfig,
    *,
    run_config: Any = None,
    worker_env: dict[str, str] | None = None,
) -> Any:
    """The run's `TorchTrainer` (Ray must be initialised). `run_config` overrides the default
    `make_run_config(cfg)` (Tune trials pass theirs, with their callbacks)."""
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from pipeline.runtime.episode_actors import EpisodePool
    from pipeline.runtime.train_loop import train_loop_per_worker
    from pipeline.tracking import pin_uri
    from pipeline.tracking.describe import source_tags

    cfg = pin_uri(absolute(cfg))
    pool = EpisodePool(cfg.data, cfg.cluster, cfg.outer)
    c = cfg.cluster
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.to_dict(cfg),
            "episode_actors": pool.actors,
            "tags": source_tags(cfg),  # the driver's command line and git commit, for MLflow
        },
        scaling_config=ScalingConfig(
            num_workers=c.num_workers,
            use_gpu=c.use_gpu,
            resources_per_worker={"CPU": c.cpus_per_worker, **({"GPU": 1} if c.use_gpu else {})},
        ),
        torch_config=TorchConfig(backend="nccl" if c.use_gpu else "gloo"),
        run_config=run_config or make_run_config(cfg, worker_env=worker_env),
    )


def release(trainer: Any) -> None:
    """Stop the episode actors `build_trainer` started for `trainer` (after `fit()`)."""
    import ray

    for actor in (getattr(trainer, "train_loop_config", None) or {}).get("episode_actors", []):
        ray.kill(actor)


def connect(cfg: config.RunConfig) -> bool:
    """Join `cluster.address` / `RAY_ADDRESS`, else start an embedded local Ray.
    Returns True when this call started Ray (the caller then shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    if not address:
        # Train's controller drains each worker's one-slot report queue when it polls (every
        # 2 s by default): poll faster so that checkpoints/validations never stall a step.
        os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    from pipeline.runtime import console

    console.quiet()
    # address="local" never attaches to a `ray start` cluster left running on this machine.
    ray.init(address=address or "local", log_to_driver=True, logging_level=console.RAY_LEVEL)
    return True


def _metaray_cause(exc: BaseException) -> MetarayError | None:
    """The first metaray error inside a Ray Train failure (worker -> RayTaskError -> cause)."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, MetarayError):
            base = next((t for t in type(e).__mro__ if t.__module__.startswith("pipeline")), None)
            cause = getattr(e, "cause", None)
            if isinstance(cause, MetarayError):
                msg = str(cause)
            else:
                msg = str(e.args[0]) if e.args else str(e)
            return base(msg) if base else e
        todo += [getattr(e, "cause", None), e.__cause__, e.__context__]
        todo += list(getattr(e, "worker_failures", {}).values())
    return None


def run_training(
    cfg: config.RunConfig, *, worker_env: dict[str, str] | None = None, quiet: bool = False
) -> TrainingResult:
    """Train `cfg` on Ray; the same `checkpoint.run_name` + `storage` resumes."""
    import ray
    import ray.train

    from pipeline import checkpoint as ckpt
    from pipeline.runtime import console

    started = connect(cfg)
    t0 = time.perf_counter()
    try:
        trainer = build_trainer(cfg, worker_env=worker_env)
        try:
            with console.follow_workers() as follower:  # progress drawn here, noise dropped
                result = trainer.fit()
        except ray.train.TrainingFailedError as exc:
            cause = _metaray_cause(exc)
            if cause is not None:
                raise cause from None
            raise
        finally:
            release(trainer)
        seconds = time.perf_counter() - t0
        history: list[dict[str, float]] = []
        where = None
        if result.checkpoint is not None:
            where = result.checkpoint.path
            with result.checkpoint.as_directory() as d:
                history = ckpt.load(d).history
        out = TrainingResult(
            steps=int(result.metrics.get("step", 0)) if result.metrics else 0,
            metrics=dict(result.metrics or {}),
            checkpoint=where,
            history=history,
            seconds=seconds,
            result=result,
        )
        out.tracking_run = dict(follower.run) if follower else {}
        if not quiet:
            print(summary(cfg, out))
        return out
    finally:
        if started:
            ray.shutdown()


def summary(cfg: config.RunConfig, r: TrainingResult) -> str:
    from pipeline.runtime.train_summary import summary as text

    return text(cfg, r)
