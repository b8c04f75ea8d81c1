"""Inputs of `metaray evaluate`: find the checkpoint (local or s3://), default shot counts,
script groups of held-out wordlang languages, the training shard set."""

from __future__ import annotations

from pipeline.errors import MetarayError


def find_checkpoint(uri: str, s3_endpoint: str | None = None, log=None) -> str:
    """A local directory holding a complete checkpoint: `uri` itself, or (a run directory) its
    best on validation, else its newest intact one (`pipeline.checkpoint.find`, which every
    command uses); s3:// is copied to a temporary directory first. `log` hears which."""
    from pipeline import checkpoint as ckpt

    found = ckpt.find(uri, s3_endpoint=s3_endpoint)
    if log is not None:
        log(f"using {found.why}: {found.uri}")
        for reason in found.skipped:
            log(f"  skipped (did not verify): {reason}")
    return found.path


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
