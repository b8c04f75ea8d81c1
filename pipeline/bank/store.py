"""Bank persistence: snapshots (Parquet + safetensors + manifest) and a write-ahead log.

Layout under a root (a local directory or `s3://bucket/prefix`):

    snapshots/snap-<seq>/meta.parquet        keys, descriptors, step, support, loss, last_used
    snapshots/snap-<seq>/params.safetensors  one tensor "params" [n, P] (float32 or float16)
    snapshots/snap-<seq>/manifest.json       written LAST: counts, wal_upto, sha256 of each file
    wal/<seq>.safetensors                    one record per acknowledged `put` batch

A snapshot without a manifest is incomplete and ignored. Each WAL record is one atomic file
(local: temp + fsync + rename + fsync dir; S3: one PUT), written before `put` returns, so every
acknowledged write is either in a snapshot or in a WAL record after that snapshot's `wal_upto`.
WAL records are kept back to the PREVIOUS snapshot's `wal_upto`, so if the latest snapshot is
corrupt, the previous one plus the WAL still restores every acknowledged entry.
Nothing here unpickles: JSON, Parquet and safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from pipeline.errors import BankError

FORMAT = 1
META_TYPES = {"step": np.int64, "support": np.int32, "loss": np.float32, "last_used": np.int64}
_SEQ_WIDTH = 12


def filesystem(uri: str, s3_endpoint: str | None = None) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local directory or s3://bucket/prefix (endpoint override)."""
    if uri.startswith("s3://"):
        endpoint = s3_endpoint or os.environ.get("AWS_ENDPOINT_URL")
        kwargs: dict = {}
        if endpoint:
            scheme, _, host = endpoint.rpartition("://")
            kwargs = {"endpoint_override": host or endpoint, "scheme": scheme or "https"}
        region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), uri[len("s3://") :].rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Restored:
    cols: dict | None  # index columns from the snapshot (None: no snapshot)
    snapshot_seq: int  # -1: none
    wal_upto: int  # WAL records <= this are in the snapshot
    clock: int
    records: list[tuple[int, dict]] = field(default_factory=list)  # WAL to replay, in order
    warnings: list[str] = field(default_factory=list)


class BankStore:
    """Snapshots and WAL records under one root URI."""

    def __init__(self, uri: str, *, s3_endpoint: str | None = None, keep: int = 2) -> None:
        self.uri = uri.rstrip("/")
        self.fs, self.root = filesystem(uri, s3_endpoint)
        self.keep = max(2, keep)
        self._local = isinstance(self.fs, pafs.LocalFileSystem)
        for sub in ("snapshots", "wal"):
            self.fs.create_dir(f"{self.root}/{sub}", recursive=True)

    # ---- low-level I/O --------------------------------------------------------------------
    def _write(self, path: str, data: bytes) -> None:
        if self._local:
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            dfd = os.open(os.path.dirname(path), os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        else:  # one PUT: the object appears whole or not at all
            with self.fs.open_output_stream(path) as f:
                f.write(data)

    def _read(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def _list(self, sub: str) -> list[pafs.FileInfo]:
        sel = pafs.FileSelector(f"{self.root}/{sub}", allow_not_found=True)
        return self.fs.get_file_info(sel)

    # ---- write-ahead log ------------------------------------------------------------------
    def wal_seqs(self) -> list[int]:
        out = []
        for info in self._list("wal"):
            name = info.base_name
            if name.endswith(".safetensors") and ".tmp-" not in name:
                out.append(int(name.split(".")[0]))
        return sorted(out)

    def append_wal(self, seq: int, batch: dict) -> None:
        """Durably write one put batch before it is acknowledged."""
        tensors = {k: np.ascontiguousarray(batch[k]) for k in ("descriptor", "params")}
        for k, dt in (("step", np.int64), ("support", np.int32), ("loss", np.float32)):
            tensors[k] = np.ascontiguousarray(np.asarray(batch[k], dt))
        meta = {"keys": json.dumps(list(batch["keys"])), "format": str(FORMAT)}
        self._write(f"{self.root}/wal/{seq:0{_SEQ_WIDTH}d}.safetensors", st_save(tensors, meta))

    def read_wal(self, seq: int) -> dict:
        path = f"{self.root}/wal/{seq:0{_SEQ_WIDTH}d}.safetensors"
        data = self._read(path)
        try:
            tensors = st_load(data)
            header_len = int.from_bytes(data[:8], "little")
            header = json.loads(data[8 : 8 + header_len])
            keys = json.loads(header["__metadata__"]["keys"])
        except Exception as exc:  # any decoding failure means a damaged record
            raise BankError(
                f"bank WAL record {self.uri}/wal/{seq:0{_SEQ_WIDTH}d}.safetensors is corrupt "
                f"({exc}); move it aside to restore the entries before it"
            ) from None
        return {"keys": keys, **tensors}

    # ---- snapshots ------------------------------------------------------------------------
    def snapshot_seqs(self) -> list[int]:
        out = []
        for info in self._list("snapshots"):
            if info.type == pafs.FileType.Directory and info.base_name.startswith("snap-"):
                manifest = self.fs.get_file_info(f"{info.path}/manifest.json")
                if manifest.type == pafs.FileType.File:
                    out.append(int(info.base_name[len("snap-") :]))
        return sorted(out)

    def _snap_dir(self, seq: int) -> str:
        return f"{self.root}/snapshots/snap-{seq:0{_SEQ_WIDTH}d}"

    def snapshot_name(self, seq: int) -> str:
        return f"{self.uri}/snapshots/snap-{seq:0{_SEQ_WIDTH}d}"

    def write_snapshot(self, cols: dict, *, wal_upto: int, clock: int, dtype: str) -> int:
        """Write a snapshot (manifest last), then drop what no restore can need any more."""
        seqs = self.snapshot_seqs()
        seq = (seqs[-1] + 1) if seqs else 0
        d = self._snap_dir(seq)
        self.fs.create_dir(d, recursive=True)
        keys = list(cols["keys"])
        n = len(keys)
        desc = np.asarray(cols.get("descriptor", np.zeros((0, 0), np.float32)), np.float32)
        dim = desc.shape[1] if n else 0
        if n:
            descriptor = pa.FixedSizeListArray.from_arrays(pa.array(desc.reshape(-1)), dim)
        else:
            descriptor = pa.array([], pa.list_(pa.float32()))
        table = pa.table(
            {
                "key": pa.array(keys, pa.string()),
                "descriptor": descriptor,
                **{
                    m: pa.array(np.asarray(cols.get(m, []), dt)[:n]) for m, dt in META_TYPES.items()
                },
            }
        )
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        meta_bytes = sink.getvalue().to_pybytes()
        params = np.ascontiguousarray(cols["params"]) if n else np.zeros((0, 0), np.float32)
        param_bytes = st_save({"params": params}, {"format": str(FORMAT)})
        files = {"meta.parquet": meta_bytes, "params.safetensors": param_bytes}
        for name, data in files.items():
            self._write(f"{d}/{name}", data)
        manifest = {
            "format": FORMAT,
            "seq": seq,
            "count": n,
            "dim": dim,
            "n_params": int(params.shape[1]) if n else 0,
            "dtype": dtype,
            "wal_upto": wal_upto,
            "clock": clock,
            "created_unix": time.time(),
            "files": {k: {"bytes": len(v), "sha256": _sha256(v)} for k, v in files.items()},
        }
        self._write(f"{d}/manifest.json", json.dumps(manifest, indent=1).encode())
        self._collect(seq)
        return seq

    def _collect(self, newest: int) -> None:
        """Keep `keep` snapshots and the WAL after the oldest kept snapshot's wal_upto."""
        seqs = [s for s in self.snapshot_seqs() if s <= newest]
        kept = seqs[-self.keep :]
        for s in seqs[: -self.keep]:
            self.fs.delete_dir(self._snap_dir(s))
        try:
            floor = self.manifest(kept[0])["wal_upto"]
        except BankError:
            return  # a damaged kept snapshot: keep every WAL record
        for w in self.wal_seqs():
            if w <= floor:
                self.fs.delete_file(f"{self.root}/wal/{w:0{_SEQ_WIDTH}d}.safetensors")

    def manifest(self, seq: int) -> dict:
        path = f"{self._snap_dir(seq)}/manifest.json"
        try:
            m = json.loads(self._read(path))
            m["files"]
        except Exception as exc:
            raise BankError(
                f"bank snapshot manifest {self.snapshot_name(seq)}/manifest.json is unreadable "
                f"({exc}); restore the previous snapshot or delete this one"
            ) from None
        return m

    def load_snapshot(self, seq: int) -> tuple[dict, dict]:
        """(index columns, manifest); a truncated or corrupt file is a BankError naming it."""
        m = self.manifest(seq)
        blobs = {}
        for name, want in m["files"].items():
            label = f"{self.snapshot_name(seq)}/{name}"
            try:
                data = self._read(f"{self._snap_dir(seq)}/{name}")
            except (OSError, FileNotFoundError) as exc:
                raise BankError(f"bank snapshot file {label} is missing ({exc})") from None
            if len(data) != want["bytes"] or _sha256(data) != want["sha256"]:
                raise BankError(
                    f"bank snapshot file {label} is truncated or corrupt ({len(data)} bytes, "
                    f"manifest says {want['bytes']}; sha256 differs); the previous snapshot is "
                    "untouched: delete this snapshot directory to fall back to it"
                )
            blobs[name] = data
        table = pq.read_table(pa.BufferReader(blobs["meta.parquet"]))
        params = st_load(blobs["params.safetensors"])["params"]
        n = table.num_rows
        cols = {"keys": table.column("key").to_pylist()}
        if n:
            flat = table.column("descriptor").combine_chunks().values.to_numpy()
            cols["descriptor"] = flat.reshape(n, -1).astype(np.float32)
            cols["params"] = params
            for c in ("step", "support", "loss", "last_used"):
                cols[c] = table.column(c).to_numpy()
        return cols, m

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
        wal = [w for w in self.wal_seqs() if w > out.wal_upto]
        if wal and wal[0] != out.wal_upto + 1 and (out.snapshot_seq >= 0 or wal[0] != 0):
            warnings.append(
                f"bank WAL under {self.uri}/wal starts at record {wal[0]} but the restored "
                f"snapshot covers up to {out.wal_upto}: records in between are lost"
            )
        out.records = [(w, self.read_wal(w)) for w in wal]
        out.warnings = warnings
        return out

    def clear(self) -> None:
        for sub in ("snapshots", "wal"):
            self.fs.delete_dir_contents(f"{self.root}/{sub}", missing_dir_ok=True)
