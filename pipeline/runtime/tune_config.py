"""The `tune:` section of a sweep config: search space, scheduler, search algorithm.

A sweep file is an ordinary run config (every section `metaray train` accepts) plus one
`tune:` section. `load_sweep` splits the two: the run part goes through `config.load`'s
checks unchanged (so the best trial's config written at the end trains as is), the
`tune:` part is validated here with errors in the same words (file, key, value, fix).

Search space: dotted run-config keys to one distribution each:

    tune:
      space:
        inner.lr: {loguniform: [0.003, 0.3]}
        inner.steps: {choice: [1, 2, 3]}
        inner.algorithm: {choice: [maml, metasgd]}   # Meta-SGD on/off
"""

from __future__ import annotations

import copy
import difflib
import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline import config
from pipeline.config import ConfigError, RunConfig

KINDS = ("loguniform", "uniform", "choice", "randint", "grid")


class _Slice(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class AshaConfig(_Slice):
    time_attr: str = Field("step", description="progress measure ASHA compares at (meta-steps)")
    grace_period: int = Field(1, gt=0, description="time_attr units every trial gets")
    reduction_factor: float = Field(2, gt=1, description="keep 1/reduction_factor per rung")
    max_t: int | None = Field(None, gt=0, description="None: outer.steps")


class PbtConfig(_Slice):
    time_attr: str = Field("step", description="progress measure for perturbations (meta-steps)")
    perturbation_interval: int = Field(10, gt=0, description="time_attr units between perturbs")
    quantile_fraction: float = Field(0.25, gt=0, le=0.5, description="bottom share that copies top")
    synch: bool = Field(
        False,
        description="perturb only once every trial reached the step (trials that arrive first "
        "pause and restart from their checkpoint): every boundary compares all trials, even "
        "when their start-ups differ by more than a perturbation interval",
    )


class SweepConfig(_Slice):
    name: str = Field("sweep", description="sweep name: Tune experiment dir and MLflow parent run")
    storage: str = Field("runs/tune", description="directory (or s3://) for Tune state")
    space: dict[str, Any] = Field(
        default_factory=dict, description="dotted run-config key -> {kind: [args]}"
    )
    num_samples: int = Field(8, gt=0, description="trials (times the grid, if any)")
    metric: str = Field("val_loss_post", description="reported metric to optimise")
    mode: Literal["min", "max"] = Field("min", description="minimise or maximise the metric")
    scheduler: Literal["asha", "pbt", "fifo"] = Field(
        "asha",
        description="asha: stop weak trials early; pbt: weak trials continue from a strong "
        "trial's checkpoint with a perturbed outer.lr; fifo: every trial runs to the end",
    )
    search: Literal["random", "optuna"] = Field("random", description="how configs are proposed")
    max_concurrent_trials: int | None = Field(
        None, gt=0, description="None: as many as the cluster's CPUs/GPUs fit"
    )
    driver_cpus: float = Field(1.0, ge=0, description="CPUs each trial's driver holds")
    trial_runs: Literal["auto", "train", "in_trial"] = Field(
        "auto",
        description="train: each trial fits a Ray Train run (a controller and worker processes "
        "per trial); in_trial: a 1-worker CPU trial with in-worker episodes trains in the "
        "trial's own process, reused by the next trial (no per-trial start-up); auto: "
        "in_trial where it applies (cluster.num_workers=1, cluster.use_gpu=false, "
        "cluster.episode_actors=0, no cluster.* key in the space)",
    )
    seed: int | None = Field(None, description="seed of the search algorithm")
    asha: AshaConfig = AshaConfig()
    pbt: PbtConfig = PbtConfig()

    @model_validator(mode="after")
    def _consistent(self) -> SweepConfig:
        if self.scheduler == "pbt" and "outer.lr" not in self.space:
            raise ValueError(
                "scheduler=pbt perturbs outer.lr only (perturbing the inner lr mid-run changes "
                "the objective): add tune.space.outer.lr, e.g. {loguniform: [1e-4, 1e-2]}"
            )
        if self.search == "optuna" and any("grid" in d for d in self.space.values()):
            raise ValueError("search=optuna cannot take grid distributions: use choice instead")
        return self


def _check_dist(key: str, dist: dict[str, list[Any]], source: str) -> tuple[str, list[Any]]:
    where = f"{source}: tune.space.{key}"
    if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in KINDS:
        raise ConfigError(
            f"{where}={dist!r}: give exactly one of {', '.join(KINDS)}, "
            "e.g. {loguniform: [0.001, 0.1]} or {choice: [1, 3]}"
        )
    kind, args = next(iter(dist.items()))
    if not isinstance(args, list) or not args:
        raise ConfigError(f"{where}.{kind}={args!r}: must be a non-empty list")
    if kind in ("loguniform", "uniform", "randint"):
        if len(args) != 2 or not all(isinstance(a, (int, float)) for a in args):
            raise ConfigError(f"{where}.{kind}={args!r}: give [low, high] as two numbers")
        low, high = args
        if not low < high:
            raise ConfigError(f"{where}.{kind}={args!r}: low must be below high")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{where}.{kind}={args!r}: loguniform needs low > 0")
        if kind == "randint" and not all(isinstance(a, int) for a in args):
            raise ConfigError(f"{where}.{kind}={args!r}: randint needs integers")
    return kind, args


def _candidates(kind: str, args: list[Any]) -> list[Any]:
    """Values that represent the distribution: every choice, or both bounds."""
    if kind == "randint":
        return [args[0], args[1] - 1]  # Tune's randint excludes the upper bound
    return list(args)


def validate_space(space: dict[str, dict[str, list[Any]]], base: RunConfig, source: str) -> None:
    """Each key is a run-config key, each distribution well-formed, each value valid there."""
    known = config.valid_keys()
    tree = config.to_dict(base)
    for key, dist in space.items():
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
            suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
            raise ConfigError(f"{source}: tune.space: unknown run-config key '{key}'{suggestion}")
        kind, args = _check_dist(key, dist, source)
        for value in _candidates(kind, args):
            trial = apply_overrides(tree, {key: value})
            try:
                config.from_dict(trial, f"{source}: tune.space.{key}={value!r}")
            except ConfigError as exc:
                raise ConfigError(str(exc)) from None


def apply_overrides(tree: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of a config tree with dotted keys set (a trial's sampled values)."""
    out = copy.deepcopy(tree)
    for key, value in values.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def _flatten_space(space: Any, prefix: str = "") -> Any:
    """`{inner: {lr: {loguniform: ..}}}` (from a command-line override) -> `{inner.lr: ..}`."""
    if not isinstance(space, dict):
        return space
    out: dict[str, Any] = {}
    for key, value in space.items():
        path = f"{prefix}{key}"
        vals = value.values() if isinstance(value, dict) else []
        nested = bool(vals) and all(isinstance(v, dict) for v in vals)
        if nested and not set(value) & set(KINDS):
            out.update(_flatten_space(value, path + "."))
        else:
            out[path] = value
    return out


def load_sweep(
    path: str | os.PathLike[str] | None, overrides: list[str] | None = None
) -> tuple[RunConfig, SweepConfig]:
    """Read a sweep file; `tune.*` overrides go to the sweep, the rest to the run config."""
    tree = config.read_yaml(path) if path else {}
    source = str(path) if path else "defaults"
    tune_tree = tree.pop("tune", None) or {}
    if not isinstance(tune_tree, dict):
        raise ConfigError(f"{source}: 'tune' must be a mapping, got {type(tune_tree).__name__}")
    run_over = [o for o in overrides or [] if not o.startswith("tune.")]
    tune_over = config.parse_overrides([o for o in overrides or [] if o.startswith("tune.")])
    tune_tree = config._merge(tune_tree, tune_over.get("tune", {}))
    if "space" in tune_tree:
        tune_tree["space"] = _flatten_space(tune_tree["space"])
    extra = config.parse_overrides(run_over)
    config._check_keys(tree, source)
    config._check_keys(extra, "command line")
    run_source = source + (" + overrides" if overrides else "")
    base = config.from_dict(config._merge(tree, extra), run_source)
    try:
        sweep = SweepConfig.model_validate(tune_tree)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                hint = difflib.get_close_matches(key, list(SweepConfig.model_fields), n=1)
                msg = "unknown key" + (f"; did you mean 'tune.{hint[0]}'?" if hint else "")
            lines.append(f"{source}: tune{'.' + key if key else ''}: {msg}")
        raise ConfigError("\n".join(lines)) from None
    if not sweep.space:
        raise ConfigError(f"{source}: tune.space is empty: give at least one key to search over")
    validate_space(sweep.space, base, source)
    return base, sweep
