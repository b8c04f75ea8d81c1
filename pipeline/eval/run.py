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
from pipeline.eval import baselines
from pipeline.eval import inputs as eval_inputs
from pipeline.eval import methods as ev
from pipeline.eval import report as eval_report

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


def run(opts: Options, log: Callable[[str], None] = print) -> dict[str, Any]:
    from pipeline import checkpoint as ckpt
    from pipeline import config
    from pipeline.data.shards import open_shard_set
    from pipeline.meta.outer import trainable_names
    from pipeline.models import build_model

    ck_dir = eval_inputs.find_checkpoint(opts.checkpoint, opts.s3_endpoint)
    loaded = ckpt.load(ck_dir)
    cfg = config.from_dict(loaded.config, source=f"{opts.checkpoint} (checkpoint config)")
    kind = cfg.data.episode
    log(f"checkpoint {opts.checkpoint}: step {loaded.state.step}, {cfg.inner.algorithm}, {kind}")
    endpoint = opts.s3_endpoint or cfg.data.s3_endpoint
    shards = open_shard_set(opts.shards, s3_endpoint=endpoint)
    needs = "sinusoid" if kind == "regression" else "wordlang or text"
    if (shards.family == "sinusoid") != (kind == "regression"):
        raise MetarayError(
            f"{opts.shards} is a {shards.family} shard set but the checkpoint was trained for "
            f"{kind} episodes; evaluate it on a {needs} shard set"
        )
    test_tasks = shards.tasks("test")[: opts.max_tasks]
    if not test_tasks:
        raise MetarayError(f"{opts.shards}: no test tasks; build the shard set with a test split")
    # Training tasks (baseline, script groups) are those of the run's own shard set.
    train_set = (
        shards
        if cfg.data.uri in (opts.shards, None)
        else eval_inputs.open_or_none(cfg.data.uri, endpoint)
    )
    train_tasks = train_set.tasks("train") if train_set else []
    val_set, val_tasks = (
        (shards, shards.tasks("val"))
        if shards.tasks("val")
        else (train_set, train_set.tasks("val") if train_set else [])
    )

    threads = opts.threads or cfg.cluster.threads_per_worker
    if threads:  # the run's per-worker setting: oversubscribed small matmuls run many times slower
        import torch

        torch.set_num_threads(threads)
    model = build_model(cfg.model, cfg.data).to(opts.device)
    state = loaded.state
    dev = baselines.to_device
    spec = opts.spec
    if not spec.shots or not spec.k_query:
        spec = replace(spec, k_query=spec.k_query or cfg.data.k_query)
        spec = replace(
            spec, shots=spec.shots or eval_inputs.default_shots(cfg, shards, test_tasks, spec, log)
        )
    methods: list[ev.Method] = []
    rand = dev(baselines.random_init(model, cfg, seed=spec.seed + 1), opts.device)
    methods.append(ev.Method("random init", rand, cfg.inner.lr, note="fresh seeded init"))
    mt = _multitask(opts, cfg, model, train_set, train_tasks, state.step, log)
    if mt is not None:
        methods.append(ev.Method("multitask", dev(mt, opts.device), cfg.inner.lr))
    lrs = state.lrs if isinstance(state.lrs, dict) else float(state.lrs)
    methods.append(
        ev.Method(
            "meta-init",
            dev(state.params, opts.device),
            dev(lrs, opts.device) if isinstance(lrs, dict) else lrs,
            trainable_names(model, cfg.inner),
        )
    )
    if opts.bank:
        methods.append(_bank_method(opts, cfg, model, methods[-1], log))

    read = shards.read_task
    try:
        # N-way episodes need N validation tasks; lm/regression tune on up to 4 of them.
        tune_tasks = val_tasks if kind == "classify" else val_tasks[:4]
        if kind == "classify" and len(val_tasks) < cfg.data.n_way:
            log(f"{len(val_tasks)} val tasks < n_way={cfg.data.n_way}: baseline lrs untuned")
            tune_tasks = []
        if tune_tasks:  # tune the fine-tuning baselines' learning rate, never on test tasks
            tune_eps = ev.make_episodes(
                val_set.read_task,
                tune_tasks,
                cfg.data,
                shot=spec.shots[0],
                k_query=spec.k_query,
                n_episodes=opts.tune_episodes,
                seed=spec.seed + 7,
            )
            for m in methods[: 2 if mt is not None else 1]:
                m.lrs, scores = ev.tune_lr(
                    model,
                    m,
                    tune_eps,
                    opts.lr_grid,
                    spec.steps,
                    kind=kind,
                    n_way=cfg.data.n_way,
                    device=opts.device,
                )
                log(
                    f"{m.name}: fine-tuning lr {m.lrs:g} (val {ev.METRIC[kind]}: "
                    + ", ".join(f"{k:g}->{v:.3f}" for k, v in scores.items())
                    + ")"
                )
                if len(opts.lr_grid) > 1 and m.lrs in (min(opts.lr_grid), max(opts.lr_grid)):
                    log(f"  {m.name}: the best lr is at the edge of the grid; widen --lr-grid")
        else:
            log("no usable validation tasks: the baselines keep the run's inner lr (untuned)")
        by_shot = {
            k: ev.make_episodes(
                read,
                test_tasks,
                cfg.data,
                shot=k,
                k_query=spec.k_query,
                n_episodes=spec.episodes,
                seed=spec.seed,
            )
            for k in spec.shots
        }
    except EpisodeError as exc:
        raise MetarayError(f"{exc} (in `metaray evaluate`: lower --shots or --k-query)") from None
    raw = ev.evaluate_methods(
        model, methods, by_shot, spec, n_way=cfg.data.n_way, progress=log, device=opts.device
    )
    rep = eval_report.build(
        raw,
        kind=kind,
        metric=ev.METRIC[kind],
        higher_is_better=ev.HIGHER_IS_BETTER[kind],
        groups=eval_inputs.script_groups(shards.family, train_tasks, test_tasks),
        info={
            "checkpoint": opts.checkpoint,
            "shards": opts.shards,
            "bank": opts.bank,
            "checkpoint_step": state.step,
            "algorithm": cfg.inner.algorithm,
            "family": shards.family,
            "test_tasks": test_tasks,
            "k_query": spec.k_query,
            "episodes_per_task": spec.episodes,
            "lrs": {m.name: m.lrs for m in methods if isinstance(m.lrs, float)},
            "notes": {m.name: m.note for m in methods if m.note},
        },
    )
    track = cfg.tracking.enabled if opts.tracking is None else opts.tracking
    eval_report.publish(
        rep,
        opts.out_dir,
        json_path=opts.json_path,
        tracking=cfg.tracking.model_copy(update={"enabled": True}) if track else None,
        run_name=f"evaluate-{cfg.checkpoint.run_name}",
        log=log,
    )
    return rep


def _multitask(opts, cfg, model, train_set, train_tasks, ck_steps, log):
    ref = dict(model.named_parameters())
    if opts.baseline and Path(opts.baseline).is_file():
        params, meta = baselines.load_params(opts.baseline)
        if baselines.matches(params, ref):
            log(f"multitask baseline: reusing {opts.baseline} ({meta.get('steps')} steps)")
            return params
        log(f"multitask baseline {opts.baseline} is for another architecture: retraining")
    if not train_tasks:
        log(f"multitask baseline skipped: training shards {cfg.data.uri} not readable here")
        return None
    steps = opts.baseline_steps or max(1, ck_steps)
    log(f"multitask baseline: {steps} outer steps on {len(train_tasks)} training tasks")
    params = baselines.pretrain_multitask(
        model,
        cfg,
        train_set.read_task,
        train_tasks,
        steps=steps,
        seed=opts.spec.seed + 3,
        progress=lambda s, m: log(f"  multitask step {s}/{steps}: loss {m['loss_post']:.4f}"),
    )
    path = opts.baseline or str(Path(opts.out_dir) / "baseline.safetensors")
    baselines.save_params(path, params, {"steps": steps, "checkpoint": opts.checkpoint})
    return params


def _bank_method(opts, cfg, model, meta: ev.Method, log) -> ev.Method:
    from pipeline.bank.service import BankService
    from pipeline.bank.warm_start import warm_start, with_entry_support

    endpoint = opts.s3_endpoint or cfg.bank.s3_endpoint  # read-only: the WAL is replayed
    bank_cfg = cfg.bank.model_copy(update={"snapshot_uri": opts.bank, "s3_endpoint": endpoint})
    service = BankService(bank_cfg)
    log(f"memory bank {opts.bank}: {len(service.keys())} entries")
    sources: list[str] = []

    def start(support, kind):
        params, info = warm_start(
            model,
            meta.params,
            support,
            cfg=bank_cfg,
            query=with_entry_support(service),
            lrs=meta.lrs,  # the probe (bank.select=probe) adapts with the method's own rates
            trainable=meta.trainable,
        )
        sources.extend(info.sources)
        return params

    return ev.Method(
        "bank warm start",
        meta.params,
        meta.lrs,
        meta.trainable,
        start=start,
        extra={"sources": sources},
    )
