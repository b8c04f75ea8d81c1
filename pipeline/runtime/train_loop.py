"""SHELL: the per-worker loop of the Ray Train `TorchTrainer`; the only place ray.train meets
`pipeline.meta`. No math here: each step is one `outer.train_step` with an all-reduce.

Every rank builds the same initial state from the seed (or the same checkpoint), takes its
slice of each step's global meta-batch from the episode actors, and applies the mean of all
ranks' gradients, so all ranks hold identical parameters and the run's trajectory does not
depend on the number of workers. Rank 0 writes checkpoints and owns the tracker.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from pipeline import checkpoint as ckpt
from pipeline import config
from pipeline.data import episodes as ep
from pipeline.meta import outer
from pipeline.runtime import console
from pipeline.runtime.collective import mean_all_reduce, mean_metrics

FAULT_ENV = "METARAY_FAULT_KILL"  # "step:rank:marker": SIGKILL that rank once (tests)


def _threads(cluster: config.ClusterConfig) -> int:
    return cluster.threads_per_worker or max(1, int(cluster.cpus_per_worker))


def _device(cluster: config.ClusterConfig) -> torch.device:
    if cluster.use_gpu:
        from ray.train.torch import get_device

        return get_device()
    return torch.device("cpu")


def _to(state: outer.MetaState, device: torch.device) -> outer.MetaState:
    def move(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in d.items()}

    return outer.MetaState(move(state.params), move(state.lrs), move(state.opt), state.step)


def _restore(state: outer.MetaState) -> tuple[outer.MetaState, list[dict[str, float]], bool]:
    """State and loss history from `ray.train.get_checkpoint()` (resume), else as given."""
    import ray.train

    found = ray.train.get_checkpoint()
    if found is None:
        return state, [], False
    with found.as_directory() as d:
        loaded = ckpt.load(d)
    ckpt.restore_rng(loaded.rng)
    return loaded.state, [h for h in loaded.history if h["step"] <= loaded.state.step], True


def _maybe_fault(step: int, rank: int) -> None:
    """Fault injection for the resume tests: kill this worker process once, mid-run."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    at, who, marker = spec.split(":", 2)
    if step == int(at) and rank == int(who) and not Path(marker).exists():
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)


def _report(
    metrics: dict[str, float],
    state: outer.MetaState,
    cfg_tree: dict,
    history: list,
    *,
    with_checkpoint: bool,
    tracker: Any = None,
) -> None:
    """`ray.train.report`; with a checkpoint on rank 0. `tracker` (the final report only) also
    gets the checkpoint as an MLflow artifact: it copies the directory before it is deleted."""
    import ray.train

    if not with_checkpoint:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="metaray-ckpt-") as d:
        ckpt.save(d, state, config=cfg_tree, history=history)
        if tracker is not None:
            from pipeline.tracking import redact_tree

            with tempfile.TemporaryDirectory(prefix="metaray-ckpt-mlflow-") as shared:
                # MLflow gets the same checkpoint with its config's credentials redacted
                ckpt.save(shared, state, config=redact_tree(cfg_tree), history=history)
                tracker.log_artifact(shared, "checkpoint")
        ray.train.report(
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(d),
            checkpoint_dir_name=f"checkpoint_{int(metrics['step']):06d}",  # named by its step
        )


def train_loop_per_worker(raw: dict[str, Any]) -> None:
    """`raw`: `{"config": config.to_dict(cfg), "episode_actors": [handles]}` (the actors are
    optional: without them this rank starts a private pool) or the config dict alone."""
    import ray.train

    from pipeline.models import build_model
    from pipeline.runtime.episode_actors import EpisodePool

    console.quiet()
    cfg_tree = raw.get("config", raw)
    cfg = config.from_dict(cfg_tree, "train_loop_config")
    episode = cfg.data.episode
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(_threads(cfg.cluster))
    device = _device(cfg.cluster)

    model = build_model(cfg.model, cfg.data).to(device)
    buffers = dict(model.named_buffers()) or None
    state = outer.init_state(model, cfg.inner, cfg.outer, seed=cfg.outer.seed)
    state, history, resumed = _restore(state)
    state = _to(state, device)
    start, total = state.step, cfg.outer.steps
    if rank == 0:
        what = f"resumed at step {start}" if resumed else "starting"
        console.say(f"{cfg.checkpoint.run_name}: {what}, {total} steps, {world} worker(s)")

    pool = EpisodePool(cfg.data, cfg.cluster, cfg.outer, actors=raw.get("episode_actors"))
    tracker = _start_tracker(cfg, rank, start, raw.get("tags"))
    val = ep.to_torch(pool.val_batch(rank, world), device) if pool.val_tasks else None
    all_reduce = mean_all_reduce(world)
    eval_steps = sorted({0, 1, cfg.inner.steps})
    stream = pool.stream(rank, world, start, total)
    bank = None
    if cfg.bank.enabled:  # adapted params + descriptors -> the shared memory bank (async)
        from pipeline.bank.trainer_hook import BankHook

        bank = BankHook(cfg, model, pool, rank, world)
    t0, last_t, last_step, metrics = time.perf_counter(), time.perf_counter(), start, {}
    status = "FAILED"
    try:
        for step, batch in stream:
            _maybe_fault(step, rank)
            state, local = outer.train_step(
                state,
                ep.to_torch(batch, device),
                model=model,
                inner_cfg=cfg.inner,
                outer_cfg=cfg.outer,
                buffers=buffers,
                all_reduce=all_reduce,
            )
            if bank is not None:
                bank.after_step(step, state, batch)
            done, last = step + 1, step + 1 == total
            # Rank 0 decides whether a metric-only report is due (ray.train.report blocks
            # when called faster than the controller polls); the flag rides the metrics' mean.
            due = done % cfg.cluster.report_every == 0
            tick = due and rank == 0 and time.perf_counter() - last_t >= cfg.cluster.report_min_s
            metrics = mean_metrics({**local, "_tick": float(tick)}, world)
            timed = metrics.pop("_tick") > 0
            history.append({"step": done, **metrics})
            metrics = {"step": done, "loss": metrics["loss_post"], **metrics}
            validate = val is not None and (done % cfg.outer.val_every == 0 or last)
            if validate:
                curve = mean_metrics(
                    {
                        str(k): v
                        for k, v in outer.evaluate(
                            state,
                            val,
                            model=model,
                            inner_cfg=cfg.inner,
                            steps=eval_steps,
                            buffers=buffers,
                            chunk=cfg.outer.chunk,
                        ).items()
                    },
                    world,
                )
                metrics["val_loss_pre"] = curve["0"]
                metrics["val_loss_post"] = curve[str(cfg.inner.steps)]
                history[-1].update(val_loss_pre=curve["0"], val_loss_post=metrics["val_loss_post"])
                tracker.log_inner_curve(
                    {int(k): console.to_unit(v, episode) for k, v in curve.items()},
                    done,
                    unit=console.loss_unit(episode),
                )
            save = done % cfg.checkpoint.every == 0 or last
            tracker.log_metrics(
                console.display_metrics({"loss_post": metrics["loss"]}, episode), done
            )
            if save or validate or last or timed:
                now = time.perf_counter()
                episodes = (done - last_step) * cfg.outer.meta_batch
                metrics["episodes_per_s"] = episodes / max(now - last_t, 1e-9)
                metrics["data_wait_frac"] = stream.wait_s / max(now - t0, 1e-9)
                metrics["train_s"] = now - t0  # this attempt's loop time, start-up excluded
                metrics["peak_rss_mb"] = _peak_rss_mb()  # this rank's process
                last_t, last_step = now, done
                logged = {k: v for k, v in metrics.items() if k not in ("loss", "loss_post")}
                tracker.log_metrics(console.display_metrics(logged, episode), done)
                if rank == 0:  # the driver draws it (console.follow_workers)
                    console.emit(console.step_event(metrics, total, start, episode))
                _report(
                    metrics,
                    state,
                    cfg_tree,
                    history,
                    with_checkpoint=save and rank == 0,
                    tracker=tracker if last else None,
                )
        if start >= total:  # nothing left to train: report the finished run's last metrics
            metrics = {"step": start, **(history[-1] if history else {})}
            ray.train.report(metrics)
        elif rank == 0:
            tracker.log_model(
                {f"params.{k}": v.cpu() for k, v in state.params.items()},
                config.to_dict(cfg),
                lrs={k: v.cpu() for k, v in state.lrs.items()},
                step=total,
            )
        status = "FINISHED"
    finally:
        if bank is not None:
            tracker.log_metrics({f"bank/{k}": float(v) for k, v in bank.close().items()}, total)
        tracker.end(status)


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _start_tracker(cfg: config.RunConfig, rank: int, start: int, tags: Any = None) -> Any:
    """Rank 0's tracker (`pipeline.tracking.make_tracker`); a no-op on other ranks. `tags`:
    what the driver knows of the run (command line, git commit, config file)."""
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
    from pipeline.data.shards import open_shard_set

    shards = open_shard_set(cfg.data.uri, s3_endpoint=cfg.data.s3_endpoint)
    m = shards.manifest
    tracker.log_dataset(dataset_input(m.to_json(), cfg.data.uri, m.family, m.summary()))
    safe = redact_tree(config.to_dict(cfg))  # credentials never reach MLflow
    tracker.log_text(yaml.safe_dump(safe, sort_keys=False), "config.yaml")
    if cfg.bank.enabled and cfg.bank.snapshot_uri:  # where this run's adapted tasks are kept
        bank = safe["bank"]
        tracker.set_tags({"bank.snapshot_uri": bank["snapshot_uri"], "bank.name": bank["name"]})
    return tracker
