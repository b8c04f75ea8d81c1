"""Task sources: one module per family, each yielding `SourceTask`s for the shard writer.

A source yields `SourceTask(key, split, table, meta)`: the task's rows as a `pyarrow.Table`
with exactly the family's columns (`pipeline.data.manifest.FAMILY_COLUMNS`), its split
(train / val / test, decided per task, never per row) and JSON-able task metadata that lands
in the manifest. Sources validate their options before yielding anything, so a bad option
fails before a single file is written.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import pyarrow as pa


class SourceTask(NamedTuple):
    key: str
    split: str
    table: pa.Table
    meta: dict[str, Any] = {}


class Prepared(NamedTuple):
    """A validated source: what to pass to `write_shard_set`."""

    family: str
    tasks: Any  # Iterator[SourceTask], lazy
    build: dict[str, Any]  # source, params, seed, versions
    split_hint: str  # which options give val/test their tasks (for error messages)
