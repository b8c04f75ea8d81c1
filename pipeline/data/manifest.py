"""`manifest.json`: the one file that says what a shard set holds.

```json
{"schema_version": 1, "family": "wordlang", "columns": {"text": "string", "freq": "float"},
 "created_utc": "...", "build": {"source": ..., "params": {...}, "seed": 0, "versions": {...},
 "build_id": "...", "command": "metaray shards build ..."},
 "files": [{"name": "train-00000-<id>.parquet", "split": "train", "sha256": "...", "rows": N,
            "bytes": B}],
 "tasks": [{"key": "en", "split": "train", "rows": 300, "file": "...", "offset": 0,
            "meta": {...}}]}
```

Each Parquet file holds a `task` column plus the family's columns, tasks in contiguous runs
(`offset`, `rows`). A task lives in exactly one split and one file. The manifest is written
last, so its presence means every file it names was complete when it was written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipeline.errors import ShardError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val", "test")
TASK_COLUMN = "task"

# The columns of a task's rows, per family (docs/CONTRACTS.md, "Rows of a task").
FAMILY_COLUMNS: dict[str, dict[str, pa.DataType]] = {
    "sinusoid": {"x": pa.float32(), "y": pa.float32()},
    "wordlang": {"text": pa.string(), "freq": pa.float32()},
    "text": {"text": pa.string()},
}


def type_name(t: pa.DataType) -> str:
    return str(t)


@dataclass(frozen=True)
class TaskEntry:
    key: str
    split: str
    rows: int
    file: str
    offset: int
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FileEntry:
    name: str
    split: str
    sha256: str
    rows: int
    bytes: int


@dataclass(frozen=True)
class Manifest:
    schema_version: int
    family: str
    columns: dict[str, str]
    build: dict[str, Any]
    files: dict[str, FileEntry]
    tasks: dict[str, TaskEntry]
    created_utc: str = ""

    def tasks_in(self, split: str) -> list[str]:
        return sorted(k for k, t in self.tasks.items() if t.split == split)

    def arrow_columns(self) -> dict[str, pa.DataType]:
        return dict(FAMILY_COLUMNS[self.family])

    def summary(self) -> dict[str, dict[str, int]]:
        out = {s: {"tasks": 0, "rows": 0, "bytes": 0, "files": 0} for s in SPLITS}
        for t in self.tasks.values():
            out[t.split]["tasks"] += 1
            out[t.split]["rows"] += t.rows
        for f in self.files.values():
            out[f.split]["bytes"] += f.bytes
            out[f.split]["files"] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "family": self.family,
            "columns": dict(self.columns),
            "created_utc": self.created_utc,
            "build": self.build,
            "files": [vars(f) for f in sorted(self.files.values(), key=lambda f: f.name)],
            "tasks": [vars(t) for t in sorted(self.tasks.values(), key=lambda t: (t.split, t.key))],
        }

    def to_json(self) -> bytes:
        """Readable JSON: one line per header field, file and task (diffs stay small)."""
        tree = self.to_dict()

        def one(v: Any) -> str:
            return json.dumps(v, ensure_ascii=False, sort_keys=False)

        lines = ["{"]
        for key in ("schema_version", "family", "columns", "created_utc", "build"):
            lines.append(f" {one(key)}: {one(tree[key])},")
        for key in ("files", "tasks"):
            items = [f"  {one(item)}" for item in tree[key]]
            end = "," if key == "files" else ""
            lines.append(f' "{key}": [\n' + ",\n".join(items) + f"\n ]{end}")
        lines.append("}")
        return ("\n".join(lines) + "\n").encode("utf-8")


def _need(tree: dict, key: str, kind: type | tuple, where: str) -> Any:
    if key not in tree:
        raise ShardError(f"{where}: field '{key}' is missing; rebuild the shard set")
    value = tree[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ShardError(
            f"{where}: field '{key}' = {value!r} should be {getattr(kind, '__name__', kind)}; "
            "rebuild the shard set"
        )
    return value


def parse(raw: bytes, where: str) -> Manifest:
    """Validate and load a manifest; every problem names `where` and the field."""
    tree = _json_object(raw, where)
    version = _schema_version(tree, where)
    family, columns = _family_columns(tree, where)
    build = _need(tree, "build", dict, where)
    files = _files(_need(tree, "files", list, where), where)
    tasks = _tasks(_need(tree, "tasks", list, where), files, where)
    per_file_rows = dict.fromkeys(files, 0)
    for t in tasks.values():
        per_file_rows[t.file] += t.rows
    for name, rows in per_file_rows.items():
        if rows != files[name].rows:
            raise ShardError(
                f"{where}: file {name} has rows={files[name].rows} but its tasks add up to "
                f"{rows}; rebuild the shard set"
            )
    return Manifest(
        schema_version=version,
        family=family,
        columns=columns,
        build=build,
        files=files,
        tasks=tasks,
        created_utc=str(tree.get("created_utc", "")),
    )


def _json_object(raw: bytes, where: str) -> dict[str, Any]:
    try:
        tree = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ShardError(
            f"{where}: not valid JSON ({exc}); the manifest is damaged: rebuild the shard set"
        ) from None
    if not isinstance(tree, dict):
        raise ShardError(f"{where}: expected a JSON object; rebuild the shard set")
    return tree


def _schema_version(tree: dict[str, Any], where: str) -> int:
    version = _need(tree, "schema_version", int, where)
    if version > SCHEMA_VERSION:
        raise ShardError(
            f"{where}: schema_version {version} is newer than this metaray reads "
            f"(up to {SCHEMA_VERSION}): upgrade metaray (pip install -U metaray), or rebuild "
            "the shard set with this version"
        )
    if version < 1:
        raise ShardError(f"{where}: schema_version {version} is not valid; rebuild the shard set")
    return version


def _family_columns(tree: dict[str, Any], where: str) -> tuple[str, dict[str, str]]:
    family = _need(tree, "family", str, where)
    if family not in FAMILY_COLUMNS:
        raise ShardError(
            f"{where}: family {family!r} is not one of {sorted(FAMILY_COLUMNS)}; "
            "rebuild with `metaray shards build {sinusoid,wordlang,text}`"
        )
    columns = _need(tree, "columns", dict, where)
    expected = {k: type_name(v) for k, v in FAMILY_COLUMNS[family].items()}
    if columns != expected:
        raise ShardError(
            f"{where}: field 'columns' = {columns} does not match family {family!r}, which "
            f"has {expected}; rebuild the shard set"
        )
    return family, columns


def _files(listed: list[Any], where: str) -> dict[str, FileEntry]:
    files: dict[str, FileEntry] = {}
    for i, f in enumerate(listed):
        at = f"{where}: files[{i}]"
        if not isinstance(f, dict):
            raise ShardError(f"{at}: expected an object; rebuild the shard set")
        entry = FileEntry(
            name=_need(f, "name", str, at),
            split=_need(f, "split", str, at),
            sha256=_need(f, "sha256", str, at),
            rows=_need(f, "rows", int, at),
            bytes=_need(f, "bytes", int, at),
        )
        if "/" in entry.name or entry.name.startswith("."):
            raise ShardError(f"{at}: name {entry.name!r} is not a plain file name")
        if entry.split not in SPLITS:
            raise ShardError(f"{at}: split {entry.split!r} is not one of {list(SPLITS)}")
        files[entry.name] = entry
    return files


def _tasks(listed: list[Any], files: dict[str, FileEntry], where: str) -> dict[str, TaskEntry]:
    tasks: dict[str, TaskEntry] = {}
    for i, t in enumerate(listed):
        at = f"{where}: tasks[{i}]"
        if not isinstance(t, dict):
            raise ShardError(f"{at}: expected an object; rebuild the shard set")
        entry = TaskEntry(
            key=_need(t, "key", str, at),
            split=_need(t, "split", str, at),
            rows=_need(t, "rows", int, at),
            file=_need(t, "file", str, at),
            offset=_need(t, "offset", int, at),
            meta=t.get("meta") or {},
        )
        if entry.split not in SPLITS:
            raise ShardError(
                f"{at} ({entry.key}): split {entry.split!r} is not one of {list(SPLITS)}"
            )
        if entry.key in tasks:
            raise ShardError(f"{at}: task {entry.key!r} appears twice; rebuild the shard set")
        if entry.file not in files:
            raise ShardError(
                f"{at} ({entry.key}): file {entry.file!r} is not listed under 'files'; "
                "rebuild the shard set"
            )
        if files[entry.file].split != entry.split:
            raise ShardError(
                f"{at} ({entry.key}): split {entry.split!r} differs from its file's "
                f"{files[entry.file].split!r}; rebuild the shard set"
            )
        tasks[entry.key] = entry
    return tasks
