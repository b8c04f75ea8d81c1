"""Bank snapshots: a directory of files under `<root>/snapshots`, written and verified.

    snapshots/snap-<seq>/meta.parquet        keys, descriptors, step, support, loss, last_used
    snapshots/snap-<seq>/params.safetensors  one tensor "params" [n, P]: float16 deltas from the
                                             base, or float32 values (`bank.dtype`; params.py)
    snapshots/snap-<seq>/base.safetensors    the bank's base (float16 deltas only)
    snapshots/snap-<seq>/manifest.json       written LAST: counts, wal_upto, sha256 of each file

Each file is written atomically (root_files.py) and the manifest last, so a snapshot without a
manifest is incomplete and ignored. The params file is streamed row chunk by row chunk, and
verified the same way, so neither writing nor checking a snapshot holds all rows in memory; a
loaded snapshot returns, for its rows, only where they are (`param_loc`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.bank.base_file import base_bytes, load_base
from pipeline.bank.formats import FORMAT, SEQ_WIDTH, ST_DTYPES, st_head, st_header
from pipeline.bank.params import digest
from pipeline.bank.root_files import RootFiles, described
from pipeline.errors import BankError

META_TYPES = {"step": np.int64, "support": np.int32, "loss": np.float32, "last_used": np.int64}


class Snapshots:
    """The snapshot directories under one root."""

    def __init__(self, files: RootFiles) -> None:
        self.files = files

    def seqs(self) -> list[int]:
        """Seqs of the complete snapshots (those with a manifest), oldest first."""
        out = []
        for info in self.files.list("snapshots"):
            snap = info.type == pafs.FileType.Directory and info.base_name.startswith("snap-")
            if snap and self.files.is_file(f"{info.path}/manifest.json"):
                out.append(int(info.base_name[len("snap-") :]))
        return sorted(out)

    def dir(self, seq: int) -> str:
        return f"{self.files.root}/snapshots/snap-{seq:0{SEQ_WIDTH}d}"

    def name(self, seq: int) -> str:
        return f"{self.files.uri}/snapshots/snap-{seq:0{SEQ_WIDTH}d}"

    def write(
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
        """Write the next snapshot, manifest last (see `BankStore.write_snapshot`). Returns
        (seq, params file, byte offset of its first row): the entries' new locators."""
        seqs = self.seqs()
        seq = (seqs[-1] + 1) if seqs else 0
        d = self.dir(seq)
        self.files.fs.create_dir(d, recursive=True)
        n = len(cols["keys"])
        meta_bytes, dim = meta_parquet(cols)
        width = width if n else 0
        delta = base is not None
        encoding = {"params": "delta" if delta else "absolute", "format": str(FORMAT)}
        if delta:
            encoding["base"] = digest(base)
        head = st_head({"params": (dtype, [n, width])}, encoding)
        files = {"meta.parquet": described(meta_bytes)}
        files["params.safetensors"] = self.files.write_stream(
            f"{d}/params.safetensors", head, rows if n else (), n * width * np.dtype(dtype).itemsize
        )
        if delta:
            files["base.safetensors"] = described(base_bytes(base, digest(base)))
        self.files.write(f"{d}/meta.parquet", meta_bytes)
        if delta:
            self.files.write(f"{d}/base.safetensors", base_bytes(base, digest(base)))
        manifest = {
            "format": FORMAT,
            "seq": seq,
            "count": n,
            "dim": dim,
            "n_params": width,
            "dtype": dtype,
            "params": encoding["params"],
            "base_sha256": encoding.get("base"),
            "wal_upto": wal_upto,
            "clock": clock,
            "created_unix": time.time(),
            "files": files,
        }
        self.files.write(f"{d}/manifest.json", json.dumps(manifest, indent=1).encode())
        return seq, f"{d}/params.safetensors", len(head)

    def drop_older(self, newest: int, keep: int) -> int | None:
        """Delete all but the `keep` latest snapshots up to `newest`; returns the oldest kept
        one's wal_upto (the WAL before it is no longer needed), None when it is unreadable (a
        damaged kept snapshot: keep every WAL record)."""
        seqs = [s for s in self.seqs() if s <= newest]
        kept = seqs[-keep:]
        for s in seqs[:-keep]:
            self.files.fs.delete_dir(self.dir(s))
        try:
            return self.manifest(kept[0])["wal_upto"]
        except BankError:
            return None

    def manifest(self, seq: int) -> dict:
        path = f"{self.dir(seq)}/manifest.json"
        try:
            m = json.loads(self.files.read(path))
            m["files"]
        except Exception as exc:
            raise BankError(
                f"bank snapshot manifest {self.name(seq)}/manifest.json is unreadable "
                f"({exc}); restore the previous snapshot or delete this one"
            ) from None
        return m

    def load(self, seq: int) -> tuple[dict, dict]:
        """(index columns, manifest); a truncated or corrupt file is a BankError naming it.
        The parameter rows are checked (streamed through sha256) but not loaded: the columns
        carry `param_loc` (their file and first row's offset) and, for deltas, `base`."""
        m = self.manifest(seq)
        blobs = {}
        for name, want in m["files"].items():
            label = f"{self.name(seq)}/{name}"
            path = f"{self.dir(seq)}/{name}"
            try:
                if name == "params.safetensors":
                    got, head = self.files.hash_file(path)
                else:
                    data = self.files.read(path)
                    got, head = described(data), data
            except (OSError, FileNotFoundError) as exc:
                raise BankError(f"bank snapshot file {label} is missing ({exc})") from None
            if got != {"bytes": want["bytes"], "sha256": want["sha256"]}:
                raise BankError(
                    f"bank snapshot file {label} is truncated or corrupt ({got['bytes']} bytes, "
                    f"manifest says {want['bytes']}; sha256 differs); the previous snapshot is "
                    "untouched: delete this snapshot directory to fall back to it"
                )
            blobs[name] = head
        return self._columns(seq, blobs), m

    def _columns(self, seq: int, blobs: dict[str, bytes]) -> dict:
        """Index columns of a verified snapshot's files (parameter rows as `param_loc`)."""
        table = pq.read_table(pa.BufferReader(blobs["meta.parquet"]))
        tensors, meta, body = st_header(blobs["params.safetensors"])
        t = tensors["params"]
        n = table.num_rows
        cols = {"keys": table.column("key").to_pylist()}
        if "base.safetensors" in blobs:
            cols["base"] = load_base(blobs["base.safetensors"], f"{self.name(seq)}")
        if n:
            flat = table.column("descriptor").combine_chunks().values.to_numpy()
            cols["descriptor"] = flat.reshape(n, -1).astype(np.float32)
            cols["param_loc"] = {
                "path": f"{self.dir(seq)}/params.safetensors",
                "start": body + t["data_offsets"][0],
                "dtype": ST_DTYPES[t["dtype"]],
                "width": int(t["shape"][1]),
                "delta": meta.get("params") == "delta",
                "base": meta.get("base"),
            }
            for c in ("step", "support", "loss", "last_used"):
                cols[c] = table.column(c).to_numpy()
        return cols


def meta_parquet(cols: dict) -> tuple[bytes, int]:
    """(meta.parquet bytes, descriptor dim): keys, descriptors and metadata columns."""
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
            **{m: pa.array(np.asarray(cols.get(m, []), dt)[:n]) for m, dt in META_TYPES.items()},
        }
    )
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes(), dim
