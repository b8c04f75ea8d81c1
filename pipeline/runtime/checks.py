"""SHELL: checks a run passes before Ray starts, and the repair of a run directory Ray would
refuse. Each failure is a `MetarayError` naming the file or key and the fix.
"""

from __future__ import annotations

import time
from pathlib import Path

from pipeline import config
from pipeline.errors import MetarayError

_FAMILIES = {
    "regression": ("sinusoid",),
    "lm": ("wordlang", "text"),
    "classify": ("wordlang", "text"),
}


def preflight(cfg: config.RunConfig) -> None:
    """What would otherwise fail after Ray's start-up or mid-run, checked first (a
    `MetarayError` naming the file/key and the fix): the shard set exists and opens, its
    family fits `data.episode`, every train/val task has `k_support + k_query` rows, there are
    `n_way` tasks for classification, and `checkpoint.init_from`/`resume_from` exist."""
    from pipeline import checkpoint as ckpt
    from pipeline.data.shards import open_shard_set
    from pipeline.errors import EpisodeError

    d = cfg.data
    shards = open_shard_set(d.uri, s3_endpoint=d.s3_endpoint)
    if shards.family not in _FAMILIES[d.episode]:
        fits = " or ".join(_FAMILIES[d.episode])
        raise EpisodeError(
            f"data.uri={d.uri} is a {shards.family} shard set, but data.episode={d.episode!r} "
            f"needs {fits} shards: point data.uri at such a set or change data.episode"
        )
    need = d.k_support + d.k_query
    for split in ("train", "val"):
        shards.check_min_rows(split, need, what=f"an episode (k_support + k_query = {need})")
    if d.episode == "classify" and len(shards.tasks("train")) < d.n_way:
        raise EpisodeError(
            f"data.uri={d.uri}: {len(shards.tasks('train'))} train task(s), fewer than "
            f"data.n_way={d.n_way} classes per episode: lower data.n_way or add tasks"
        )
    for key in ("init_from", "resume_from"):
        uri = getattr(cfg.checkpoint, key)
        if uri and not (uri.endswith(".safetensors") and Path(uri).is_file()):
            try:
                ckpt.check_readable(uri, s3_endpoint=d.s3_endpoint)
            except MetarayError as exc:
                raise MetarayError(f"checkpoint.{key}: {exc}") from None


SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's checkpoints


def heal_run_dir(cfg: config.RunConfig) -> str | None:
    """Ray refuses a run directory whose record names a checkpoint folder that is gone (a user
    deleted a corrupt one): set the record aside so that the run resumes from the newest intact
    checkpoint left (`selection.restore` finds it). Returns a line saying so, else None."""
    import json

    from pipeline.data.storage import resolve
    from pipeline.runtime.selection import run_uri

    loc = resolve(run_uri(cfg), s3_endpoint=cfg.data.s3_endpoint)
    if not loc.exists(SNAPSHOT):
        return None
    try:
        record = json.loads(loc.read_bytes(SNAPSHOT))
        names = {r["checkpoint_dir_name"] for r in record.get("checkpoint_results", [])}
    except (ValueError, KeyError, TypeError, AttributeError):
        names = {"(unreadable record)"}
    missing = sorted(n for n in names if not loc.exists(f"{n}/meta.json"))
    if not missing:
        return None
    aside = f"{SNAPSHOT}.stale-{int(time.time())}"
    loc.move(SNAPSHOT, aside)
    return (
        f"[metaray] {loc.display()}: Ray's checkpoint record names {', '.join(missing)}, which "
        f"is gone or incomplete; record set aside as {aside}, resuming from the newest intact "
        "checkpoint left"
    )
