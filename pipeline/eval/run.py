"""`metaray evaluate` end to end: checkpoint + shard set (+ bank) -> methods -> report -> outputs.

The shell around `pipeline.eval.methods`: reads the checkpoint (local or s3://, safetensors +
JSON), opens the shard sets, trains or reloads the multitask baseline, tunes the baselines'
fine-tuning learning rates on validation tasks, opens the memory bank snapshot in-process,
writes JSON and PNGs, and logs them to MLflow when tracking is on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from pipeline.errors import EpisodeError, MetarayError
from pipeline.eval import bank_eval, baselines
from pipeline.eval import inputs as eval_inputs
from pipeline.eval import methods as ev
from pipeline.eval import report as eval_report
from pipeline.runtime import console
from pipeline.runtime.console import Progress
from pipeline.runtime.heap import reuse_freed_memory

LR_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


@dataclass
class Options:
    checkpoint: str
    shards: str
    bank: str | None = None
    out_dir: str = "eval"
    json_path: str | None = None
    spec: ev.EvalSpec = ev.EvalSpec()
    baseline: str | None = None  # a saved multitask baseline (safetensors) to reuse
    baseline_steps: int | None = None  # default: as many steps as the checkpoint trained
    lr_grid: tuple[float, ...] = LR_GRID
    tune_episodes: int = 3
    max_tasks: int | None = None
    tracking: bool | None = None  # None: as the checkpoint's config says
    s3_endpoint: str | None = None
    device: str = "cpu"
    threads: int | None = None  # torch threads; None: the run's cluster.threads_per_worker
    bank_overrides: tuple[str, ...] = ()  # "bank.key=value": the warm start's, with --bank


def run(opts: Options, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Read the inputs, build the methods, tune the baselines, evaluate, report."""
    inp = eval_inputs.read(opts, log)
    erun = _open_tracking(opts, inp)  # opened now: the MLflow run lasts as evaluation does
    model = _build_model(opts, inp.cfg)
    spec = _spec(opts, inp, log)
    if inp.kind == "lm":
        log(
            "scoring: bits per byte under the support-fitted floor (every method alike; "
            "--no-support-floor for the plain softmax)"
            if spec.support_floor
            else "scoring: bits per byte of the plain softmax (--no-support-floor)"
        )
    methods, n_tuned = _methods(opts, inp, model, spec, log)
    try:
        _tune_baselines(opts, inp, model, methods[:n_tuned], spec, log)
        by_shot = {
            k: _episodes(inp.shards, inp.test_tasks, inp, spec, shot=k, n=spec.episodes)
            for k in spec.shots
        }
    except EpisodeError as exc:
        raise MetarayError(f"{exc} (in `metaray evaluate`: lower --shots or --k-query)") from None
    with Progress("evaluate", len(methods) * len(by_shot), unit="method-shot") as bar:
        raw = ev.evaluate_methods(
            model,
            methods,
            by_shot,
            spec,
            n_way=inp.cfg.data.n_way,
            progress=lambda text: bar.update(bar.done + 1, now=text),
            device=opts.device,
        )
    bank_eval.report_sources(methods, log)
    rep = _build_report(opts, inp, spec, methods, raw)
    _publish(
        opts, inp.cfg, rep, log, erun, bank_eval.descriptor_map(opts, model, methods, by_shot, log)
    )
    return rep


def _build_model(opts: Options, cfg: Any) -> Any:
    from pipeline.models import build_model

    threads = opts.threads or cfg.cluster.threads_per_worker
    if threads:  # the run's per-worker setting: oversubscribed small matmuls run many times slower
        import torch

        torch.set_num_threads(threads)
    reuse_freed_memory(cfg.cluster.malloc_reuse_mb)  # adaptation steps fault no pages afresh
    return build_model(cfg.model, cfg.data).to(opts.device)


def _spec(opts: Options, inp: eval_inputs.Inputs, log: Callable[[str], None]) -> ev.EvalSpec:
    """The evaluation spec with the checkpoint's defaults filled in (k_query, shot counts)."""
    spec = opts.spec
    if not spec.shots or not spec.k_query:
        spec = replace(spec, k_query=spec.k_query or inp.cfg.data.k_query)
        shots = spec.shots or eval_inputs.default_shots(
            inp.cfg, inp.shards, inp.test_tasks, spec, log
        )
        spec = replace(spec, shots=shots)
    return spec


def _methods(
    opts: Options,
    inp: eval_inputs.Inputs,
    model: Any,
    spec: ev.EvalSpec,
    log: Callable[[str], None],
) -> tuple[list[ev.Method], int]:
    """random init, multitask (when trainable), meta-init, bank warm start (with --bank);
    and how many of them, from the front, are fine-tuning baselines whose lr gets tuned."""
    from pipeline.meta.outer import trainable_names

    cfg, state, dev = inp.cfg, inp.state, baselines.to_device
    rand = dev(baselines.random_init(model, cfg, seed=spec.seed + 1), opts.device)
    methods = [ev.Method("random init", rand, cfg.inner.lr, note="fresh seeded init")]
    init_steps, init_outer = eval_inputs.init_run(cfg, log)
    mt, mt_note = _multitask(opts, inp, model, state.step + init_steps, log, init_outer)
    if mt is not None:
        methods.append(ev.Method("multitask", dev(mt, opts.device), cfg.inner.lr, note=mt_note))
    n_tuned = len(methods)
    lrs = state.lrs if isinstance(state.lrs, dict) else float(state.lrs)
    methods.append(
        ev.Method(
            "meta-init",
            dev(state.params, opts.device),
            dev(lrs, opts.device) if isinstance(lrs, dict) else lrs,
            trainable_names(model, cfg.inner),
            max_step_norm=cfg.inner.max_step_norm,
        )
    )
    if opts.bank:
        methods.append(bank_eval.bank_method(opts, cfg, model, methods[-1], log))
    return methods, n_tuned


def _episodes(
    shards, tasks, inp: eval_inputs.Inputs, spec: ev.EvalSpec, *, shot: int, n: int, seed=None
):
    return ev.make_episodes(
        shards.read_task,
        tasks,
        inp.cfg.data,
        shot=shot,
        k_query=spec.k_query,
        n_episodes=n,
        seed=spec.seed if seed is None else seed,
    )


def _tune_baselines(
    opts: Options,
    inp: eval_inputs.Inputs,
    model: Any,
    baselines_: list[ev.Method],
    spec: ev.EvalSpec,
    log: Callable[[str], None],
) -> None:
    """Tune the fine-tuning baselines' learning rate on validation tasks, never on test tasks."""
    kind, n_way = inp.kind, inp.cfg.data.n_way
    # N-way episodes need N validation tasks; lm/regression tune on up to 4 of them.
    tune_tasks = inp.val_tasks if kind == "classify" else inp.val_tasks[:4]
    if kind == "classify" and len(inp.val_tasks) < n_way:
        log(f"{len(inp.val_tasks)} val tasks < n_way={n_way}: baseline lrs untuned")
        tune_tasks = []
    if not tune_tasks:
        log("no usable validation tasks: the baselines keep the run's inner lr (untuned)")
        return
    tune_eps = _episodes(
        inp.val_set,
        tune_tasks,
        inp,
        spec,
        shot=spec.shots[0],
        n=opts.tune_episodes,
        seed=spec.seed + 7,
    )
    for m in baselines_:
        m.lrs, scores = ev.tune_lr(
            model,
            m,
            tune_eps,
            opts.lr_grid,
            spec.steps,
            kind=kind,
            n_way=n_way,
            device=opts.device,
            support_floor=spec.support_floor,
        )
        log(
            f"{m.name}: fine-tuning lr {m.lrs:g} (val {ev.METRIC[kind]}: "
            + ", ".join(f"{k:g}->{v:.3f}" for k, v in scores.items())
            + ")"
        )
        if len(opts.lr_grid) > 1 and m.lrs in (min(opts.lr_grid), max(opts.lr_grid)):
            log(f"  {m.name}: the best lr is at the edge of the grid; widen --lr-grid")


def _build_report(
    opts: Options, inp: eval_inputs.Inputs, spec: ev.EvalSpec, methods: list[ev.Method], raw: dict
) -> dict[str, Any]:
    kind = inp.kind
    return eval_report.build(
        raw,
        kind=kind,
        metric=ev.METRIC[kind],
        higher_is_better=ev.HIGHER_IS_BETTER[kind],
        groups=eval_inputs.script_groups(inp.shards.family, inp.train_tasks, inp.test_tasks),
        info={
            "checkpoint": opts.checkpoint,
            "shards": opts.shards,
            "bank": opts.bank,
            "bank_overrides": list(opts.bank_overrides),
            "checkpoint_step": inp.state.step,
            "algorithm": inp.cfg.inner.algorithm,
            "family": inp.shards.family,
            "test_tasks": inp.test_tasks,
            "k_query": spec.k_query,
            "episodes_per_task": spec.episodes,
            "support_floor": spec.support_floor,
            "lrs": {m.name: m.lrs for m in methods if isinstance(m.lrs, float)},
            "notes": {m.name: m.note for m in methods if m.note},
        },
    )


def _open_tracking(opts: Options, inp: eval_inputs.Inputs) -> Any:
    """The evaluation's MLflow run, nested under its training run, with the shard set it
    evaluates on as its input (None: tracking off; flag, else the run's config)."""
    cfg = inp.cfg
    if not (cfg.tracking.enabled if opts.tracking is None else opts.tracking):
        return None
    from pipeline.tracking.describe import dataset_input
    from pipeline.tracking.evaluation import open_run

    params = {
        "checkpoint": opts.checkpoint,
        "shards": opts.shards,
        "bank": opts.bank,
        "algorithm": cfg.inner.algorithm,
        "episodes": opts.spec.episodes,
        "seed": opts.spec.seed,
        "support_floor": opts.spec.support_floor,
        "max_tasks": opts.max_tasks,
    }
    name = cfg.checkpoint.run_name
    m = inp.shards.manifest
    dataset = dataset_input(m.to_json(), opts.shards, m.family, m.summary())
    return open_run(cfg.tracking, f"evaluate-{name}", name, params, dataset=dataset)


def _publish(
    opts: Options, cfg: Any, rep: dict[str, Any], log: Callable[[str], None], erun: Any, extra=()
) -> None:
    """JSON + PNGs under --out; to the MLflow run opened at the start (`erun`, or None)."""
    eval_report.publish(
        rep,
        opts.out_dir,
        json_path=opts.json_path,
        tracking=erun,
        run_name=f"evaluate-{cfg.checkpoint.run_name}",
        log=log,
        extra_artifacts=extra,
    )


def _multitask(opts, inp, model, ck_steps, log, init_outer=None) -> tuple[Any, str]:
    """The multitask baseline's parameters (None: no training shards) and a note on how they
    were made (eval.json's `notes`: its steps and which one validation chose)."""
    cfg, train_set, train_tasks = inp.cfg, inp.train_set, inp.train_tasks
    if init_outer is not None:  # pretrained then meta-trained: pretrain's optimizer settings
        cfg = cfg.model_copy(update={"outer": init_outer})
    ref = dict(model.named_parameters())
    if opts.baseline and Path(opts.baseline).is_file():
        params, meta = baselines.load_params(opts.baseline)
        if baselines.matches(params, ref):
            log(f"multitask baseline: reusing {opts.baseline} ({meta.get('steps')} steps)")
            return params, _baseline_note(meta, f"reused {opts.baseline}")
        log(f"multitask baseline {opts.baseline} is for another architecture: retraining")
    if not train_tasks:
        log(f"multitask baseline skipped: training shards {cfg.data.uri} not readable here")
        return None, ""
    steps = opts.baseline_steps or max(1, ck_steps)
    val = _validation_batch(inp, cfg)
    unit, episode = console.loss_unit(cfg.data.episode), cfg.data.episode
    log(
        f"multitask baseline: {steps} outer steps on {len(train_tasks)} training tasks"
        + (", its best on validation kept" if val is not None else "")
        + (
            " (scored under the support-fitted floor, as the run's outer.val_support_floor)"
            if val is not None and episode == "lm" and cfg.outer.val_support_floor
            else ""
        )
    )
    chosen: dict[str, int] = {}
    with Progress("multitask baseline", steps) as bar:
        params = baselines.pretrain_multitask(
            model,
            cfg,
            train_set.read_task,
            train_tasks,
            steps=steps,
            seed=opts.spec.seed + 3,
            progress=lambda s, m: bar.update(
                s, **{f"loss_{unit}": console.to_unit(m["loss_post"], episode)}
            ),
            val_batch=val,
            on_best=lambda step, score: chosen.update(best_step=step),
        )
    path = opts.baseline or str(Path(opts.out_dir) / "baseline.safetensors")
    selected = "best_val" if chosen else "last"  # last: no validation tasks to choose on
    meta = {"steps": steps, "checkpoint": opts.checkpoint, "selected": selected, **chosen}
    baselines.save_params(path, params, meta)
    if chosen:
        log(f"multitask baseline: best on validation at step {chosen['best_step']} of {steps}")
    return params, _baseline_note(meta, "trained")


def _validation_batch(inp, cfg) -> Any:
    """The episodes a training run scores itself on, for the baseline's same best-on-val
    selection (None: no validation tasks, or classification)."""
    if not inp.val_tasks or cfg.data.episode == "classify":
        return None
    from pipeline.data import episodes as ep

    batch = ep.validation_batch(
        inp.val_set.read_task, inp.val_tasks, cfg.data, seed=cfg.outer.seed, n=cfg.outer.val_tasks
    )
    return ep.to_torch(batch)


def _baseline_note(meta: dict[str, Any], how: str) -> str:
    """`trained: 400 outer steps, best on validation at step 250` (a baseline file written
    before the step was recorded says only its steps)."""
    if meta.get("best_step") is not None:
        which = f", best on validation at step {meta['best_step']}"
    else:
        which = ", its last step" if meta.get("selected") == "last" else ""
    return f"{how}: {meta.get('steps')} outer steps{which}"
