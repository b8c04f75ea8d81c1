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
import sys
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
from pipeline.runtime import selection
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
    extra: dict | None = None,
) -> None:
    """`ray.train.report`; with a checkpoint on rank 0. `tracker` (the final report only) also
    gets the checkpoint as an MLflow artifact: it copies the directory before it is deleted."""
    import ray.train

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


def train_loop_per_worker(raw: dict[str, Any]) -> None:
    """`raw`: `{"config": config.to_dict(cfg), "episode_actors": [handles]}` (the actors are
    optional: without them this rank starts a private pool) or the config dict alone."""
    import ray.train

    from pipeline.models import build_model
    from pipeline.runtime.episode_actors import EpisodePool

    cfg_tree = raw.get("config", raw)
    cfg = config.from_dict(cfg_tree, "train_loop_config")
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(_threads(cfg.cluster))
    device = _device(cfg.cluster)

    model = build_model(cfg.model, cfg.data).to(device)
    buffers = dict(model.named_buffers()) or None
    state = outer.init_state(model, cfg.inner, cfg.outer, seed=cfg.outer.seed)
    state, history, resumed, note, extra = selection.restore(cfg, state)
    best = selection.BestVal.from_extra(extra)
    state = _to(state, device)
    start, total = state.step, cfg.outer.steps
    end = start if best.stopped_early else total  # a run that stopped early stays stopped
    if rank == 0:
        what = f"resumed at step {start}" if resumed else "starting"
        _say(f"{cfg.checkpoint.run_name}: {what}, {total} steps, {world} worker(s)")
        if note:
            _say(note)

    pool = EpisodePool(cfg.data, cfg.cluster, cfg.outer, actors=raw.get("episode_actors"))
    tracker = _start_tracker(cfg, rank, start)
    val = ep.to_torch(pool.val_batch(rank, world), device) if pool.val_tasks else None
    all_reduce = mean_all_reduce(world)
    eval_steps = sorted({0, 1, cfg.inner.steps})
    stream = pool.stream(rank, world, start, end)
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
            done, last = step + 1, step + 1 == end
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
                new_best = best.update(
                    metrics["val_loss_post"], done, cfg.outer.early_stop_patience
                )
                if new_best and rank == 0:
                    best.save(cfg, state, cfg_tree, history)
                if best.stopped_early:
                    last = True
                    metrics["stopped_early"] = 1.0
                tracker.log_inner_curve({int(k): v for k, v in curve.items()}, done)
            save = done % cfg.checkpoint.every == 0 or last
            tracker.log_metrics({"loss": metrics["loss"]}, done)
            if save or validate or last or timed:
                now = time.perf_counter()
                episodes = (done - last_step) * cfg.outer.meta_batch
                metrics["episodes_per_s"] = episodes / max(now - last_t, 1e-9)
                metrics["data_wait_frac"] = stream.wait_s / max(now - t0, 1e-9)
                metrics["train_s"] = now - t0  # this attempt's loop time, start-up excluded
                metrics["peak_rss_mb"] = _peak_rss_mb()  # this rank's process
                last_t, last_step = now, done
                logged = {k: v for k, v in metrics.items() if k not in ("step", "loss")}
                tracker.log_metrics(logged, done)  # `loss` went out above, every step
                if rank == 0 and (validate or last or done % max(1, total // 20) == 0):
                    _say(_line(metrics, total))
                _report(
                    metrics,
                    state,
                    cfg_tree,
                    history,
                    with_checkpoint=save and rank == 0,
                    tracker=tracker if last else None,
                    extra=best.to_extra(),
                )
            if best.stopped_early:
                if rank == 0:
                    _say(
                        f"stopped early at step {done}: no new best val_loss_post in "
                        f"{best.since} validations (best {best.loss:.4f} at step {best.step})"
                    )
                break
        if start >= end:  # nothing left to train: report the finished run's last metrics
            metrics = {"step": start, **(history[-1] if history else {})}
            metrics.update({"stopped_early": 1.0} if best.stopped_early else {})
            ray.train.report(metrics)
        elif rank == 0:
            params, which = selection.final_params(cfg, state, best)
            _say(which)
            tracker.log_model(
                {f"params.{k}": v.cpu() for k, v in params.items()}, config.to_dict(cfg)
            )
        status = "FINISHED"
    finally:
        if bank is not None:
            tracker.log_metrics({f"bank_{k}": float(v) for k, v in bank.close().items()}, total)
        tracker.end(status)


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _say(line: str) -> None:
    # Not print(): Ray Train patches print in workers and the line would show up twice.
    sys.stdout.write(f"[metaray] {line}\n")
    sys.stdout.flush()


def _line(m: dict[str, float], total: int) -> str:
    parts = [f"step {int(m['step'])}/{total}"]
    for k in ("loss_pre", "loss_post", "val_loss_pre", "val_loss_post"):
        if k in m:
            parts.append(f"{k}={m[k]:.4f}")
    parts.append(f"episodes/s={m.get('episodes_per_s', 0):.1f}")
    parts.append(f"data_wait={100 * m.get('data_wait_frac', 0):.1f}%")
    return " ".join(parts)


def _start_tracker(cfg: config.RunConfig, rank: int, start: int) -> Any:
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
