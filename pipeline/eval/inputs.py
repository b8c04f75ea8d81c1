"""Inputs of `metaray evaluate`: find the checkpoint (local or s3://), default shot counts,
script groups of held-out wordlang languages, the training shard set."""

from __future__ import annotations

import posixpath
import tempfile
from pathlib import Path

from pipeline.errors import MetarayError


def find_checkpoint(uri: str, s3_endpoint: str | None = None) -> str:
    """A local directory holding a complete checkpoint (meta.json + state.safetensors):
    `uri` itself, or the highest-step checkpoint under it (a run directory); s3:// is copied
    to a temporary directory first."""
    import json

    import pyarrow.fs as pafs

    from pipeline.data.storage import resolve

    loc = resolve(uri, s3_endpoint=s3_endpoint)
    sel = pafs.FileSelector(loc.root, recursive=True, allow_not_found=True)
    metas = [i.path for i in loc.fs.get_file_info(sel) if i.path.endswith("/meta.json")]
    if loc.fs.get_file_info(loc.path("meta.json")).type == pafs.FileType.File:
        metas.append(loc.path("meta.json"))
    if not metas:
        raise MetarayError(
            f"{uri}: no checkpoint found (no meta.json there or below); give the checkpoint "
            "directory or the run directory (checkpoint.storage/checkpoint.run_name)"
        )

    def step(path: str) -> int:
        with loc.fs.open_input_stream(path) as f:
            return int(json.loads(f.read()).get("step", -1))

    best = posixpath.dirname(max(metas, key=step))
    if not loc.is_s3:
        return best
    local = Path(tempfile.mkdtemp(prefix="metaray-ckpt-"))
    for name in ("meta.json", "state.safetensors"):
        with loc.fs.open_input_stream(posixpath.join(best, name)) as f:
            (local / name).write_bytes(f.read())
    return str(local)


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
