"""SHELL: Ray Tune sweeps of meta-hyperparameters, each trial a full distributed training run.

A trial is a function (Train V2 in Tune): it applies its sampled values to the sweep's base
config, builds the run's `TorchTrainer` with `launch.build_trainer` and a
`ray.train.RunConfig` carrying `TuneReportCallback`, and fits (with `scheduler=pbt`, through
`tune_pbt`, which hands Tune the checkpoints PBT exploits through). The sweep's MLflow parent run
is created here on the driver; each trial's rank 0 creates a child run under it
(`tracking.parent_run_id`). Concurrency is sized from the cluster so that a trial's driver
CPU plus its workers' CPUs fit: a sweep on 2 CPUs runs without deadlock, one on a GPU
cluster fills it. Rerunning the same sweep (same `tune.storage` + `tune.name`) resumes it
with `Tuner.restore`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from pipeline import config
from pipeline.config import ConfigError, RunConfig
from pipeline.runtime import tune_state
from pipeline.runtime.tune_config import SweepConfig, apply_overrides
from pipeline.runtime.tune_report import SweepResult, summarize, write_best

REUSE_WAIT_S = "120"  # how long a reused trial process may take to end the previous trial
STATE_FILE = "metaray_sweep.json"  # beside Tune's state: the MLflow parent run id, for resume


def search_space(space: dict[str, dict[str, list[Any]]]) -> dict[str, Any]:
    from ray import tune

    make = {
        "loguniform": lambda a: tune.loguniform(*a),
        "uniform": lambda a: tune.uniform(*a),
        "randint": lambda a: tune.randint(*a),
        "choice": tune.choice,
        "grid": tune.grid_search,
    }
    return {key: make[kind](args) for key, d in space.items() for kind, args in d.items()}


def trial_resources(base: RunConfig, sweep: SweepConfig) -> dict[str, float]:
    """What one trial holds: its driver, its workers, its episode actors (none with
    `cluster.episode_actors=0`; by default they hold no CPU: `cluster.episode_actor_cpus`)."""
    c = base.cluster
    cpu = sweep.driver_cpus + c.num_workers * c.cpus_per_worker
    cpu += c.episode_actors * c.episode_actor_cpus
    return {"CPU": cpu, "GPU": float(c.num_workers if c.use_gpu else 0)}


def in_trial(base: RunConfig, sweep: SweepConfig) -> bool:
    """Whether each trial trains in its own process (`tune.trial_runs`); an explicit
    `in_trial` the sweep cannot run that way is an error naming what stands in the way."""
    c = base.cluster
    against = [
        why
        for bad, why in (
            (c.num_workers != 1, f"cluster.num_workers={c.num_workers} (needs 1)"),
            (c.use_gpu, "cluster.use_gpu=true (needs false)"),
            (c.episode_actors != 0, f"cluster.episode_actors={c.episode_actors} (needs 0)"),
            (any(k.startswith("cluster.") for k in sweep.space), "a cluster.* key in tune.space"),
        )
        if bad
    ]
    if sweep.trial_runs == "in_trial" and against:
        raise ConfigError(
            f"tune.trial_runs=in_trial: a trial cannot train in its own process with "
            f"{'; '.join(against)}: change those, or set tune.trial_runs=train"
        )
    return sweep.trial_runs != "train" and not against


def concurrency(base: RunConfig, sweep: SweepConfig, cluster: dict[str, float]) -> int:
    """Trials that fit side by side; an error (not a hang) when not even one fits."""
    need = trial_resources(base, sweep)
    fits = min(math.floor(cluster.get(k, 0.0) / v + 1e-9) for k, v in need.items() if v > 0)
    if fits < 1:
        c = base.cluster
        raise ConfigError(
            f"one trial needs {need['CPU']:g} CPU(s) (tune.driver_cpus={sweep.driver_cpus:g} + "
            f"cluster.num_workers={c.num_workers} x cluster.cpus_per_worker={c.cpus_per_worker:g}"
            f" + cluster.episode_actors={c.episode_actors} x cluster.episode_actor_cpus="
            f"{c.episode_actor_cpus:g}) and {need['GPU']:g} GPU(s), but the cluster has "
            f"{cluster.get('CPU', 0):g} CPU(s) and {cluster.get('GPU', 0):g} GPU(s): lower "
            "cluster.cpus_per_worker (fractions are fine) or tune.driver_cpus, or fewer workers"
        )
    return min(fits, sweep.max_concurrent_trials or fits)


def trial_config(
    base_tree: dict[str, Any],
    values: dict[str, Any],
    *,
    trial_id: str,
    sweep_dir: str,
    parent_run_id: str | None,
) -> RunConfig:
    """The run config of one trial: sampled values + its own checkpoint dir + MLflow parent."""
    plain = {k: v.item() if hasattr(v, "item") else v for k, v in values.items()}
    tree = apply_overrides(base_tree, plain)
    name = tree["checkpoint"]["run_name"]
    tree["checkpoint"]["run_name"] = f"{name}-{trial_id}"
    tree["checkpoint"]["storage"] = f"{sweep_dir}/trials"
    tree["tracking"]["parent_run_id"] = parent_run_id
    return config.from_dict(tree, f"trial {trial_id}")


def _trial(
    values: dict[str, Any],
    *,
    base_tree: dict[str, Any],
    sweep_dir: str,
    parent_run_id: str | None,
    with_checkpoints: bool = False,
    own_process: bool = False,
) -> None:
    """The Tune trainable: one full training run, reporting to Tune through the callback
    (metrics and the checkpoint's path), or with `with_checkpoints` (PBT, which exploits
    through Tune's checkpoints) reporting each checkpoint to Tune as a checkpoint, or with
    `own_process` (`in_trial`) trained right here, reporting the same results to Tune."""
    import ray.tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from pipeline.runtime.launch import build_trainer, make_run_config, release

    trial_id = ray.tune.get_context().get_trial_id()
    cfg = trial_config(
        base_tree, values, trial_id=trial_id, sweep_dir=sweep_dir, parent_run_id=parent_run_id
    )
    if own_process:
        from pipeline.runtime.launch import loop_config
        from pipeline.runtime.train_loop import run_in_trial

        # Tune hands this process to the next trial once this one's thread has ended, and
        # errors that trial when it waits longer than this (2 s by default): a trial the
        # scheduler stopped still ends its MLflow run and draws its plots, which takes longer
        os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", REUSE_WAIT_S)
        if with_checkpoints:  # PBT: continue from the checkpoint Tune handed (a donor's)
            from pipeline.runtime.tune_pbt import from_handed

            cfg = from_handed(cfg, ray.tune.get_checkpoint())
        run_in_trial(loop_config(cfg, actors=[])[1], hand_checkpoints=with_checkpoints)
        return
    if not with_checkpoints:
        run_config = dataclasses.replace(make_run_config(cfg), callbacks=[TuneReportCallback()])
        trainer = build_trainer(cfg, run_config=run_config)
        try:
            trainer.fit()
        finally:  # the trial's episode actors would outlive it when Tune reuses the process
            release(trainer)
        return
    from pipeline.runtime.tune_pbt import fit_reporting_checkpoints, from_handed

    cfg = from_handed(cfg, ray.tune.get_checkpoint())
    fit_reporting_checkpoints(cfg)


def _scheduler(base: RunConfig, sweep: SweepConfig) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if sweep.scheduler == "asha":
        a = sweep.asha
        return ASHAScheduler(
            # one past the last step: at max_t ASHA stops a trial, which would kill it
            # before rank 0 logs the final model and closes its MLflow run
            time_attr=a.time_attr,
            max_t=a.max_t or base.outer.steps + 1,
            grace_period=a.grace_period,
            reduction_factor=a.reduction_factor,
        )
    if sweep.scheduler == "pbt":
        # The outer lr only: perturbing the inner lr mid-run changes the objective itself.
        lr = search_space({"outer.lr": sweep.space["outer.lr"]})["outer.lr"]
        from pipeline.runtime.tune_pbt import SynchSafePBT

        return SynchSafePBT(
            time_attr=sweep.pbt.time_attr,
            perturbation_interval=sweep.pbt.perturbation_interval,
            quantile_fraction=sweep.pbt.quantile_fraction,
            synch=sweep.pbt.synch,
            hyperparam_mutations={"outer.lr": lr},
            require_attrs=False,  # step reports carry no validation metric: not an error
        )
    return FIFOScheduler()


def _search(sweep: SweepConfig) -> Any:
    if sweep.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return OptunaSearch(seed=sweep.seed)
    return None  # Tune's random/grid variant generator


def _storage(sweep: SweepConfig) -> str:
    return sweep.storage if "://" in sweep.storage else str(Path(sweep.storage).resolve())


def _parent_run(base: RunConfig, sweep: SweepConfig, state_file: Path | None) -> Any:
    """The sweep's MLflow parent run (reattached when a sweep with local state resumes)."""
    from pipeline.tracking import make_tracker

    known = json.loads(state_file.read_text()) if state_file and state_file.is_file() else {}
    tracker = make_tracker(base.tracking)
    params = {
        **config.flat_params(base),
        **{f"tune.{k}": v for k, v in sweep.model_dump(exclude={"space"}).items()},
        **{f"tune.space.{k}": json.dumps(v) for k, v in sweep.space.items()},
    }
    tracker.start(
        sweep.name, params, tags={"metaray.kind": "sweep"}, run_id=known.get("parent_run_id")
    )
    if state_file and tracker.run_id and not known:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps({"parent_run_id": tracker.run_id}))
    return tracker


def run_sweep(
    base: RunConfig, sweep: SweepConfig, *, best_out: str | None = None, quiet: bool = False
) -> SweepResult:
    """Run (or resume) the sweep; print the trial table; write the best config as YAML."""
    import ray
    from ray import tune

    from pipeline.runtime.checks import preflight
    from pipeline.runtime.launch import absolute, connect
    from pipeline.tracking import pin_uri

    # Validation reports carry the metric, step reports do not: ASHA skips results without it.
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")
    base = pin_uri(absolute(base))
    preflight(base)
    storage = _storage(sweep)
    sweep_dir = f"{storage}/{sweep.name}"
    resume = tune.Tuner.can_restore(sweep_dir)
    if resume:  # before anything is unpickled: metaray must have written this state
        tune_state.verify(sweep_dir)
    started = connect(base)
    try:
        limit = concurrency(base, sweep, ray.cluster_resources())
        local_state = Path(sweep_dir + "-" + STATE_FILE) if "://" not in storage else None
        parent = _parent_run(base, sweep, local_state)
        parent_id = parent.run_id
        trainable = _trainable(base, sweep, sweep_dir, parent_id)
        tuner = _tuner(base, sweep, trainable, sweep_dir, storage, limit, quiet=quiet)
        try:
            grid = tuner.fit()
        except BaseException:
            parent.end("FAILED")  # an interrupted sweep: Tune state kept, rerun resumes
            raise
        finally:  # whatever Tune left is what the next run may resume
            _sign(sweep_dir)
        result = summarize(grid, base, sweep)
        out = best_out or (
            f"{sweep_dir}/best_config.yaml"
            if "://" not in storage
            else f"best_config-{sweep.name}.yaml"
        )
        if result.best is not None:
            best_cfg = _best_config(base, sweep, result, sweep_dir)
            result.best_config_path = write_best(best_cfg, out, sweep, result.best)
        result.experiment_path, result.parent_run_id = sweep_dir, parent_id
        result.concurrency = limit
        _finish_parent(parent, base, result)
        if not quiet:
            print(result.report(sweep))
        return result
    finally:
        if started:
            ray.shutdown()


def _trainable(base: RunConfig, sweep: SweepConfig, sweep_dir: str, parent_id: str) -> Any:
    """`_trial` with the sweep's fixed arguments and each trial's driver CPUs (a trial that
    trains in its own process holds its whole share: `trial_resources`)."""
    from ray import tune

    own = in_trial(base, sweep)
    fixed = tune.with_parameters(
        _trial,
        base_tree=config.to_dict(base),
        sweep_dir=sweep_dir,
        parent_run_id=parent_id,
        with_checkpoints=sweep.scheduler == "pbt",
        own_process=own,
    )
    need = trial_resources(base, sweep) if own else {"CPU": sweep.driver_cpus}
    return tune.with_resources(fixed, {k: v for k, v in need.items() if v})


def _sign(sweep_dir: str) -> None:
    """Record the digests of Tune's state; a failure here must not hide the sweep's own."""
    try:
        tune_state.sign(sweep_dir)
    except Exception as exc:
        print(
            f"[metaray] could not record the digests of {sweep_dir} ({exc}): a rerun will "
            "refuse to resume this sweep",
            file=sys.stderr,
        )


def _tuner(
    base: RunConfig,
    sweep: SweepConfig,
    trainable: Any,
    sweep_dir: str,
    storage: str,
    limit: int,
    *,
    quiet: bool,
) -> Any:
    """The Tuner: restored from `sweep_dir` when it holds one (resume), else a new one."""
    from ray import tune

    if tune.Tuner.can_restore(sweep_dir):
        tune_state.verify(sweep_dir)  # nothing is unpickled that metaray did not write
        if not quiet:
            print(f"[metaray] resuming sweep {sweep.name!r} from {sweep_dir}")
        return tune.Tuner.restore(sweep_dir, trainable=trainable, resume_errored=True)
    return tune.Tuner(
        trainable,
        param_space=search_space(sweep.space),
        tune_config=tune.TuneConfig(
            metric=sweep.metric,
            mode=sweep.mode,
            num_samples=sweep.num_samples,
            scheduler=_scheduler(base, sweep),
            search_alg=_search(sweep),
            max_concurrent_trials=limit,
            # in_trial: the next trial reuses a finished one's process (torch imported once)
            reuse_actors=in_trial(base, sweep),
        ),
        # Tune keeps every checkpoint a PBT trial hands it (tune_pbt): an exploit may restore
        # one its donor has since superseded, so none may be deleted under it
        run_config=tune.RunConfig(name=sweep.name, storage_path=storage, verbose=0),
    )


def _best_config(base: RunConfig, sweep: SweepConfig, result: SweepResult, sweep_dir: str) -> Any:
    """The best trial's config, named `<sweep>-best` (a run of its own, not a trial)."""
    best_cfg = trial_config(
        config.to_dict(base),
        result.best.values,
        trial_id="best",
        sweep_dir=sweep_dir,
        parent_run_id=None,
    )
    best_cfg = best_cfg.model_copy(
        update={"checkpoint": base.checkpoint.model_copy(update={"run_name": f"{sweep.name}-best"})}
    )
    from pipeline.tracking import redact_tree  # a file people share: no credentials

    return config.from_dict(redact_tree(config.to_dict(best_cfg)), "best config")


def _finish_parent(parent: Any, base: RunConfig, result: SweepResult) -> None:
    from pipeline.tracking import close_children

    children = close_children(
        base.tracking, parent.run_id, {r.run_name: r.state for r in result.rows}
    )
    parent.log_text(result.table, "trials.txt")
    if result.best is not None:
        b = result.best
        parent.log_metrics({f"best_{result.metric}": b.best, "trials": len(result.rows)}, 0)
        tags = {
            "best_trial": b.trial_id,
            "best_run_name": b.run_name,
            "best_checkpoint": b.checkpoint or "",
        }
        if b.run_name in children:
            tags["best_child_run_id"] = children[b.run_name]
        parent.set_tags(tags)
        parent.log_text(Path(result.best_config_path).read_text(), "best_config.yaml")
    if result.interrupted:  # KILLED until a rerun resumes (and reattaches to) it
        parent.set_tags({"tune.interrupted": "true"})
        parent.end("KILLED")
    else:
        parent.set_tags({"tune.interrupted": "false"})
        parent.end("FINISHED" if result.best is not None else "FAILED")
