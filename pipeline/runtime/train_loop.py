"""SHELL: the per-worker loop of the Ray Train `TorchTrainer`; the only place ray.train meets
`pipeline.meta`. No math here: each step is one `outer.train_step` with an all-reduce.

Every rank builds the same initial state from the seed (or the same checkpoint), takes its
slice of each step's global meta-batch from the episode actors (or builds it in-process when
`cluster.episode_actors=0`: the same batch), and applies the mean of all
ranks' gradients, so all ranks hold identical parameters and the run's trajectory does not
depend on the number of workers. Rank 0 writes checkpoints and owns the tracker.

The loop reads as a recipe: `_setup` -> per step `_train_step`, `_validate`, `_report_step`
-> `_finish` -> `_close`. The Ray touch points are `_device` (ray.train.torch) and the
`LoopHost` (`pipeline.runtime.loop_host`): rank and world, the handed checkpoint, the reports.
A Ray Train worker runs `train_loop_per_worker`; a Tune trial with one CPU rank runs the same
loop in its own process with `run_in_trial` (`tune.trial_runs`).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline import config
from pipeline.data import episodes as ep
from pipeline.meta import outer
from pipeline.runtime import console, heap, selection
from pipeline.runtime import worker_report as wr
from pipeline.runtime.collective import mean_all_reduce, mean_metrics
from pipeline.runtime.loop_host import LoopHost, TrainWorker, TuneTrial

FAULT_ENV = "METARAY_FAULT_KILL"  # "step:rank:marker": SIGKILL that rank once (tests)


@dataclass
class _Clock:
    """Wall-clock marks for the throughput metrics of the next report."""

    t0: float = field(default_factory=time.perf_counter)  # this attempt's loop start
    last_t: float = field(default_factory=time.perf_counter)  # the previous report
    last_step: int = 0


@dataclass
class _Run:
    """What one rank's loop holds from setup to close."""

    cfg: config.RunConfig
    cfg_tree: dict[str, Any]  # the config as the driver sent it (saved in checkpoints)
    host: LoopHost  # a Ray Train worker or a Tune trial: rank, handed checkpoint, reports
    rank: int
    world: int
    device: torch.device
    model: nn.Module
    state: outer.MetaState
    history: list[dict[str, float]]
    start: int
    stream: Any  # EpisodeStream / LocalStream: (step, numpy batch) of this rank's slices
    tracker: Any  # rank 0's tracker, a NullTracker elsewhere
    val: Any  # this rank's share of the fixed validation batch (torch), or None
    all_reduce: Callable[[outer.Params], outer.Params]
    bank: Any  # BankHook when bank.enabled, else None
    clock: _Clock
    best: selection.BestVal  # best validation so far; early stopping
    end: int  # the step this attempt trains to (a run that stopped early stays stopped)

    @property
    def total(self) -> int:
        return self.cfg.outer.steps

    def last(self, done: int) -> bool:
        return done == self.end or self.best.stopped_early


def _threads(cluster: config.ClusterConfig) -> int:
    return cluster.threads_per_worker or max(1, int(cluster.cpus_per_worker))


def _device(cluster: config.ClusterConfig) -> torch.device:
    if cluster.use_gpu:
        from ray.train.torch import get_device  # Ray: this worker's GPU

        return get_device()
    return torch.device("cpu")


def _to(state: outer.MetaState, device: torch.device) -> outer.MetaState:
    def move(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.to(device) for k, v in d.items()}

    return outer.MetaState(move(state.params), move(state.lrs), move(state.opt), state.step)


def _restore(cfg: config.RunConfig, state: outer.MetaState, host: LoopHost) -> selection.Restored:
    """The checkpoint handed over from outside the run, else the newest intact one of the
    run (Ray's, or one Ray never registered), else `checkpoint.resume_from`, else
    `checkpoint.init_from`'s parameters, else `state`."""
    return selection.restore(cfg, state, host.handed())


def _maybe_fault(step: int, rank: int) -> None:
    """Fault injection for the resume tests: kill this worker process once, mid-run."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    at, who, marker = spec.split(":", 2)
    if step == int(at) and rank == int(who) and not Path(marker).exists():
        Path(marker).touch()
        os.kill(os.getpid(), signal.SIGKILL)


def _setup(raw: dict[str, Any], host: LoopHost) -> _Run:
    """Config, rank, model, initial or restored state, episode stream, tracker, bank hook."""
    from pipeline.models import build_model
    from pipeline.runtime.episode_actors import episode_source

    console.quiet()
    cfg_tree = raw.get("config", raw)
    cfg = config.from_dict(cfg_tree, "train_loop_config")
    rank, world = host.rank_world()
    torch.set_num_threads(_threads(cfg.cluster))
    heap.reuse_freed_memory(cfg.cluster.malloc_reuse_mb)  # no page faults per meta-step
    device = _device(cfg.cluster)
    model = build_model(cfg.model, cfg.data).to(device)
    state = outer.init_state(model, cfg.inner, cfg.outer, seed=cfg.outer.seed)
    state, history, resumed, note, extra = _restore(cfg, state, host)
    best = selection.BestVal.from_extra(extra)
    state = _to(state, device)
    start = state.step
    end = start if best.stopped_early else cfg.outer.steps
    if rank == 0:
        what = f"resumed at step {start}" if resumed else "starting"
        wr.say(f"{cfg.checkpoint.run_name}: {what}, {cfg.outer.steps} steps, {world} worker(s)")
        if note:
            wr.say(note)
    pool = episode_source(cfg.data, cfg.cluster, cfg.outer, actors=raw.get("episode_actors"))
    tracker = wr.start_tracker(cfg, rank, start, raw.get("tags"))
    val = ep.to_torch(pool.val_batch(rank, world), device) if pool.val_tasks else None
    all_reduce = mean_all_reduce(world)
    stream = pool.stream(rank, world, start, end)
    bank = None
    if cfg.bank.enabled:  # adapted params + descriptors -> the shared memory bank (async)
        from pipeline.bank.trainer_hook import BankHook

        bank = BankHook(cfg.bank, model)
    return _Run(
        cfg=cfg,
        cfg_tree=cfg_tree,
        host=host,
        rank=rank,
        world=world,
        device=device,
        model=model,
        state=state,
        history=history,
        start=start,
        stream=stream,
        tracker=tracker,
        val=val,
        all_reduce=all_reduce,
        bank=bank,
        clock=_Clock(last_step=start),
        best=best,
        end=end,
    )


def _train_step(run: _Run, step: int, batch: Any) -> tuple[dict[str, float], bool]:
    """One meta-step; -> (metrics averaged over ranks, whether a timed report is due)."""
    _maybe_fault(step, run.rank)
    cfg = run.cfg
    b = ep.to_torch(batch, run.device)
    write = run.bank is not None and run.bank.due(step)
    before = run.state
    run.state, local, *adapted = outer.train_step(
        before,
        b,
        model=run.model,
        inner_cfg=cfg.inner,
        outer_cfg=cfg.outer,
        all_reduce=run.all_reduce,
        return_adapted=write,
    )
    if write:  # the adapted params this step's meta-gradient came from -> the memory bank
        run.bank.after_step(step, before.params, b, adapted[0])
    done = step + 1
    # Rank 0 decides whether a metric-only report is due (ray.train.report blocks when
    # called faster than the controller polls); the flag rides the metrics' mean.
    due = done % cfg.cluster.report_every == 0
    since = time.perf_counter() - run.clock.last_t
    tick = due and run.rank == 0 and since >= cfg.cluster.report_min_s
    metrics = mean_metrics({**local, "_tick": float(tick)}, run.world)
    timed = metrics.pop("_tick") > 0
    run.history.append({"step": done, **metrics})
    return {"step": done, "loss": metrics["loss_post"], **metrics}, timed


def _validate(run: _Run, done: int, metrics: dict[str, float]) -> bool:
    """Query loss after 0, 1 and `inner.steps` steps on the validation batch, when due; a new
    best is saved beside the run's checkpoints (rank 0); patience spent stops the run."""
    last = run.last(done)
    if run.val is None or not (done % run.cfg.outer.val_every == 0 or last):
        return False
    curve = outer.evaluate(
        run.state,
        run.val,
        model=run.model,
        inner_cfg=run.cfg.inner,
        steps=sorted({0, 1, run.cfg.inner.steps}),
        chunk=run.cfg.outer.chunk,
        support_floor=run.cfg.outer.val_support_floor,
    )
    curve = mean_metrics({str(k): v for k, v in curve.items()}, run.world)
    metrics["val_loss_pre"] = curve["0"]
    metrics["val_loss_post"] = curve[str(run.cfg.inner.steps)]
    run.history[-1].update(val_loss_pre=curve["0"], val_loss_post=metrics["val_loss_post"])
    ep_kind = run.cfg.data.episode
    run.tracker.log_inner_curve(
        {int(k): console.to_unit(v, ep_kind) for k, v in curve.items()},
        done,
        unit=console.loss_unit(ep_kind),
    )
    if run.best.update(metrics["val_loss_post"], done, run.cfg.outer.early_stop_patience):
        if run.rank == 0:
            run.best.save(run.cfg, run.state, run.cfg_tree, run.history)
    elif run.best.stopped_early:
        metrics["stopped_early"] = run.history[-1]["stopped_early"] = 1.0
    return True


def _report_step(
    run: _Run, done: int, metrics: dict[str, float], *, validated: bool, timed: bool
) -> None:
    """Log `loss`; on a checkpoint, validation, timed or last step also the throughput
    figures, the console line and `ray.train.report` (with the checkpoint when one is due)."""
    last = run.last(done)
    save = done % run.cfg.checkpoint.every == 0 or last
    episode = run.cfg.data.episode
    run.tracker.log_metrics(console.display_metrics({"loss_post": metrics["loss"]}, episode), done)
    if not (save or validated or last or timed):
        return
    now, clock = time.perf_counter(), run.clock
    episodes = (done - clock.last_step) * run.cfg.outer.meta_batch
    metrics["episodes_per_s"] = episodes / max(now - clock.last_t, 1e-9)
    metrics["data_wait_frac"] = run.stream.wait_s / max(now - clock.t0, 1e-9)
    metrics["train_s"] = now - clock.t0  # this attempt's loop time, start-up excluded
    metrics["peak_rss_mb"] = wr.peak_rss_mb()  # this rank's process
    clock.last_t, clock.last_step = now, done
    logged = {k: v for k, v in metrics.items() if k not in ("loss", "loss_post")}
    run.tracker.log_metrics(console.display_metrics(logged, episode), done)  # loss: above
    if run.rank == 0:  # the driver draws it (console.follow_workers)
        console.emit(console.step_event(metrics, run.total, run.start, episode))
    wr.report(
        run.host,
        metrics,
        run.state,
        run.cfg_tree,
        run.history,
        with_checkpoint=save and run.rank == 0,
        tracker=run.tracker if last else None,
        extra=run.best.to_extra(),
    )
    if run.best.stopped_early and run.rank == 0:
        b = run.best
        wr.say(
            f"stopped early at step {done}: no new best val_loss_post in {b.since} "
            f"validations (outer.early_stop_patience); best {b.loss:.4f} at step {b.step}"
        )


def _finish(run: _Run) -> None:
    """A run with nothing left to train reports its last metrics; else rank 0 logs the model."""
    if run.start >= run.end:
        wr.report_done(run.host, run.start, run.history)
    elif run.rank == 0:  # the run's model: its best on validation (checkpoint.select) or last
        params, which = selection.final_params(run.cfg, run.state, run.best)
        wr.say(which)
        weights = {f"params.{k}": v.cpu() for k, v in params.items()}
        lrs = {k: v.cpu() for k, v in run.state.lrs.items()}
        run.tracker.log_model(weights, config.to_dict(run.cfg), lrs=lrs, step=_model_step(run))


def _model_step(run: _Run) -> int:
    """The outer step the logged model is from: the best validation's when that is kept."""
    best = getattr(run.best, "step", 0)
    return best if run.cfg.checkpoint.select == "best" and best else run.state.step


def _close(run: _Run, status: str) -> None:
    """Flush the bank writer, then end the tracked run with `status`."""
    if run.bank is not None:
        stats = run.bank.close()
        run.tracker.log_metrics({f"bank/{k}": float(v) for k, v in stats.items()}, run.total)
    run.tracker.end(status)


def train_loop_per_worker(raw: dict[str, Any]) -> None:
    """`raw`: `{"config": config.to_dict(cfg), "episode_actors": [handles]}` (the actors are
    optional: without them this rank starts a private pool, or with `cluster.episode_actors=0`
    builds its episodes itself) or the config dict alone."""
    _loop(raw, TrainWorker())


def run_in_trial(raw: dict[str, Any], *, hand_checkpoints: bool = False) -> None:
    """The loop in a Tune trial's own process (`raw` as above; one rank, on the CPU): results
    to `ray.tune.report`, checkpoints into the run directory (`loop_host.TuneTrial`), and
    with `hand_checkpoints` (PBT) into Tune's hands too."""
    cfg = config.from_dict(raw.get("config", raw), "train_loop_config")
    host = TuneTrial(selection.run_uri(cfg), cfg.data.s3_endpoint, hand=hand_checkpoints)
    _loop(raw, host)


def _loop(raw: dict[str, Any], host: LoopHost) -> None:
    run = _setup(raw, host)
    status = "FAILED"
    try:
        for step, batch in run.stream:
            metrics, timed = _train_step(run, step, batch)
            validated = _validate(run, step + 1, metrics)
            _report_step(run, step + 1, metrics, validated=validated, timed=timed)
            if run.best.stopped_early:
                break
        _finish(run)
        status = "FINISHED"
    except SystemExit:  # Tune ends a trial its scheduler stopped this way, in its report call
        status = "KILLED"
        raise
    finally:
        _close(run, status)
