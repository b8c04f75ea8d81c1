"""SHELL: build the `TorchTrainer` of a run and launch it (embedded Ray, a cluster, or a job).

`build_trainer` is shared by `metaray train`, `jobs/train.py` and each Tune trial; it starts
the run's episode actors (owned by the calling process, so they end with it) and hands their
handles to the workers; with `cluster.episode_actors=0` it starts none and the workers build
their episodes themselves. `run_training` connects to Ray, fits, prints a summary, and turns a
worker's metaray error (corrupt shard, bad episode) back into that error, without the
Ray traceback around it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline import config
from pipeline.errors import MetarayError
from pipeline.runtime import checks, node_wait


@dataclass
class TrainingResult:
    steps: int
    metrics: dict[str, Any]
    checkpoint: str | None  # path (or URI) of the last checkpoint
    history: list[dict[str, float]] = field(default_factory=list)  # per-step losses
    seconds: float = 0.0  # wall time of fit(), worker start-up included
    result: Any = None  # the ray.train.Result
    tracking_run: dict[str, str] = field(default_factory=dict)  # run_id, experiment_id
    model: str = ""  # which checkpoint is the run's model (checkpoint.select), and where
    stopped_early: bool = False
    spilled: list[str] = field(default_factory=list)  # unsent tracking buffers (replay them)


def _local(uri: str) -> bool:
    return "://" not in uri


def absolute(cfg: config.RunConfig) -> config.RunConfig:
    """Local paths made absolute on the driver: workers and jobs run in other directories."""
    data = cfg.data
    if _local(data.uri):
        data = data.model_copy(update={"uri": str(Path(data.uri).resolve())})
    ck = cfg.checkpoint
    paths = {
        key: str(Path(value).resolve())
        for key in ("storage", "init_from", "resume_from")
        if (value := getattr(ck, key)) and _local(value)
    }
    ck = ck.model_copy(update=paths)
    bank = cfg.bank  # the bank actor resolves its snapshots in Ray's working directory
    if bank.snapshot_uri and _local(bank.snapshot_uri):
        bank = bank.model_copy(update={"snapshot_uri": str(Path(bank.snapshot_uri).resolve())})
    return cfg.model_copy(update={"data": data, "checkpoint": ck, "bank": bank})


def make_run_config(cfg: config.RunConfig, *, worker_env: dict[str, str] | None = None) -> Any:
    """`ray.train.RunConfig`: storage + name (the same pair resumes), failure budget."""
    import ray.train

    from pipeline.runtime.loop_host import KEEP

    storage, fs = cfg.checkpoint.storage, None
    if storage.startswith("s3://") and cfg.data.s3_endpoint:
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(endpoint_override=cfg.data.s3_endpoint)
        storage = storage.removeprefix("s3://")
    return ray.train.RunConfig(
        name=cfg.checkpoint.run_name,
        storage_path=storage,
        storage_filesystem=fs,
        failure_config=ray.train.FailureConfig(
            max_failures=cfg.checkpoint.max_failures,
            controller_failure_limit=node_wait.failure_limit(cfg.cluster),  # a bounded wait
        ),
        checkpoint_config=ray.train.CheckpointConfig(num_to_keep=KEEP),  # as in-trial runs
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
    from ray.train.torch import TorchTrainer

    from pipeline.runtime.process_group import LoopbackTorchConfig
    from pipeline.runtime.train_loop import train_loop_per_worker

    fast_report_poll()  # here too: a Tune trial's fit() runs in a trial actor, not the driver
    cfg, loop = loop_config(cfg)
    c = cfg.cluster
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop,
        scaling_config=ScalingConfig(
            num_workers=c.num_workers,
            use_gpu=c.use_gpu,
            resources_per_worker={"CPU": c.cpus_per_worker, **({"GPU": 1} if c.use_gpu else {})},
        ),
        torch_config=LoopbackTorchConfig(backend="nccl" if c.use_gpu else "gloo"),
        run_config=run_config or make_run_config(cfg, worker_env=worker_env),
    )


def loop_config(
    cfg: config.RunConfig, *, actors: list[Any] | None = None
) -> tuple[config.RunConfig, dict[str, Any]]:
    """The run's config with its paths absolute and its tracking URI pinned, and what its
    training loop is given: that config, the episode actors (started here unless `actors`
    is given; none with `cluster.episode_actors=0`) and the driver's command line and git
    commit (MLflow tags). A run directory an interruption left half-written is healed first."""
    from pipeline.runtime.episode_actors import EpisodePool
    from pipeline.tracking import pin_uri
    from pipeline.tracking.describe import source_tags

    cfg = pin_uri(absolute(cfg))
    healed = checks.heal_run_dir(cfg)
    if healed:
        print(healed)
    if actors is None:
        c = cfg.cluster
        actors = EpisodePool(cfg.data, c, cfg.outer).actors if c.episode_actors else []
    return cfg, {"config": config.to_dict(cfg), "episode_actors": actors, "tags": source_tags(cfg)}


def release(trainer: Any) -> None:
    """Stop the episode actors `build_trainer` started for `trainer` (after `fit()`)."""
    import ray

    for actor in (getattr(trainer, "train_loop_config", None) or {}).get("episode_actors", []):
        ray.kill(actor)


REPORT_POLL_S = "0.5"


def fast_report_poll() -> None:
    """Train's controller drains each worker's one-slot report queue when it polls (every
    2 s by default), so a step that reports waits for the poll. Ray Train V2 hands this
    variable from the process that calls `fit()` to its controller and workers
    (ENV_VARS_TO_PROPAGATE, read from that process's environment at `fit()`), so setting it
    in that process covers embedded Ray, `ray job submit`, launcher and KubeRay clusters alike
    without any node's environment: `connect` sets it on the driver, `build_trainer` again in
    whatever process builds the trainer (a Tune trial's fit() runs in its trial actor, a
    worker process of the cluster that never ran `connect`). A value the user set is kept."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", REPORT_POLL_S)


def connect(cfg: config.RunConfig) -> bool:
    """Join `cluster.address` / `RAY_ADDRESS`, else start an embedded local Ray.
    Returns True when this call started Ray (the caller then shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    fast_report_poll()
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    from pipeline.runtime import console

    console.quiet()  # colour codes off when not a terminal, the libraries' chatter off
    if address:
        ray.init(address=address, log_to_driver=True, logging_level=console.RAY_LEVEL)
        return True
    # address="local" never attaches to a `ray start` cluster left running on this machine.
    with loopback_only():
        ray.init(
            address="local",
            log_to_driver=True,
            _node_ip_address="127.0.0.1",
            logging_level=console.RAY_LEVEL,
        )
    return True


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Around `ray.init(address="local", _node_ip_address="127.0.0.1")`: keep the embedded
    single-node Ray on 127.0.0.1.

    Ray binds its GCS, raylet, object manager, every worker's gRPC server and the dashboard
    agent to loopback when the node's IP is 127.0.0.1, but `ray.init` rewrites a loopback
    `_node_ip_address` to the host's routable address (`services.resolve_ip_for_localhost`)
    unless "clusters" are off (`ray_constants.ENABLE_RAY_CLUSTER`, read from
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER when Ray is imported; the processes Ray starts read the
    variable). Single node only, which `address="local"` always is. The dashboard page stays
    on 127.0.0.1 (Ray's default). Both are restored afterwards, for a later `ray.init` of
    this process that joins a real cluster."""
    from ray._private import ray_constants

    env, flag = os.environ.get(_CLUSTERS_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_CLUSTERS_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False  # the driver imported Ray before this call
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = flag
        if env is None:
            os.environ.pop(_CLUSTERS_ENV, None)
        else:
            os.environ[_CLUSTERS_ENV] = env


_CLUSTERS_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


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
    from pipeline.tracking import pin_uri
    from pipeline.tracking.factory import spilled_since

    cfg = pin_uri(absolute(cfg))  # before Ray starts: its workers inherit the credentials
    checks.preflight(cfg)
    started = connect(cfg)
    t0, wall0 = time.perf_counter(), time.time()
    try:
        result, tracking_run = _fit(build_trainer(cfg, worker_env=worker_env), cfg.cluster)
        seconds = time.perf_counter() - t0
        from pipeline.runtime.selection import prune_unregistered

        pruned = prune_unregistered(absolute(cfg), result)
        if pruned and not quiet:
            print(
                f"[metaray] removed {len(pruned)} checkpoint(s) written before an interruption "
                f"that Ray never registered: {', '.join(pruned)}"
            )
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
            model=_model_line(cfg) if where else "",
            stopped_early=bool((result.metrics or {}).get("stopped_early")),
            spilled=[str(p) for p in spilled_since(cfg.tracking, wall0)]
            if cfg.tracking.enabled
            else [],
        )
        out.tracking_run = tracking_run
        if not quiet:
            print(summary(cfg, out))
        return out
    finally:
        if started:
            ray.shutdown()


def _fit(trainer: Any, cluster: config.ClusterConfig) -> tuple[Any, dict[str, str]]:
    """`trainer.fit()` with the workers' output followed (progress drawn on this driver, the
    libraries' noise dropped); a worker's metaray error comes back as itself. Returns the
    result and the tracking run rank 0 announced."""
    import ray.train

    from pipeline.runtime import console

    watch = node_wait.NodeWatch(cluster)
    try:
        with console.follow_workers() as follower, watch:
            result = trainer.fit()
        return result, dict(follower.run) if follower else {}
    except ray.train.TrainingFailedError as exc:
        cause = _metaray_cause(exc)
        if cause is not None:
            raise cause from None
        if node_wait.is_placement_timeout(exc):
            raise node_wait.placement_error(cluster, watch.lost) from None
        raise
    except SystemExit:  # Ray Train's own SIGINT handler ends fit() this way on Ctrl+C
        raise KeyboardInterrupt from None
    finally:
        release(trainer)


def _model_line(cfg: config.RunConfig) -> str:
    from pipeline import checkpoint as ckpt
    from pipeline.runtime.selection import run_uri

    select = cfg.checkpoint.select
    try:
        with ckpt.located(
            run_uri(absolute(cfg)), s3_endpoint=cfg.data.s3_endpoint, select=select
        ) as found:
            return f"{found.why}: {found.uri}"
    except MetarayError as exc:  # the run's result stands; say why no model line
        return f"not found ({exc})"


def summary(cfg: config.RunConfig, r: TrainingResult) -> str:
    from pipeline.runtime.train_summary import summary as text

    return text(cfg, r)
