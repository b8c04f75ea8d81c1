"""Writing a shard set: Parquet files first (temporary name, then renamed), manifest last.

Crash safety: a file only gets its final name once it is completely written, and the manifest
that names the files is written (again via a temporary name) after all of them. An
interrupted build therefore leaves no `manifest.json` (or the previous, still complete one);
re-running the build writes a fresh set and removes the leftovers of earlier attempts.

Only files that a build of this set recorded are ever deleted: those of the set's own
manifest, and those of a build that was interrupted here, which announced itself first with a
journal file `_tmp-<build id>-build.json`. A file that merely looks like a shard stays. A
non-empty `--out` that holds no shard set, or a set built with other parameters, is only
built over with `overwrite`.
"""

from __future__ import annotations

import contextlib
import hashlib
import platform
import re
import sys
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data import manifest as mf
from pipeline.data.storage import Location, resolve
from pipeline.errors import ShardError

# Names this writer produces, with the build id they carry: data files and temporary files.
_OWNED = re.compile(
    r"^(?:(?:train|val|test)-\d{5}-(?P<a>[0-9a-f]{8})\.parquet|_tmp-(?P<b>[0-9a-f]{8})-.+)$"
)
_JOURNAL = re.compile(r"^_tmp-(?P<id>[0-9a-f]{8})-build\.json$")


def _build_id(name: str) -> str | None:
    m = _OWNED.match(name)
    return (m.group("a") or m.group("b")) if m else None


def _recorded(names: list[str], old: mf.Manifest | None) -> set[str]:
    """Build ids whose files may be removed here: the set's own, and interrupted builds'."""
    ids = {m.group("id") for n in names if (m := _JOURNAL.match(n))}
    if old is not None and old.build.get("build_id"):
        ids.add(old.build["build_id"])
    return ids


DEFAULT_ROWS_PER_FILE = 1_000_000


@dataclass(frozen=True)
class BuildResult:
    manifest: mf.Manifest
    skipped: bool  # True: an identical, complete build was already there
    removed: tuple[str, ...] = ()  # leftovers of earlier builds that were deleted


def package_versions(*extra: str) -> dict[str, str]:
    names = ("metaray", "pyarrow", "numpy", *extra)
    out = {"python": platform.python_version()}
    for n in names:
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            out[n] = "unknown"
    return out


def _same_build(old: mf.Manifest, family: str, build: dict[str, Any]) -> bool:
    return (
        old.family == family
        and old.build.get("source") == build.get("source")
        and old.build.get("params") == build.get("params")
        and old.build.get("versions") == build.get("versions")
    )


class _Writer:
    def __init__(self, loc: Location, family: str, build_id: str, rows_per_file: int):
        self.loc, self.family, self.build_id = loc, family, build_id
        self.rows_per_file = rows_per_file
        self.columns = mf.FAMILY_COLUMNS[family]
        self.schema = pa.schema(list(self.columns.items()))
        self.buffers: dict[str, list[tuple[str, pa.Table, dict]]] = {s: [] for s in mf.SPLITS}
        self.buffered_rows = dict.fromkeys(mf.SPLITS, 0)
        self.counters = dict.fromkeys(mf.SPLITS, 0)
        self.files: dict[str, mf.FileEntry] = {}
        self.tasks: dict[str, mf.TaskEntry] = {}
        self.seen: set[str] = set()
        self.written: list[str] = []  # every name created, for cleanup on failure

    def add(self, key: str, split: str, table: pa.Table, meta: dict) -> None:
        if not isinstance(key, str) or not key:
            raise ShardError(f"task key {key!r} is not a non-empty string")
        if key in self.seen:
            raise ShardError(f"task {key!r} appears twice in the source: task keys must be unique")
        if split not in mf.SPLITS:
            raise ShardError(f"task {key!r}: split {split!r} is not one of {list(mf.SPLITS)}")
        if not table.schema.equals(self.schema):
            table = self._conform(key, table)
        if table.num_rows == 0:
            raise ShardError(f"task {key!r} has no rows: drop it or give it examples")
        self.seen.add(key)
        self._room(split, table.num_rows)
        self.buffers[split].append((key, table, meta))
        self.buffered_rows[split] += table.num_rows
        if self.buffered_rows[split] >= self.rows_per_file:
            self.flush(split)

    def _room(self, split: str, rows: int) -> None:
        """`rows_per_file` is a maximum: close the open file before a task that would pass it
        (a task larger than the maximum gets a file of its own; tasks are never split)."""
        if self.buffered_rows[split] and self.buffered_rows[split] + rows > self.rows_per_file:
            self.flush(split)

    def _conform(self, key: str, table: pa.Table) -> pa.Table:
        """Same names and types but other field flags (nullability): cast; else explain."""
        names = list(table.column_names)
        if names != list(self.columns):
            raise ShardError(
                f"task {key!r}: columns {names} do not match family {self.family!r}, which "
                f"needs {list(self.columns)}"
            )
        for name, want in self.columns.items():
            got = table.schema.field(name).type
            if got != want:
                raise ShardError(
                    f"task {key!r}: column {name!r} has type {got}, family {self.family!r} "
                    f"needs {want}"
                )
        return table.cast(self.schema)

    def flush(self, split: str) -> None:
        items = self.buffers[split]
        if not items:
            return
        name = f"{split}-{self.counters[split]:05d}-{self.build_id}.parquet"
        self.counters[split] += 1
        offset = 0
        for key, table, meta in items:
            self.tasks[key] = mf.TaskEntry(key, split, table.num_rows, name, offset, meta)
            offset += table.num_rows
        keys = np.array([key for key, _, _ in items], dtype=object)
        counts = [table.num_rows for _, table, _ in items]
        data = pa.concat_tables([table for _, table, _ in items])
        data = data.add_column(0, mf.TASK_COLUMN, pa.array(np.repeat(keys, counts), pa.string()))
        sink = pa.BufferOutputStream()
        pq.write_table(data, sink, compression="zstd")
        data = sink.getvalue().to_pybytes()
        tmp = f"_tmp-{self.build_id}-{name}"
        self.written += [tmp, name]
        self.loc.write_bytes(tmp, data)
        self.loc.move(tmp, name)
        self.files[name] = mf.FileEntry(
            name, split, hashlib.sha256(data).hexdigest(), offset, len(data)
        )
        self.buffers[split] = []
        self.buffered_rows[split] = 0


def write_shard_set(
    uri: str,
    family: str,
    tasks: Iterable[Any],
    *,
    build: dict[str, Any],
    s3_endpoint: str | None = None,
    rows_per_file: int = DEFAULT_ROWS_PER_FILE,
    force: bool = False,
    overwrite: bool = False,
    split_hint: str = "",
    log: Callable[[str], None] | None = None,
) -> BuildResult:
    """Write `tasks` (items `(key, split, pyarrow.Table[, meta])`) as a shard set at `uri`.

    `build` holds `source`, `params` (JSON-able), `seed` and `versions` (of the source's
    packages); metaray, pyarrow, numpy and Python versions are added. If `uri` already holds a
    complete build with the same family, source, params and versions, nothing is written
    (`skipped=True`) unless `force`; a changed input (same params) is rebuilt in place; other
    params, another family or source, an unreadable manifest, or a non-empty folder that is
    no shard set are only built over with `overwrite`.
    `split_hint` says which options give a split its tasks (for error messages).
    """
    if family not in mf.FAMILY_COLUMNS:
        raise ShardError(f"family {family!r} is not one of {sorted(mf.FAMILY_COLUMNS)}")
    if rows_per_file <= 0:
        raise ShardError(f"rows_per_file={rows_per_file} must be positive")
    loc = resolve(uri, s3_endpoint=s3_endpoint)
    loc.ensure_root()
    build = dict(build)
    build["versions"] = {**package_versions(), **build.get("versions", {})}
    old = _check_target(loc, uri, family, build, force=force, overwrite=overwrite, log=log)
    if isinstance(old, BuildResult):
        return old
    writer = _Writer(loc, family, uuid.uuid4().hex[:8], rows_per_file)
    journal = f"_tmp-{writer.build_id}-build.json"  # first: a crash leaves a record of it
    loc.write_bytes(journal, b'{"build_id": "%s"}' % writer.build_id.encode())
    writer.written.append(journal)
    try:
        manifest = _write_all(writer, uri, family, tasks, build, split_hint)
    except BaseException:
        # A clean failure (bad input, Ctrl-C) removes what this build wrote; a hard crash
        # leaves its journal, so that the next build removes its files.
        for name in writer.written:
            with contextlib.suppress(Exception):  # the original error matters more
                loc.delete(name)
        raise
    names = loc.list_names()
    ids = _recorded(names, old) | {writer.build_id}
    removed = tuple(
        n for n in names if _build_id(n) in ids and n not in manifest.files and n != journal
    )
    for n in (*removed, journal):
        loc.delete(n)
    if log and removed:
        log(f"removed {len(removed)} leftover file(s) of earlier builds")
    return BuildResult(manifest, skipped=False, removed=removed)


def _check_target(
    loc: Location,
    uri: str,
    family: str,
    build: dict[str, Any],
    *,
    force: bool,
    overwrite: bool,
    log: Callable[[str], None] | None,
) -> mf.Manifest | BuildResult | None:
    """What `uri` holds now: the old manifest (or None), or a `BuildResult` when an identical
    build is already there; a `ShardError` when building there needs `overwrite`."""
    old: mf.Manifest | None = None
    if loc.exists(mf.MANIFEST_NAME):
        try:
            old = mf.parse(loc.read_bytes(mf.MANIFEST_NAME), loc.display(mf.MANIFEST_NAME))
        except ShardError:
            if not overwrite:
                raise ShardError(
                    f"{uri} holds a manifest.json this version cannot read: pass --overwrite to "
                    "replace that set, or choose another --out"
                ) from None
    if old is not None and _same_build(old, family, build) and not force:
        return BuildResult(old, skipped=True)
    if old is not None and not (overwrite or _same_recipe(old, family, build)):
        if old.family != family or old.build.get("source") != build.get("source"):
            what = f"a {old.family} shard set from source {old.build.get('source')!r}"
            what += f", not {family} from {build.get('source')!r}"
        else:
            what = f"a {old.family} shard set built with other parameters ({_diff(old, build)})"
        raise ShardError(
            f"{uri} already holds {what}: pass --overwrite to replace it, or choose another --out"
        )
    if old is None and not overwrite:
        names = loc.list_names()
        ids = _recorded(names, None)
        foreign = [n for n in names if _build_id(n) not in ids]
        if foreign:
            raise ShardError(
                f"{uri} is not empty and holds no metaray shard set ({len(foreign)} file(s), "
                f"e.g. {', '.join(foreign[:3])}): choose an empty --out, or pass --overwrite to "
                "build into it (its files stay: only files of metaray builds are ever removed)"
            )
    if log and old is not None:
        log(f"{uri}: replacing the {old.family} shard set built {old.created_utc}")
    return old


# Build params that follow the input's content (not a choice of the user): a changed input is
# rebuilt in place, as the same command asks for.
_CONTENT_PARAMS = ("fingerprint",)


def _changed(old: mf.Manifest, build: dict[str, Any]) -> list[str]:
    a, b = old.build.get("params") or {}, build.get("params") or {}
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in _CONTENT_PARAMS)


def _same_recipe(old: mf.Manifest, family: str, build: dict[str, Any]) -> bool:
    """Same family, source and chosen parameters (content and versions may differ)."""
    same_source = old.family == family and old.build.get("source") == build.get("source")
    return same_source and not _changed(old, build)


def _diff(old: mf.Manifest, build: dict[str, Any]) -> str:
    a, b = old.build.get("params") or {}, build.get("params") or {}
    keys = _changed(old, build)
    if not keys:
        return "other package versions"
    return ", ".join(f"{k}: {_short(a.get(k))} -> {_short(b.get(k))}" for k in keys[:4])


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _write_all(
    writer: _Writer,
    uri: str,
    family: str,
    tasks: Iterable[Any],
    build: dict[str, Any],
    split_hint: str,
) -> mf.Manifest:
    """Every task's rows, then the manifest last (its rename is what completes the build)."""
    for item in tasks:
        key, split, table = item[0], item[1], item[2]
        meta = item[3] if len(item) > 3 and item[3] else {}
        writer.add(key, split, table, meta)
    for split in mf.SPLITS:
        writer.flush(split)
    counts = {s: sum(1 for t in writer.tasks.values() if t.split == s) for s in mf.SPLITS}
    for split, n in counts.items():
        if n == 0:
            raise ShardError(
                f"building {uri}: the split leaves no {split} tasks "
                f"(train {counts['train']}, val {counts['val']}, test {counts['test']}): "
                f"every shard set needs train, val and test tasks"
                + (f"; {split_hint}" if split_hint else "")
            )
    manifest = mf.Manifest(
        schema_version=mf.SCHEMA_VERSION,
        family=family,
        columns={k: mf.type_name(v) for k, v in mf.FAMILY_COLUMNS[family].items()},
        build={**build, "build_id": writer.build_id},
        files=writer.files,
        tasks=writer.tasks,
        created_utc=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    )
    tmp = f"_tmp-{writer.build_id}-{mf.MANIFEST_NAME}"
    writer.written.append(tmp)
    writer.loc.write_bytes(tmp, manifest.to_json())
    writer.loc.move(tmp, mf.MANIFEST_NAME)
    return manifest


def command_line() -> str:
    """The command that is running, for the manifest (how to rebuild this set)."""
    args = [a if re.fullmatch(r"[\w@%+=:,./-]+", a) else repr(a) for a in sys.argv[1:]]
    return " ".join(["metaray", *args])
