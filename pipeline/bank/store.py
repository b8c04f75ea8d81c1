"""Bank persistence: snapshots (Parquet + safetensors + manifest) and a write-ahead log.

Layout under a root (a local directory or `s3://bucket/prefix`):

    snapshots/snap-<seq>/...                 a snapshot (snapshots.py), manifest.json LAST
    base.safetensors                         the bank's base, written before the first record
                                             that needs it (format 3 WAL, format 2 snapshots;
                                             base_file.py)
    wal/<first seq>.wal                      WAL segment (format 3; format 2 still read)
    wal/<seq>.safetensors                    WAL record (format 1, before group commit; read)

The pieces: root_files.py (durable atomic writes and reads under the root), wal_frames.py (the
WAL's bytes), wal_log.py (its segment files: group commit, replay), snapshots.py, and this
`BankStore`, which ties them together and is what the bank service uses.

PARAMETERS STAY ON DISK: reading a snapshot or a WAL record loads keys, descriptors and metadata
and returns, for the parameter rows, only where they are (`param_loc`: file, byte offset of the
first row, dtype, width, delta or not, base digest); the bank reads a row when a query hits it
(`read_at`, through `params.ParamRows`' cache).

Every acknowledged write is either in a snapshot or in a WAL record after that snapshot's
`wal_upto`. WAL files are kept back to the PREVIOUS snapshot's `wal_upto`, so if the latest
snapshot is corrupt, the previous one plus the WAL still restores every acknowledged entry.
Nothing here unpickles: JSON, Parquet and safetensors only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from pipeline.bank.base_file import base_bytes, load_base
from pipeline.bank.formats import FORMAT
from pipeline.bank.root_files import RootFiles, filesystem
from pipeline.bank.snapshots import META_TYPES, Snapshots
from pipeline.bank.wal_frames import (
    WAL_FORMAT,
    WAL_MAGIC,
    WAL_READ,
    WAL_SUFFIX,
    decode_segment,
    encode_group,
    frame_params_offset,
)
from pipeline.bank.wal_log import SEGMENT_BYTES, WalLog
from pipeline.errors import BankError

# Callers import these from here (the names lived in this module before it was split).
__all__ = [
    "FORMAT",
    "META_TYPES",
    "SEGMENT_BYTES",
    "WAL_FORMAT",
    "WAL_MAGIC",
    "WAL_READ",
    "WAL_SUFFIX",
    "BankStore",
    "Restored",
    "decode_segment",
    "encode_group",
    "filesystem",
    "frame_params_offset",
]


@dataclass
class Restored:
    cols: dict | None  # index columns from the snapshot (None: no snapshot); its rows: param_loc
    snapshot_seq: int  # -1: none
    wal_upto: int  # WAL records <= this are in the snapshot
    clock: int
    records: list[tuple[int, dict]] = field(default_factory=list)  # WAL to replay, in order
    warnings: list[str] = field(default_factory=list)
    torn: list[tuple[str, int]] = field(default_factory=list)  # (segment, valid bytes)
    base: np.ndarray | None = None  # the bank's base (root file, else the snapshot's copy)


class BankStore:
    """Snapshots and WAL records under one root URI."""

    def __init__(self, uri: str, *, s3_endpoint: str | None = None, keep: int = 2) -> None:
        self.files = RootFiles(uri, s3_endpoint)
        self.uri, self.fs, self.root = self.files.uri, self.files.fs, self.files.root
        self.keep = max(2, keep)
        self.wal = WalLog(self.files)
        self.snapshots = Snapshots(self.files)
        for sub in ("snapshots", "wal"):
            self.fs.create_dir(f"{self.root}/{sub}", recursive=True)

    # ---- files -----------------------------------------------------------------------------
    def read_at(self, path: str, offset: int, n: int) -> bytes:
        """`n` bytes at `offset` of `path` (a parameter row), the file kept open."""
        return self.files.read_at(path, offset, n)

    def close_readers(self, keep: set[str] = frozenset()) -> None:
        self.files.close_readers(keep)

    # ---- the base --------------------------------------------------------------------------
    def write_base(self, base: np.ndarray, digest: str) -> None:
        """The bank's base, durably, before any record that is a delta from it."""
        self.files.write(f"{self.root}/base.safetensors", base_bytes(base, digest))

    def read_base(self) -> np.ndarray | None:
        path = f"{self.root}/base.safetensors"
        if not self.files.is_file(path):
            return None
        return load_base(self.files.read(path), f"{self.uri}/base.safetensors")

    # ---- write-ahead log (wal_log.py) ------------------------------------------------------
    def wal_files(self) -> list[tuple[int, str]]:
        return self.wal.names()

    def wal_seqs(self) -> list[int]:
        return [seq for seq, _ in self.wal.names()]

    def append_group(
        self, records: list[tuple[int, dict]], meta: dict | None = None
    ) -> tuple[str, int]:
        """One group, one frame, ONE fsync before any batch of it is acknowledged; returns
        (file, byte offset of the group's first parameter row). See `WalLog.append_group`."""
        return self.wal.append_group(records, meta)

    def roll_wal(self) -> None:
        self.wal.roll()

    def read_wal_file(self, name: str) -> tuple[list[tuple[int, dict]], int | None]:
        return self.wal.read_file(name)

    def truncate_torn(self, name: str, valid: int) -> None:
        self.wal.truncate_torn(name, valid)

    def repair_torn(self, torn: list[tuple[str, int]]) -> None:
        """`truncate_torn` each (segment, valid bytes) a restore reported."""
        for name, valid in torn:
            self.wal.truncate_torn(name, valid)

    # ---- snapshots (snapshots.py) ----------------------------------------------------------
    def snapshot_seqs(self) -> list[int]:
        return self.snapshots.seqs()

    def snapshot_name(self, seq: int) -> str:
        return self.snapshots.name(seq)

    def manifest(self, seq: int) -> dict:
        return self.snapshots.manifest(seq)

    def load_snapshot(self, seq: int) -> tuple[dict, dict]:
        return self.snapshots.load(seq)

    def write_snapshot(
        self,
        cols: dict,
        *,
        wal_upto: int,
        clock: int,
        dtype: str,
        rows: Iterable[np.ndarray] = (),
        width: int = 0,
        base: np.ndarray | None = None,
    ) -> tuple[int, str, int]:
        """Write a snapshot (manifest last), then drop what no restore can need any more.
        `rows`: the entries' parameter rows in `dtype`, an iterable of `[m, width]` chunks in
        key order (streamed to params.safetensors); `base`: given when they are float16 deltas.
        Returns (seq, params file, byte offset of its first row): the entries' new locators."""
        self.roll_wal()  # later puts go to a new segment: the ones before can be collected
        seq, path, at = self.snapshots.write(
            cols, wal_upto=wal_upto, clock=clock, dtype=dtype, rows=rows, width=width, base=base
        )
        self._collect(seq)
        return seq, path, at

    def _collect(self, newest: int) -> None:
        """Keep `keep` snapshots and the WAL after the oldest kept snapshot's wal_upto."""
        floor = self.snapshots.drop_older(newest, self.keep)
        if floor is not None:
            self.wal.drop_upto(floor)

    # ---- restore ---------------------------------------------------------------------------
    def restore(self) -> Restored:
        """Latest readable snapshot + every later WAL record; damaged snapshots are skipped
        with a warning naming them (older ones still restore everything, see module doc)."""
        warnings: list[str] = []
        out = Restored(None, -1, -1, 0)
        for seq in reversed(self.snapshot_seqs()):
            try:
                cols, m = self.load_snapshot(seq)
            except BankError as exc:
                warnings.append(str(exc))
                continue
            out = Restored(cols, seq, int(m["wal_upto"]), int(m["clock"]))
            break
        out.records, out.torn = self.wal.read_after(out.wal_upto, warnings)
        out.warnings = warnings
        out.base = self.read_base()
        if out.base is None and out.cols is not None:
            out.base = out.cols.get("base")  # an export: its snapshot carries the base
        return out

    def __del__(self) -> None:
        self.roll_wal()
        self.close_readers()

    def clear(self) -> None:
        self.roll_wal()  # never append to a segment that is about to be unlinked
        self.close_readers()
        for sub in ("snapshots", "wal"):
            self.fs.delete_dir_contents(f"{self.root}/{sub}", missing_dir_ok=True)
        base = f"{self.root}/base.safetensors"
        if self.files.is_file(base):
            self.fs.delete_file(base)  # a cleared bank takes the base of its next first put
