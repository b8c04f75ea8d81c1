"""Training side of `bench/fewshot.py`: every method trained in-process on the functional
core (`pipeline.meta.outer.train_step` / `meta_gradients` + `apply_gradients`, the same
step the Ray workers run), with the SAME budget in examples seen and the SAME
best-on-validation checkpoint selection for every method, the multitask baseline included.

Budget: `steps` outer steps of `meta_batch` tasks, each task `k_support + k_query` words
(multitask folds the support into its query: the same words, no inner loop). A recipe that
pretrains multitask for P steps and meta-trains for the rest spends P + (steps - P) = steps.
Selection: every `val_every` steps the current parameters are scored on the fold's
validation languages (mean query bpb after 1, 2 and 5 inner steps with the method's own
inner learning rates; multitask: lr `MT_VAL_LR`); the best scoring ones are kept. With
`select_floor` that bpb is scored under the support-fitted floor (`losses.fit_floor`), as
`metaray evaluate` scores by default.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from fewshot_render import CHOOSING_STEPS

from pipeline.data import episodes as ep
from pipeline.eval import baselines
from pipeline.eval.methods import Episode, Method, run_method
from pipeline.meta import outer

MT_VAL_LR = 0.3
VAL_STEPS = tuple(int(s) for s in CHOOSING_STEPS)  # the step counts a checkpoint is chosen at


@dataclass(frozen=True)
class Spec:
    """One trained method. algorithm: multitask | maml | fomaml | metasgd | anil | reptile |
    lslr (MAML with one learned inner lr per parameter TENSOR, MAML++'s LSLR)."""

    name: str
    algorithm: str
    inner_steps: tuple[int, ...] = (1,)  # cycled over meta-steps (a schedule over step counts)
    inner_lr: float = 0.1
    pretrain: float = 0.0  # share of the budget spent on multitask pretraining first
    pre_weight: float = 0.0  # weight of the query loss BEFORE adaptation in the outer loss
    first_order: bool = False
    outer_lr: float | None = None  # None: the run's outer lr
    learn_init: bool = True  # False: keep the (pretrained) init, learn only the inner lrs
    lr_max: float | None = None  # cap on the learned inner lrs (inner.lr_max)
    max_step_norm: float | None = None  # trust region on each inner step (inner.max_step_norm)
    lrs_lr: float | None = None  # outer lr of the learned inner lrs (outer.lrs_lr)
    init_objective: str = "meta"  # what trains the init (inner.init_objective)


@dataclass
class Trained:
    spec: Spec
    params: dict[str, torch.Tensor]
    lrs: float | dict[str, torch.Tensor]
    trainable: Sequence[str] | None
    val: list[dict[str, float]] = field(default_factory=list)
    best_step: int = 0
    seconds: float = 0.0

    def method(self) -> Method:
        return Method(
            self.spec.name,
            self.params,
            self.lrs,
            self.trainable,
            max_step_norm=self.spec.max_step_norm,
        )


def val_score(
    model,
    params,
    lrs,
    trainable,
    val_eps: Sequence[Episode],
    max_step_norm=None,
    support_floor: bool = False,
) -> float:
    method = Method("val", params, lrs, trainable, max_step_norm=max_step_norm)
    vals = run_method(model, method, val_eps, VAL_STEPS, support_floor=support_floor)
    return float(np.mean([np.mean(v) for s in VAL_STEPS for v in vals[s].values()]))


class Selector:
    """Keeps the best-on-validation parameters seen so far (the run's "final" model)."""

    def __init__(
        self, model, val_eps, trainable, max_step_norm=None, support_floor: bool = False
    ) -> None:
        self.model, self.val_eps, self.trainable = model, val_eps, trainable
        self.max_step_norm, self.support_floor = max_step_norm, support_floor
        self.best = (np.inf, 0, None, None)
        self.rows: list[dict[str, float]] = []

    def offer(self, step: int, params, lrs) -> None:
        p = {k: v.detach().clone() for k, v in params.items()}
        lr = {k: v.detach().clone() for k, v in lrs.items()} if isinstance(lrs, dict) else lrs
        score = val_score(
            self.model,
            p,
            lr,
            self.trainable,
            self.val_eps,
            self.max_step_norm,
            self.support_floor,
        )
        self.rows.append({"step": step, "val_bpb": score})
        if score < self.best[0]:
            self.best = (score, step, p, lr)


def _lrs_for_eval(state: outer.MetaState, algorithm: str) -> float | dict[str, torch.Tensor]:
    if algorithm in ("metasgd", "lslr"):
        return {k: v.detach().clamp_min(0.0) for k, v in state.lrs.items()}
    return {k: v.detach() for k, v in state.lrs.items()}


def train_multitask(
    model,
    run_cfg,
    read,
    train: Sequence[str],
    *,
    steps: int,
    seed: int,
    sel: Selector,
    val_every: int,
    snapshot_at: Sequence[int] = (),
) -> dict[int, dict[str, torch.Tensor]]:
    """The multitask baseline's loop (0 inner steps, every word a query word); returns the
    parameters at the steps in `snapshot_at` (where recipes branch off to meta-train)."""
    inner, data = baselines.multitask_config(run_cfg)
    state = outer.init_state(model, inner, run_cfg.outer, seed=seed)
    snaps = {0: dict(state.params)} if 0 in snapshot_at else {}
    for step in range(steps):
        batch = ep.build_step(
            read, train, data, seed=seed, step=step, meta_batch=run_cfg.outer.meta_batch
        )
        state, _ = outer.train_step(
            state,
            ep.to_torch(batch),
            model=model,
            inner_cfg=inner,
            outer_cfg=run_cfg.outer,
            pre_metrics=False,
        )
        if step + 1 in snapshot_at:
            snaps[step + 1] = {k: v.detach().clone() for k, v in state.params.items()}
        if (step + 1) % val_every == 0 or step + 1 == steps:
            sel.offer(step + 1, state.params, MT_VAL_LR)
    return snaps


def meta_inner(run_cfg, spec: Spec) -> Any:
    """The run's `inner` slice for `spec`: the product's own config keys (lslr = Meta-SGD
    with `lr_shape=tensor`; the step schedule and the pre-adaptation weight are applied by
    `outer.train_step` itself)."""
    lslr = spec.algorithm == "lslr"
    return run_cfg.inner.model_copy(
        update={
            "algorithm": "metasgd" if lslr else spec.algorithm,
            "lr_shape": "tensor" if lslr else "param",
            "steps": spec.inner_steps[0],
            "step_schedule": spec.inner_steps if len(spec.inner_steps) > 1 else (),
            "pre_weight": spec.pre_weight,
            "learn_init": spec.learn_init,
            "lr": spec.inner_lr,
            "first_order": spec.first_order,
            "lr_max": spec.lr_max,
            "max_step_norm": spec.max_step_norm,
            "init_objective": spec.init_objective,
        }
    )


def _outer_cfg(run_cfg, spec: Spec):
    update = {"lr": spec.outer_lr} if spec.outer_lr is not None else {}
    if spec.lrs_lr is not None:
        update["lrs_lr"] = spec.lrs_lr
    return run_cfg.outer.model_copy(update=update) if update else run_cfg.outer


def train_meta(
    model,
    run_cfg,
    read,
    train: Sequence[str],
    spec: Spec,
    *,
    start_params,
    first_step: int,
    steps: int,
    seed: int,
    sel: Selector,
    val_every: int,
) -> outer.MetaState:
    """Meta-train from `start_params` (None: a fresh seeded init; else a fresh outer
    optimizer on those parameters, as `checkpoint.init_from` does) for steps
    `first_step..steps-1` of the budget with the core's `outer.train_step`; the episodes of
    step t are those the multitask baseline's step t draws (same seed stream)."""
    inner = meta_inner(run_cfg, spec)
    outer_cfg = _outer_cfg(run_cfg, spec)
    state = outer.init_state(model, inner, outer_cfg, seed=seed)
    if start_params is not None:
        state = state._replace(params={k: v.detach().clone() for k, v in start_params.items()})
    for step in range(first_step, steps):
        batch = ep.build_step(
            read, train, run_cfg.data, seed=seed, step=step, meta_batch=run_cfg.outer.meta_batch
        )
        state, _ = outer.train_step(
            state,
            ep.to_torch(batch),
            model=model,
            inner_cfg=inner,
            outer_cfg=outer_cfg,
            pre_metrics=False,
        )
        if (step + 1) % val_every == 0 or step + 1 == steps:
            sel.offer(step + 1, state.params, _lrs_for_eval(state, spec.algorithm))
    return state


def train_method(
    model,
    run_cfg,
    read,
    train: Sequence[str],
    spec: Spec,
    *,
    steps: int,
    seed: int,
    val_eps: Sequence[Episode],
    val_every: int,
    mt_snaps: dict[int, dict] | None = None,
    log: Callable[[str], None] = print,
    select_floor: bool = False,
) -> Trained:
    t0 = time.perf_counter()
    trainable = list(model.head_names) if spec.algorithm == "anil" else None
    sel = Selector(model, val_eps, trainable, spec.max_step_norm, select_floor)
    if spec.algorithm == "multitask":
        train_multitask(
            model, run_cfg, read, train, steps=steps, seed=seed, sel=sel, val_every=val_every
        )
    else:
        p_steps = int(round(spec.pretrain * steps))
        start = None
        if p_steps:
            if mt_snaps is None or p_steps not in mt_snaps:
                raise ValueError(f"{spec.name}: no multitask snapshot at step {p_steps}")
            start = mt_snaps[p_steps]
        train_meta(
            model,
            run_cfg,
            read,
            train,
            spec,
            start_params=start,
            first_step=p_steps,
            steps=steps,
            seed=seed,
            sel=sel,
            val_every=val_every,
        )
    score, best_step, params, lrs = sel.best
    out = Trained(spec, params, lrs, trainable, sel.rows, best_step, time.perf_counter() - t0)
    log(
        f"  trained {spec.name}: best val {score:.3f} bpb at step {best_step}/{steps} "
        f"({out.seconds:.0f} s)"
    )
    return out


def pretrain_steps(specs: Sequence[Spec], steps: int) -> list[int]:
    """The multitask steps at which some recipe branches off (snapshots to keep)."""
    return sorted({int(round(s.pretrain * steps)) for s in specs if s.pretrain})


def with_name(spec: Spec, name: str) -> Spec:
    return replace(spec, name=name)
