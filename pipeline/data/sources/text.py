"""Your own corpora: a directory of UTF-8 text files (one task per file, one example per
line), or a Parquet file with a task column and a text column.

Blank lines are skipped; a UTF-8 byte-order mark and Windows line ends are accepted. A task's
key is its file's path relative to the directory, without the extension (`news/fr.txt` ->
`news/fr`). Splits are by task: explicit `val_keys`/`test_keys`, else `val_fraction` and
`test_fraction` of the tasks, chosen by ranking the tasks on sha256(seed, key) (so a task's
split is deterministic and rarely changes when tasks are added). Files are read while the
shards are written; a bad file stops the build, and the partial output is removed.
"""

from __future__ import annotations

import hashlib
import posixpath
from collections.abc import Iterator, Sequence
from fnmatch import fnmatch
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.data.sources import Prepared, SourceTask
from pipeline.data.storage import Location, resolve
from pipeline.errors import ShardError

FAMILY = "text"
PARQUET_SUFFIXES = (".parquet", ".pq")


def decode_lines(raw: bytes, where: str) -> list[str]:
    """UTF-8 bytes -> non-blank lines; a decoding error names the file, line and byte."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        bad = raw[exc.start : exc.start + 1].hex()
        raise ShardError(
            f"{where}: line {line} is not valid UTF-8 (byte 0x{bad} at column {col}): save the "
            f"file as UTF-8, e.g. `iconv -f latin1 -t utf-8 FILE > FILE.utf8`, or remove it"
        ) from None
    return [ln.rstrip("\r") for ln in text.split("\n") if ln.strip()]


def _keys(value: str | Sequence[str] | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    return [v.strip() for v in value if v.strip()]


def assign_splits(
    keys: list[str],
    *,
    val_fraction: float,
    test_fraction: float,
    val_keys: Sequence[str] | None,
    test_keys: Sequence[str] | None,
    seed: int,
    where: str,
) -> dict[str, str]:
    """Task key -> split. Explicit keys first, then fractions over the rest (hash-ranked)."""
    for name, frac in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0.0 <= frac < 1.0:
            raise ShardError(f"{where}: {name}={frac} must be in [0, 1)")
    known = set(keys)
    chosen: dict[str, list[str]] = {}
    for split, given in (("val", val_keys), ("test", test_keys)):
        for k in given or []:
            if k not in known:
                raise ShardError(
                    f"{where}: --{split}-keys names {k!r}, which is not a task here "
                    f"(tasks: {', '.join(sorted(keys)[:8])}{', ...' if len(keys) > 8 else ''})"
                )
        chosen[split] = list(dict.fromkeys(given or []))
    both = set(chosen["val"]) & set(chosen["test"])
    if both:
        raise ShardError(f"{where}: {sorted(both)} are in both --val-keys and --test-keys")
    rest = [k for k in keys if k not in set(chosen["val"]) | set(chosen["test"])]
    rest.sort(key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())
    n = len(keys)
    for split, frac, given in (("test", test_fraction, test_keys), ("val", val_fraction, val_keys)):
        if given is not None:
            continue
        want = max(1, round(frac * n)) if frac > 0 else 0
        if want == 0:
            raise ShardError(
                f"{where}: the split leaves no {split} tasks (--{split}-fraction=0): "
                f"pass --{split}-fraction > 0 or --{split}-keys"
            )
        chosen[split], rest = rest[:want], rest[want:]
    if not rest:
        raise ShardError(
            f"{where}: {n} task(s) leave no train tasks after val ({len(chosen['val'])}) and "
            f"test ({len(chosen['test'])}): a shard set needs at least 3 tasks (files); add "
            "tasks or lower --val-fraction/--test-fraction"
        )
    if not chosen["val"] or not chosen["test"]:
        empty = "val" if not chosen["val"] else "test"
        raise ShardError(
            f"{where}: the split leaves no {empty} tasks: name at least one with --{empty}-keys"
        )
    out = dict.fromkeys(rest, "train")
    out.update(dict.fromkeys(chosen["val"], "val"))
    out.update(dict.fromkeys(chosen["test"], "test"))
    return out


def _table(lines: list[str]) -> pa.Table:
    return pa.table({"text": pa.array(lines, pa.string())})


def _fingerprint(entries: list[tuple[str, pafs.FileInfo]]) -> str:
    """Names, sizes and modification times: a changed input is rebuilt, not "up to date"."""
    h = hashlib.sha256()
    for rel, info in sorted(entries, key=lambda e: e[0]):
        h.update(f"{rel}\0{info.size}\0{info.mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _list_dir(loc: Location, glob: str) -> dict[str, tuple[str, pafs.FileInfo]]:
    """Task key -> (path relative to the directory, file info)."""
    sel = pafs.FileSelector(loc.root, recursive=True)
    infos = loc._call("list", None, lambda: loc.fs.get_file_info(sel))
    found: dict[str, tuple[str, pafs.FileInfo]] = {}
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = posixpath.relpath(info.path, loc.root)
        if any(part.startswith(".") for part in rel.split("/")) or not fnmatch(
            posixpath.basename(rel), glob
        ):
            continue
        key = posixpath.splitext(rel)[0]
        if key in found:
            raise ShardError(
                f"{loc.uri}: {found[key][0]} and {rel} would both be task {key!r}: rename one"
            )
        found[key] = (rel, info)
    return found


def _dir_tasks(
    loc: Location, files: dict[str, tuple[str, pafs.FileInfo]], splits: dict[str, str]
) -> Iterator[SourceTask]:
    """One task per file. A file that is not UTF-8 (or has no lines) does not stop the
    others being read: every such file is reported together, after the last one."""
    problems: list[str] = []
    for key in sorted(files):
        rel = files[key][0]
        where = loc.display(rel)
        try:
            lines = decode_lines(loc.read_bytes(rel), where)
        except ShardError as exc:
            problems.append(str(exc))
            continue
        if not lines:
            problems.append(f"{where} has no non-blank lines: add examples or remove the file")
        elif not problems:  # once one file is bad nothing is written: just read on
            yield SourceTask(key, splits[key], _table(lines), {"source": rel})
    if len(problems) == 1:
        raise ShardError(problems[0])
    if problems:
        raise ShardError(
            f"{loc.uri}: {len(problems)} of {len(files)} files cannot be used:\n  "
            + "\n  ".join(problems)
        )


def _read_parquet(loc: Location, task_column: str, text_column: str) -> pa.Table:
    where = loc.uri
    raw = loc.read_bytes("")
    try:
        pf = pq.ParquetFile(pa.BufferReader(raw))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise ShardError(
            f"{where} is not a readable Parquet file ({str(exc).splitlines()[0]}): "
            "give a valid Parquet file or a directory of text files"
        ) from None
    schema = pf.schema_arrow
    for flag, col in (("--task-column", task_column), ("--text-column", text_column)):
        if col not in schema.names:
            raise ShardError(
                f"{where} has no column {col!r} (columns: {', '.join(schema.names)}): "
                f"pass {flag} NAME"
            )
        t = schema.field(col).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t)):
            hint = " (cast it to string first)" if col == task_column else ""
            raise ShardError(f"{where}: column {col!r} has type {t}, expected string{hint}")
    try:
        table = pf.read(columns=[task_column, text_column])
    except (pa.ArrowException, OSError) as exc:
        raise ShardError(f"{where}: could not read the Parquet data ({exc})") from None
    for col in (task_column, text_column):
        nulls = table.column(col).null_count
        if nulls:
            first = pc.index(pc.is_null(table.column(col)), True).as_py()
            raise ShardError(
                f"{where}: column {col!r} has {nulls} null value(s) (first at row {first}): "
                "drop or fill them"
            )
    table = table.cast(pa.schema([(task_column, pa.string()), (text_column, pa.string())]))
    order = pc.sort_indices(table, sort_keys=[(task_column, "ascending")])
    return table.take(order)


def _parquet_tasks(
    table: pa.Table, task_column: str, text_column: str, splits: dict[str, str]
) -> Iterator[SourceTask]:
    tasks = table.column(task_column)
    texts = table.column(text_column)
    start, n = 0, table.num_rows
    while start < n:
        key = tasks[start].as_py()
        end = start + pc.sum(pc.equal(tasks.slice(start), key)).as_py()
        chunk = texts.slice(start, end - start)
        yield SourceTask(key, splits[key], pa.table({"text": chunk.combine_chunks()}), {})
        start = end


HINT = "pass --val-fraction/--test-fraction > 0 or --val-keys/--test-keys"


def prepare(
    input: str,
    *,
    glob: str = "*",
    task_column: str = "task",
    text_column: str = "text",
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    val_keys: str | Sequence[str] | None = None,
    test_keys: str | Sequence[str] | None = None,
    seed: int = 0,
    s3_endpoint: str | None = None,
) -> Prepared:
    loc = resolve(input, s3_endpoint=s3_endpoint)
    info = loc._call("check", None, lambda: loc.fs.get_file_info(loc.root))
    split_opts = dict(
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        val_keys=_keys(val_keys),
        test_keys=_keys(test_keys),
        seed=seed,
        where=input,
    )
    params = {
        "input": input,
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "val_keys": _keys(val_keys),
        "test_keys": _keys(test_keys),
        "seed": seed,
    }
    if info.type == pafs.FileType.NotFound:
        loc.check_bucket()
        raise ShardError(
            f"{input} does not exist: give a directory of UTF-8 text files (one per task) or a "
            "Parquet file with task and text columns"
        )
    if info.type == pafs.FileType.File:
        return _prepare_parquet(loc, info, input, task_column, text_column, split_opts, params)
    files = _list_dir(loc, glob)
    if not files:
        raise ShardError(
            f"{input} is an empty directory (no files matching {glob!r}): put one UTF-8 text "
            "file per task there (one example per line), or pass a Parquet file"
        )
    splits = assign_splits(sorted(files), **split_opts)
    params.update(glob=glob, files=len(files), fingerprint=_fingerprint(list(files.values())))
    build = {"source": "text-directory", "params": params, "seed": seed, "versions": {}}
    return Prepared(FAMILY, _dir_tasks(loc, files, splits), build, HINT)


def _prepare_parquet(
    loc: Location,
    info: pafs.FileInfo,
    input: str,
    task_column: str,
    text_column: str,
    split_opts: dict[str, Any],
    params: dict[str, Any],
) -> Prepared:
    """One Parquet file with task and text columns: its tasks, split by key."""
    if not input.lower().endswith(PARQUET_SUFFIXES):
        raise ShardError(
            f"{input} is a single file: give a directory of UTF-8 text files (one task per "
            "file), or a Parquet file (.parquet) with task and text columns"
        )
    table = _read_parquet(loc, task_column, text_column)
    keys = pc.unique(table.column(task_column)).to_pylist()
    if not keys:
        raise ShardError(f"{input} has no rows: add rows with task and text columns")
    splits = assign_splits(sorted(keys), **split_opts)
    params = {
        **params,
        "task_column": task_column,
        "text_column": text_column,
        "fingerprint": _fingerprint([("", info)]),
    }
    build = {"source": "parquet", "params": params, "seed": params["seed"], "versions": {}}
    return Prepared(FAMILY, _parquet_tasks(table, task_column, text_column, splits), build, HINT)
