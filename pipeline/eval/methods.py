"""Few-shot evaluation on held-out tasks: each method's metric after 0, 1, 2, 5, 10 inner steps.

Methods are starting points for the core's ONE inner loop (`pipeline.meta.inner.adapt`):
random init, a multitask-pretrained init (`pipeline.eval.baselines`), the meta-init from a
checkpoint, and the memory-bank warm start (`pipeline.bank.warm_start`). Every method sees the
very same episodes (seeded by task, shot count and episode index), so differences between
methods are paired episode by episode. Metrics: bits per byte (lm), MSE (regression),
accuracy (classify; per language within each N-way episode). Statistics: `eval_stats`;
output: `eval_report`. No ray, mlflow or boto3 here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.config import DataConfig
from pipeline.data import episodes as ep
from pipeline.errors import MetarayError
from pipeline.meta.inner import adapt_then_score, adapt_then_score_with_fallback
from pipeline.meta.losses import LN2, support_floored_loss, task_loss

Params = dict[str, Tensor]
Values = dict[int, dict[str, list[float]]]  # step -> task -> per-episode metric
METRIC = {"lm": "bits per byte", "regression": "MSE", "classify": "accuracy"}
HIGHER_IS_BETTER = {"lm": False, "regression": False, "classify": True}


class EvaluationError(MetarayError):
    """Evaluation cannot run as asked (too few tasks, rows or steps; say which and the fix)."""


@dataclass(frozen=True)
class EvalSpec:
    steps: tuple[int, ...] = (0, 1, 2, 5, 10)
    shots: tuple[int, ...] = ()  # support examples per task/class; () = from the checkpoint
    k_query: int = 0  # query examples per task/class; 0 = the checkpoint's data.k_query
    episodes: int = 10  # per task (lm, regression) or per task in expectation (classify)
    seed: int = 20_251_128
    batch: int = 16  # episodes adapted at once (task-batched)
    # lm: score the query under a mixture with uniform whose weight is fitted on each
    # episode's support words (`losses.fit_floor`), for every method alike; on by default:
    # a model that never saw a script's bytes otherwise scores far worse than a uniform guess
    support_floor: bool = True


@dataclass
class Method:
    """A starting point plus the inner learning rates used from it.

    `start(support)` may return task-batched params (the bank's warm start); else `params`
    (shared by every episode) is where adaptation starts."""

    name: str
    params: Params
    lrs: float | Params
    trainable: Sequence[str] | None = None
    start: Callable[[ep.Split], Params] | None = None
    note: str = ""
    max_step_norm: float | None = None  # trust region on each inner step (inner.max_step_norm)
    # bank.fallback: the meta-init's trajectory beside each task-batched start; each count keeps
    # the one with the lower support loss (which tasks fell back: extra["fell_back"][step])
    fallback: Params | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Episode:
    tasks: tuple[str, ...]  # one task, or the N classes of a classification episode
    batch: ep.EpisodeBatch  # numpy, one episode (no task dim; `collate` adds it)


def make_episodes(
    read_task: Callable[[str], dict[str, np.ndarray]],
    tasks: Sequence[str],
    data_cfg: DataConfig,
    *,
    shot: int,
    k_query: int,
    n_episodes: int,
    seed: int,
) -> list[Episode]:
    """The evaluation episodes for one shot count: deterministic in (seed, shot, index)."""
    kind = data_cfg.episode
    cfg = data_cfg.model_copy(update={"k_support": shot, "k_query": k_query})
    out: list[Episode] = []
    if kind == "classify":
        n = cfg.n_way
        if len(tasks) < n:
            raise EvaluationError(
                f"{n}-way classification needs {n} held-out tasks, the split has {len(tasks)} "
                f"({', '.join(tasks)}); hold out more (shards build --test-languages / "
                "--val-languages, or --test-keys for text) or train with a smaller data.n_way"
            )
        # Enough episodes that each task appears about n_episodes times.
        count = max(1, int(np.ceil(n_episodes * len(tasks) / n)))
        for i in range(count):
            rng = ep.slot_rng(seed, shot, i)
            slot = tuple(tasks[j] for j in rng.choice(len(tasks), n, replace=False))
            out.append(Episode(slot, ep.make_episode(kind, read_task, slot, cfg, rng)))
        return out
    for ti, task in enumerate(tasks):
        for e in range(n_episodes):
            rng = ep.slot_rng(seed, shot, ti * 100_003 + e)
            out.append(Episode((task,), ep.make_episode(kind, read_task, (task,), cfg, rng)))
    return out


def _metric(
    model: nn.Module, p: Params, query: ep.Split, n_way: int, support: ep.Split | None = None
) -> np.ndarray:
    """Per-episode metric `[T]` (lm, regression) or per-class accuracy `[T, N]` (classify).
    With `support` (lm only), bits per byte under the support-fitted floor (`fit_floor`)."""
    with torch.no_grad():
        if support is not None and model.kind == "lm":
            return (support_floored_loss(model, p, support, query) / LN2).cpu().numpy()
        out = model.functional(p, query.x, query.mask)
        if model.kind == "classify":
            hit = (out.argmax(-1) == query.y).float()  # [T, N*K]
            onehot = torch.nn.functional.one_hot(query.y, n_way).float()  # [T, N*K, N]
            per_class = (hit[..., None] * onehot).sum(1) / onehot.sum(1).clamp_min(1)
            return per_class.cpu().numpy()
        loss = task_loss(model.kind, out, query.y, query.mask)
        return (loss / LN2 if model.kind == "lm" else loss).cpu().numpy()


def _chunks(items: Sequence[Episode], size: int) -> list[Sequence[Episode]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def run_method(
    model: nn.Module,
    method: Method,
    episodes: Sequence[Episode],
    steps: Sequence[int],
    *,
    batch: int = 16,
    n_way: int = 5,
    device: str = "cpu",
    support_floor: bool = False,
) -> Values:
    """Adapt from `method`'s start on every episode; metric after each count in `steps`
    (lm with `support_floor`: under the floor fitted on the episode's support words).

    Adaptation continues from the previous count (plain SGD has no state, so 5 steps then
    5 more equal 10 steps), first order, through `inner.adapt_then_score` (the function
    training's validation uses too)."""
    values: Values = {s: {} for s in sorted(set(steps))}
    for group in _chunks(episodes, batch):
        b = ep.to_torch(ep.collate([e.batch for e in group]), device)  # leading dim T = episodes
        start = method.params if method.start is None else method.start(b.support)
        kw = dict(
            model=model,
            steps=steps,
            lrs=method.lrs,
            trainable=method.trainable,
            max_step_norm=method.max_step_norm,
            score=lambda p, query, s=(b.support if support_floor else None): _metric(
                model, p, query, n_way, s
            ),
        )
        warm = any(start[k].dim() > v.dim() for k, v in method.params.items())
        if method.fallback is None or not warm:
            scores = adapt_then_score(start, b.support, b.query, **kw)
        else:
            scores, fell = adapt_then_score_with_fallback(
                start, method.fallback, b.support, b.query, **kw
            )
            for s, f in fell.items():
                method.extra.setdefault("fell_back", {}).setdefault(s, []).extend(f.tolist())
        for s, m in scores.items():
            for i, e in enumerate(group):
                if model.kind == "classify":
                    for label, task in enumerate(e.tasks):
                        values[s].setdefault(task, []).append(float(m[i, label]))
                else:
                    values[s].setdefault(e.tasks[0], []).append(float(m[i]))
    return values


def evaluate_methods(
    model: nn.Module,
    methods: Sequence[Method],
    episodes_by_shot: dict[int, list[Episode]],
    spec: EvalSpec,
    *,
    n_way: int = 5,
    progress: Callable[[str], None] | None = None,
    device: str = "cpu",
) -> dict[str, dict[int, Values]]:
    """`{method: {shot: {step: {task: [metric per episode]}}}}`, same episodes for all."""
    out: dict[str, dict[int, Values]] = {}
    for method in methods:
        out[method.name] = {}
        for shot, episodes in episodes_by_shot.items():
            if progress:
                progress(f"{method.name}: K={shot}, {len(episodes)} episodes")
            out[method.name][shot] = run_method(
                model,
                method,
                episodes,
                spec.steps,
                batch=spec.batch,
                n_way=n_way,
                device=device,
                support_floor=spec.support_floor,
            )
    return out


def tune_lr(
    model: nn.Module,
    base: Method,
    episodes: Sequence[Episode],
    grid: Sequence[float],
    steps: Sequence[int],
    *,
    kind: str,
    n_way: int = 5,
    device: str = "cpu",
    support_floor: bool = False,
) -> tuple[float, dict[float, float]]:
    """The inner learning rate from `grid` with the best mean metric over `steps` (> 0) on
    validation episodes: the fine-tuning baselines get their learning rate tuned too."""
    scored: dict[float, float] = {}
    later = [s for s in steps if s > 0] or [1]
    for lr in grid:
        trial = replace(base, lrs=float(lr))
        vals = run_method(
            model, trial, episodes, later, n_way=n_way, device=device, support_floor=support_floor
        )
        score = float(np.mean([np.mean(v) for s in later for v in vals[s].values()]))
        worst = -np.inf if HIGHER_IS_BETTER[kind] else np.inf
        scored[float(lr)] = score if np.isfinite(score) else worst  # diverged
    pick = max if HIGHER_IS_BETTER[kind] else min
    return pick(scored, key=scored.get), scored
