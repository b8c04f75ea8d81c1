"""Reading Arrow task shards: `open_shard_set(uri) -> ShardSet` (local directory or s3://).

Opening reads and validates `manifest.json` only. A Parquet file is fetched the first time
one of its tasks is read in this process: its size and sha256 are checked against the
manifest, its schema against the family, then its columns are kept (read-only numpy arrays)
in a per-process cache, so reading a task afterwards is a slice. Writing lives in
`pipeline/data/build.py` (`write_shard_set`).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data import manifest as mf
from pipeline.data.storage import Location, on_s3_exit, resolve
from pipeline.errors import EpisodeError, ShardError

__all__ = [
    "ShardSet",
    "clear_cache",
    "open_shard_set",
]


@dataclass
class _Loaded:
    columns: dict[str, np.ndarray]
    nbytes: int


_CACHE: OrderedDict[tuple[str, str], _Loaded] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def _cache_limit() -> int:
    return int(float(os.environ.get("METARAY_SHARD_CACHE_MB", "2048")) * 2**20)


def clear_cache() -> None:
    """Forget every loaded file (the next read fetches and verifies it again)."""
    with _CACHE_LOCK:
        _CACHE.clear()


on_s3_exit(clear_cache)  # cached tables hold S3 clients, which must go before the SDK does


def _rebuild_hint(m: mf.Manifest | None) -> str:
    cmd = (m.build.get("command") if m else None) or "metaray shards build ..."
    return f"rebuild the shard set ({cmd})"


def load_file(loc: Location, m: mf.Manifest, entry: mf.FileEntry) -> _Loaded:
    """Fetch one Parquet file and check it completely against the manifest."""
    where = loc.display(entry.name)
    table = _read_parquet(where, _fetch_verified(loc, m, entry), m)
    _check_schema(where, table, m)
    _check_rows(where, table, m, entry)
    columns: dict[str, np.ndarray] = {}
    for name in m.columns:
        arr = table.column(name).to_numpy(zero_copy_only=False)
        arr.flags.writeable = False
        columns[name] = arr
    return _Loaded(columns, nbytes=table.nbytes)


def _fetch_verified(loc: Location, m: mf.Manifest, entry: mf.FileEntry) -> bytes:
    """The file's bytes, present, of the manifest's size and sha256."""
    where = loc.display(entry.name)
    try:
        raw = loc.read_bytes(entry.name)
    except FileNotFoundError:
        raise ShardError(
            f"{where} is listed in the manifest but missing: the shard set is incomplete; "
            + _rebuild_hint(m)
        ) from None
    if len(raw) != entry.bytes:
        state = "truncated" if len(raw) < entry.bytes else "longer than written"
        raise ShardError(
            f"{where} is {state}: {len(raw)} bytes, the manifest says {entry.bytes}; "
            + _rebuild_hint(m)
        )
    digest = hashlib.sha256(raw).hexdigest()
    if digest != entry.sha256:
        raise ShardError(
            f"{where}: checksum mismatch (sha256 {digest[:16]}..., the manifest says "
            f"{entry.sha256[:16]}...): the file changed or was corrupted after the build; "
            + _rebuild_hint(m)
        )
    return raw


def _read_parquet(where: str, raw: bytes, m: mf.Manifest) -> pa.Table:
    try:
        return pq.read_table(pa.BufferReader(raw))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ShardError(
            f"{where} is not a readable Parquet file ({str(exc).splitlines()[0]}); "
            + _rebuild_hint(m)
        ) from None


def _check_schema(where: str, table: pa.Table, m: mf.Manifest) -> None:
    """Exactly the family's columns (plus the task column), of their types."""
    expected = {mf.TASK_COLUMN: pa.string(), **m.arrow_columns()}
    got = {f.name: f.type for f in table.schema}
    for name, want in expected.items():
        if name not in got:
            raise ShardError(
                f"{where}: column {name!r} is missing (columns: {sorted(got)}); a {m.family} "
                f"shard needs {sorted(expected)}; " + _rebuild_hint(m)
            )
        if got[name] != want:
            raise ShardError(
                f"{where}: column {name!r} has type {got[name]}, a {m.family} shard needs "
                f"{want}; " + _rebuild_hint(m)
            )
    extra = sorted(set(got) - set(expected))
    if extra:
        raise ShardError(
            f"{where}: unexpected column(s) {extra} for family {m.family} "
            f"(expected {sorted(expected)}); " + _rebuild_hint(m)
        )


def _check_rows(where: str, table: pa.Table, m: mf.Manifest, entry: mf.FileEntry) -> None:
    """The manifest's row count, and each of its tasks where the manifest puts it."""
    if table.num_rows != entry.rows:
        raise ShardError(
            f"{where}: {table.num_rows} rows, the manifest says {entry.rows}; " + _rebuild_hint(m)
        )
    task_col = table.column(mf.TASK_COLUMN)
    for t in m.tasks.values():
        if t.file != entry.name:
            continue
        first, last = task_col[t.offset].as_py(), task_col[t.offset + t.rows - 1].as_py()
        if first != t.key or last != t.key:
            raise ShardError(
                f"{where}: rows {t.offset}..{t.offset + t.rows - 1} should hold task {t.key!r} "
                f"but hold {first!r}..{last!r}; " + _rebuild_hint(m)
            )


class ShardSet:
    """A validated manifest plus lazy, verified access to its tasks' rows."""

    def __init__(self, loc: Location, manifest: mf.Manifest):
        self._loc = loc
        self.manifest = manifest

    def __repr__(self) -> str:
        s = self.manifest.summary()
        counts = ", ".join(f"{k} {v['tasks']}" for k, v in s.items())
        return f"ShardSet({self.uri!r}, family={self.family!r}, tasks: {counts})"

    @property
    def uri(self) -> str:
        return self._loc.uri

    @property
    def family(self) -> str:
        return self.manifest.family

    def tasks(self, split: str) -> list[str]:
        if split not in mf.SPLITS:
            raise ShardError(f"split {split!r} is not one of {list(mf.SPLITS)}")
        return self.manifest.tasks_in(split)

    def _entry(self, task: str) -> mf.TaskEntry:
        try:
            return self.manifest.tasks[task]
        except KeyError:
            near = difflib.get_close_matches(str(task), list(self.manifest.tasks), n=3)
            hint = f"; did you mean {', '.join(map(repr, near))}?" if near else ""
            raise ShardError(f"{self.uri}: no task {task!r} in this shard set{hint}") from None

    def rows(self, task: str) -> int:
        return self._entry(task).rows

    def task_meta(self, task: str) -> dict[str, Any]:
        return dict(self._entry(task).meta)

    def _file(self, name: str) -> _Loaded:
        entry = self.manifest.files[name]
        key = (self._loc.display(name), entry.sha256)
        with _CACHE_LOCK:
            hit = _CACHE.get(key)
            if hit is not None:
                _CACHE.move_to_end(key)
                return hit
        loaded = load_file(self._loc, self.manifest, entry)
        with _CACHE_LOCK:
            _CACHE[key] = loaded
            total = sum(v.nbytes for v in _CACHE.values())
            while len(_CACHE) > 1 and total > _cache_limit():
                _, old = _CACHE.popitem(last=False)
                total -= old.nbytes
        return loaded

    def read_task(self, task: str) -> dict[str, np.ndarray]:
        """Column name -> read-only 1-D array, all of the task's rows (docs/CONTRACTS.md)."""
        t = self._entry(task)
        cols = self._file(t.file).columns
        return {name: arr[t.offset : t.offset + t.rows] for name, arr in cols.items()}

    def min_rows(self, split: str) -> int:
        return min((self.manifest.tasks[k].rows for k in self.tasks(split)), default=0)

    def check_min_rows(self, split: str, n: int, *, what: str = "an episode") -> None:
        """Raise EpisodeError unless every task of `split` has at least `n` rows."""
        short = [(k, self.manifest.tasks[k].rows) for k in self.tasks(split)]
        short = [(k, r) for k, r in short if r < n]
        if not short:
            return
        listed = ", ".join(f"{k!r} ({r} rows)" for k, r in short[:5])
        more = f" and {len(short) - 5} more" if len(short) > 5 else ""
        raise EpisodeError(
            f"{self.uri}: {len(short)} {split} task(s) have fewer than the {n} rows {what} "
            f"needs: {listed}{more}. Ask for fewer examples (data.k_support + data.k_query), "
            "or rebuild the shards with more rows per task (--points / --top-n / longer files)"
        )

    def summary(self) -> dict[str, dict[str, int]]:
        return self.manifest.summary()

    def verify(self) -> list[str]:
        """Fetch every file and check size, sha256, schema and task layout; return problems."""
        problems = []
        for name in sorted(self.manifest.files):
            try:
                load_file(self._loc, self.manifest, self.manifest.files[name])
            except ShardError as exc:
                problems.append(str(exc))
        return problems

    def leftovers(self) -> list[str]:
        """Files under the root that the manifest does not name (other builds' debris)."""
        return [
            n
            for n in self._loc.list_names()
            if n != mf.MANIFEST_NAME and n not in self.manifest.files
        ]


def open_shard_set(uri: str, *, s3_endpoint: str | None = None) -> ShardSet:
    """Open a shard set: read and validate its manifest (files are verified when first read).

    `uri` is the directory or `s3://bucket/prefix` (a path ending in `/manifest.json` is
    taken as its directory).
    """
    if uri.rstrip("/").endswith("/" + mf.MANIFEST_NAME):
        uri = uri.rstrip("/")[: -len(mf.MANIFEST_NAME) - 1]
    loc = resolve(uri, s3_endpoint=s3_endpoint)
    where = loc.display(mf.MANIFEST_NAME)
    try:
        raw = loc.read_bytes(mf.MANIFEST_NAME)
    except FileNotFoundError:
        loc.check_bucket()
        if not loc.root_exists():
            raise ShardError(
                f"{uri} does not exist: build it with `metaray shards build "
                f"{{sinusoid,wordlang,text}} --out {uri}` or fix the path"
            ) from None
        names = loc.list_names()
        state = f"has {len(names)} file(s) but no manifest.json" if names else "is empty"
        raise ShardError(
            f"{uri} {state}: it is not a shard set, or its build was interrupted (a build "
            f"writes manifest.json last); build it with `metaray shards build "
            f"{{sinusoid,wordlang,text}} --out {uri}`"
        ) from None
    return ShardSet(loc, mf.parse(raw, where))
