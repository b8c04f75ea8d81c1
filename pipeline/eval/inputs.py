"""Inputs of `metaray evaluate`: find and read the checkpoint (local or s3://), the shard sets
and their splits, default shot counts, script groups of held-out wordlang languages."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipeline.errors import MetarayError


def load_checkpoint(uri: str, s3_endpoint: str | None = None, log=None) -> Any:
    """The checkpoint `uri` names, read (`pipeline.checkpoint.Loaded`): `uri` itself, or (a run
    directory) its best on validation, else its newest intact one (`pipeline.checkpoint.find`,
    which every command uses; an s3:// one is read from a temporary copy, removed after).
    `log` hears which."""
    from pipeline import checkpoint as ckpt

    with ckpt.located(uri, s3_endpoint=s3_endpoint) as found:
        if log is not None:
            log(f"using {found.why}: {found.uri}")
            for reason in found.skipped:
                log(f"  skipped (did not verify): {reason}")
        return ckpt.load(found.path)


def script_groups(
    family: str, train_tasks: list[str], test_tasks: list[str]
) -> dict[str, list[str]]:
    """wordlang: held-out languages whose script occurs among the training languages, apart
    from those whose script does not."""
    if family != "wordlang":
        return {}
    from pipeline.data.sources.languages import LANGUAGES

    seen = {LANGUAGES[t].script for t in train_tasks if t in LANGUAGES}
    known = [t for t in test_tasks if t in LANGUAGES]
    return {
        "seen script": [t for t in known if LANGUAGES[t].script in seen],
        "unseen script": [t for t in known if LANGUAGES[t].script not in seen],
    }


def default_shots(cfg, shards, tasks, spec, log) -> tuple[int, ...]:
    """1 and 5 shots for classification; else K, 4K and 16K (the trained K and two larger
    support sets), keeping those that the test tasks have rows for."""
    if cfg.data.episode == "classify":
        return (1, 5)
    k = cfg.data.k_support
    room = min(shards.rows(t) for t in tasks) - spec.k_query
    shots = tuple(s for s in (k, 4 * k, 16 * k) if s <= room) or (k,)
    if len(shots) < 3:
        log(f"shots {shots}: the test tasks have at most {room} rows beside the query set")
    return shots


def open_or_none(uri: str, endpoint: str | None):
    from pipeline.data.shards import open_shard_set

    try:
        return open_shard_set(uri, s3_endpoint=endpoint)
    except MetarayError:
        return None


@dataclass
class Inputs:
    """What `metaray evaluate` reads before it runs anything."""

    cfg: Any  # the checkpoint's RunConfig
    state: Any  # its MetaState
    shards: Any  # the shard set evaluated on (test tasks; val tasks when it has them)
    test_tasks: list[str]
    train_set: Any  # the run's own training shard set, None when not readable here
    train_tasks: list[str]
    val_set: Any
    val_tasks: list[str]

    @property
    def kind(self) -> str:
        return self.cfg.data.episode


def with_bank_overrides(cfg: Any, overrides, bank: str | None, log: Callable) -> Any:
    """The checkpoint's config with the command line's `bank.*` overrides (the warm start's
    settings, e.g. bank.fallback=true). Other sections would change the model or the inner
    loop being evaluated, so they are refused, as are bank overrides without --bank."""
    from pipeline import config

    if not overrides:
        return cfg
    other = [o for o in overrides if not o.strip().startswith("bank.")]
    if other:
        raise MetarayError(
            f"metaray evaluate takes bank.* overrides only (the warm start's settings), got "
            f"{', '.join(other)}: the model and its inner loop are the checkpoint's; train or "
            "adapt with other settings instead"
        )
    if not bank:
        raise MetarayError(
            f"{', '.join(overrides)}: bank.* overrides set the warm start; add --bank URI"
        )
    out = config.with_overrides(cfg, list(overrides), "checkpoint config + bank overrides")
    log(f"bank settings from the command line: {' '.join(overrides)}")
    return out


def read(opts: Any, log: Callable[[str], None]) -> Inputs:
    """The checkpoint and its config; the shard set; its test, train and val tasks.
    `opts`: `pipeline.eval.run.Options`."""
    from pipeline import config
    from pipeline.data.shards import open_shard_set

    loaded = load_checkpoint(opts.checkpoint, opts.s3_endpoint, log)
    cfg = config.from_dict(loaded.config, source=f"{opts.checkpoint} (checkpoint config)")
    cfg = with_bank_overrides(cfg, opts.bank_overrides, opts.bank, log)
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
        shards if cfg.data.uri in (opts.shards, None) else open_or_none(cfg.data.uri, endpoint)
    )
    train_tasks = train_set.tasks("train") if train_set else []
    val_set, val_tasks = (
        (shards, shards.tasks("val"))
        if shards.tasks("val")
        else (train_set, train_set.tasks("val") if train_set else [])
    )
    return Inputs(cfg, loaded.state, shards, test_tasks, train_set, train_tasks, val_set, val_tasks)


def init_run(cfg: Any, log: Callable[[str], None]) -> tuple[int, Any]:
    """Outer steps already spent on the parameters a run started from (`checkpoint.init_from`,
    e.g. multitask pretraining) and that run's outer slice: the multitask baseline gets those
    steps too (the same budget), trained with the pretraining's optimizer settings."""
    uri = cfg.checkpoint.init_from
    if not uri:
        return 0, None
    from pipeline import checkpoint as ckpt
    from pipeline import config
    from pipeline.eval.baselines import load_params

    try:
        if uri.endswith(".safetensors"):
            return int(load_params(uri)[1].get("steps", 0)), None
        with ckpt.located(uri, s3_endpoint=cfg.data.s3_endpoint, select="last") as found:
            loaded = ckpt.load(found.path)
        init_outer = config.from_dict(loaded.config, source=uri).outer
    except Exception as exc:  # the baseline then gets fewer steps: say so, do not hide it
        log(f"checkpoint.init_from={uri} unreadable here ({exc}): its steps are not counted")
        return 0, None
    steps = int(loaded.state.step)
    log(f"the run started from {uri} ({steps} outer steps): counted in the baseline's budget")
    return steps, init_outer
