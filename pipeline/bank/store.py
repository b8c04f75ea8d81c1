"""Bank persistence: snapshots (Parquet + safetensors + manifest) and a write-ahead log.

Layout under a root (a local directory or `s3://bucket/prefix`):

    snapshots/snap-<seq>/meta.parquet        keys, descriptors, step, support, loss, last_used
    snapshots/snap-<seq>/params.safetensors  one tensor "params" [n, P]: float16 deltas from the
                                             base, or float32 values (`bank.dtype`; params.py)
    snapshots/snap-<seq>/base.safetensors    the bank's base (float16 deltas only)
    snapshots/snap-<seq>/manifest.json       written LAST: counts, wal_upto, sha256 of each file
    base.safetensors                         the bank's base, written before the first record
                                             that needs it (format 3 WAL, format 2 snapshots)
    wal/<first seq>.wal                      WAL segment (format 3; format 2 still read)
    wal/<seq>.safetensors                    WAL record (format 1, before group commit; read)

PARAMETERS STAY ON DISK: reading a snapshot or a WAL record loads keys, descriptors and metadata
and returns, for the parameter rows, only where they are (`param_loc`: file, byte offset of the
first row, dtype, width, delta or not, base digest); the bank reads a row when a query hits it
(`read_at`, through `params.ParamRows`' cache). A snapshot streams its params file row chunk by
row chunk, so neither writing nor verifying it holds all rows in memory.

A snapshot without a manifest is incomplete and ignored. WAL GROUP COMMIT: a segment is an
8-byte header (magic + format) and then frames `[u64 length][u64 first seq][u32 crc32]
[safetensors]`, ONE FRAME PER GROUP: the group's batches concatenated (their keys, a JSON list
per batch, give the split; batch i has seq first + i). `append_group` writes the frame in ONE
write and ONE fdatasync before any batch of the group is acknowledged, so puts cost one fsync
(and one encode) per group, not one create + fsync + rename + directory fsync each. A group is
atomic: its frame is whole (CRC) or dropped. A crash mid-append can only tear a frame that was
never acknowledged (its fsync had not returned), and recovery drops a torn LAST frame and keeps
every frame before it. A bad frame with valid bytes after it is damage, not a crash: a
BankError naming it. A segment of an unknown format is a BankError naming the format; format-1
records are still read (older metaray does not read format 2: do not downgrade a bank). On
S3, where nothing appends, each group is its own segment object written by one PUT.
Every acknowledged write is either in a snapshot or in a WAL record after that snapshot's
`wal_upto`. WAL files are kept back to the PREVIOUS snapshot's `wal_upto`, so if the latest
snapshot is corrupt, the previous one plus the WAL still restores every acknowledged entry.
Nothing here unpickles: JSON, Parquet and safetensors only.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import time
import uuid
import zlib
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from pipeline.errors import BankError

FORMAT = 2  # snapshot / record metadata: 2 adds the params encoding and the base digest
META_TYPES = {"step": np.int64, "support": np.int32, "loss": np.float32, "last_used": np.int64}
_SEQ_WIDTH = 12
WAL_FORMAT = 3  # 1: a file per batch; 2: framed segments; 3: 2 with float16 delta rows
WAL_READ = (2, 3)  # segment formats read (format-1 files are recognised by their suffix)
WAL_SUFFIX = ".wal"
WAL_MAGIC = b"MRBWAL" + struct.pack("<H", WAL_FORMAT)  # 8 bytes opening every segment
_FRAME = struct.Struct("<QQI")  # payload bytes, first seq, crc32 of (length, seq, payload)
SEGMENT_BYTES = 256 << 20  # roll to a new segment past this (bounds what one restore reads)


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


def _fsync_dir(path: str) -> None:
    dfd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


_RECORD_KEYS = ("descriptor", "params", "step", "support", "loss")
_ST_DTYPES = {"F16": "float16", "F32": "float32", "F64": "float64", "I64": "int64", "I32": "int32"}


def _encode_record(batch: dict, meta: dict | None = None) -> bytes:
    """A batch as safetensors (format 1's whole record, format 2/3's frame payload); `keys` may
    be a list of keys or, for a group, a list of per-batch key lists. `meta`: the params
    encoding ({"params": "delta", "base": sha256} for float16 deltas)."""
    tensors = {k: np.ascontiguousarray(batch[k]) for k in ("descriptor", "params")}
    for k, dt in (("step", np.int64), ("support", np.int32), ("loss", np.float32)):
        tensors[k] = np.ascontiguousarray(np.asarray(batch[k], dt))
    header = {"keys": json.dumps(list(batch["keys"])), "format": str(FORMAT), **(meta or {})}
    return st_save(tensors, header)


def _st_header(data: bytes | memoryview) -> tuple[dict, dict, int]:
    """(tensor entries, metadata, byte offset of the data) of a safetensors blob's header."""
    n = int.from_bytes(bytes(data[:8]), "little")
    header = json.loads(bytes(data[8 : 8 + n]))
    return header, header.pop("__metadata__", None) or {}, 8 + n


def _decode_record(data: bytes | memoryview, label: str, *, path: str = "", at: int = 0) -> dict:
    """A record's keys, descriptors and metadata; its parameter rows stay where they are:
    `param_loc` = file `path`, byte offset of the first row (`at` = the payload's offset in the
    file), dtype, width, whether they are deltas and from which base."""
    try:
        view = memoryview(data)
        tensors, meta, body = _st_header(view)
        out = {"keys": json.loads(meta["keys"])}
        for name, t in tensors.items():
            a, b = t["data_offsets"]
            if body + b > len(view):
                raise ValueError(f"tensor {name} runs past the end")
            dt = np.dtype(_ST_DTYPES[t["dtype"]])
            if name == "params":
                out["param_loc"] = {
                    "path": path,
                    "start": at + body + a,
                    "dtype": dt.name,
                    "width": int(t["shape"][-1]),
                    "delta": meta.get("params") == "delta",
                    "base": meta.get("base"),
                }
            else:
                out[name] = np.frombuffer(view[body + a : body + b], dt).reshape(t["shape"]).copy()
    except Exception as exc:  # any decoding failure means a damaged record
        raise BankError(
            f"bank WAL record {label} is corrupt ({exc}); move it aside to restore the "
            "entries before it"
        ) from None
    return out


def _crc(length: int, seq: int, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<QQ", length, seq)))


def encode_group(first_seq: int, batches: list[dict], meta: dict | None = None) -> bytes:
    """One WAL frame for a group of put batches (same widths and dtypes: the service checked):
    length, first seq, CRC, then the batches concatenated as one safetensors (no pickle)."""
    head, payload = _frame_parts(first_seq, batches, meta)
    return head + payload


def _frame_parts(first_seq: int, batches: list[dict], meta: dict | None) -> tuple[bytes, bytes]:
    """(frame header, payload) of `encode_group`, apart: written with one writev, no copy that
    joins them (nor a concatenation for a group of one batch)."""
    if len(batches) == 1:
        cat = {k: np.atleast_1d(batches[0][k]) for k in _RECORD_KEYS}
    else:
        cat = {k: np.concatenate([np.atleast_1d(b[k]) for b in batches]) for k in _RECORD_KEYS}
    payload = _encode_record({**cat, "keys": [list(b["keys"]) for b in batches]}, meta)
    return _FRAME.pack(len(payload), first_seq, _crc(len(payload), first_seq, payload)), payload


def frame_params_offset(frame: bytes) -> int:
    """Byte offset, inside a frame from `encode_group`, of its first parameter row."""
    tensors, _, body = _st_header(memoryview(frame)[_FRAME.size :])
    return _FRAME.size + body + tensors["params"]["data_offsets"][0]


def _split_group(first_seq: int, group: dict) -> list[tuple[int, dict]]:
    """The batches of one group frame, as (seq, batch) with views into the group's arrays; each
    batch's `param_loc` starts at its own first row."""
    out, start = [], 0
    loc = group.get("param_loc")
    row = 0 if loc is None else loc["width"] * np.dtype(loc["dtype"]).itemsize
    for i, keys in enumerate(group["keys"]):
        end = start + len(keys)
        batch = {"keys": keys, **{k: group[k][start:end] for k in _RECORD_KEYS if k in group}}
        if loc is not None:
            batch["param_loc"] = {**loc, "start": loc["start"] + start * row}
        out.append((first_seq + i, batch))
        start = end
    return out


def decode_segment(
    data: bytes, label: str, path: str = ""
) -> tuple[list[tuple[int, dict]], int | None]:
    """(records, torn): one (seq, batch) per batch; `torn` is the byte length of the valid prefix
    when the segment ends in an incomplete frame (a crash mid-append: never acknowledged), else
    None.
    A bad frame with bytes after it is not a torn append but damage: a BankError naming it."""
    if len(data) < len(WAL_MAGIC):
        if WAL_MAGIC.startswith(data):
            return [], 0  # created, header not yet durable: it never held a record
        raise BankError(f"bank WAL segment {label} is not a WAL segment (bad header)")
    if data[:6] != WAL_MAGIC[:6]:
        raise BankError(f"bank WAL segment {label} is not a WAL segment (bad header)")
    version = struct.unpack("<H", data[6:8])[0]
    if version not in WAL_READ:
        raise BankError(
            f"bank WAL segment {label} has format {version}; this metaray reads formats 1, 2 "
            f"and {WAL_FORMAT}: restore it with the metaray version that wrote it"
        )
    view, off, out = memoryview(data), len(WAL_MAGIC), []
    while off < len(data):
        if len(data) - off < _FRAME.size:
            return out, off
        length, seq, crc = _FRAME.unpack_from(data, off)
        end = off + _FRAME.size + length
        if end > len(data):
            return out, off
        payload = view[off + _FRAME.size : end]
        if _crc(length, seq, payload) != crc:
            if end == len(data):
                return out, off  # the last frame, partly written
            raise BankError(
                f"bank WAL segment {label} has a corrupt record (seq {seq}, byte {off}) with "
                "records after it; move the segment aside to restore the entries before it"
            )
        rec = _decode_record(payload, f"{label} (seq {seq})", path=path, at=off + _FRAME.size)
        out.extend(_split_group(seq, rec))
        off = end
    return out, None


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
        self.uri = uri.rstrip("/")
        self.fs, self.root = filesystem(uri, s3_endpoint)
        self.keep = max(2, keep)
        self._local = isinstance(self.fs, pafs.LocalFileSystem)
        self._seg: int | None = None  # fd of the open local WAL segment
        self._seg_bytes = 0
        self._readers: dict = {}  # path -> open fd (local) or random-access file (S3)
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
            _fsync_dir(os.path.dirname(path))
        else:  # one PUT: the object appears whole or not at all
            with self.fs.open_output_stream(path) as f:
                f.write(data)

    def _read(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def read_at(self, path: str, offset: int, n: int) -> bytes:
        """`n` bytes at `offset` of `path` (a parameter row): pread / an S3 range read, with the
        file kept open for the next hit."""
        f = self._readers.get(path)
        try:
            if f is None:
                f = os.open(path, os.O_RDONLY) if self._local else self.fs.open_input_file(path)
                self._readers[path] = f
            data = os.pread(f, n, offset) if self._local else f.read_at(n, offset)
        except (OSError, FileNotFoundError) as exc:
            raise BankError(
                f"bank parameter file {path} cannot be read ({exc}); restore the bank from its "
                "snapshot_uri (restart the bank) or re-import an export"
            ) from None
        if len(data) != n:
            raise BankError(
                f"bank parameter file {path} ends before byte {offset + n} (an entry's row); it "
                "was truncated after the bank wrote it: restore the bank (restart it)"
            )
        return bytes(data)

    def close_readers(self, keep: set[str] = frozenset()) -> None:
        for path in [p for p in self._readers if p not in keep]:
            f = self._readers.pop(path)
            os.close(f) if self._local else f.close()

    # ---- the base --------------------------------------------------------------------------
    def write_base(self, base: np.ndarray, digest: str) -> None:
        """The bank's base, durably, before any record that is a delta from it."""
        self._write(f"{self.root}/base.safetensors", _base_bytes(base, digest))

    def read_base(self) -> np.ndarray | None:
        path = f"{self.root}/base.safetensors"
        if self.fs.get_file_info(path).type != pafs.FileType.File:
            return None
        return _load_base(self._read(path), f"{self.uri}/base.safetensors")

    def _list(self, sub: str) -> list[pafs.FileInfo]:
        sel = pafs.FileSelector(f"{self.root}/{sub}", allow_not_found=True)
        return self.fs.get_file_info(sel)

    # ---- write-ahead log ------------------------------------------------------------------
    def wal_files(self) -> list[tuple[int, str]]:
        """(first seq, base name) of every WAL file, oldest first: v2 segments (`<seq>.wal`)
        and v1 records (`<seq>.safetensors`, one batch each: banks written before group commit)."""
        out = []
        for info in self._list("wal"):
            name = info.base_name
            if ".tmp-" not in name and name.endswith((WAL_SUFFIX, ".safetensors")):
                out.append((int(name.split(".")[0]), name))
        return sorted(out)

    def wal_seqs(self) -> list[int]:
        return [seq for seq, _ in self.wal_files()]

    def append_group(
        self, records: list[tuple[int, dict]], meta: dict | None = None
    ) -> tuple[str, int]:
        """GROUP COMMIT: the whole group in one frame, one write, then ONE fsync, before any of
        its batches is acknowledged. Local: appended to the open segment (a new segment, made
        durable in its directory, after a restart, a snapshot or `SEGMENT_BYTES`); S3: the
        group is one segment object written by one PUT. The group is one frame with its own
        CRC, so a crash mid-append leaves at worst a torn last frame, which recovery drops
        (never acknowledged: the fsync had not returned). `records`: consecutive seqs, in order.
        Returns (file, byte offset of the group's first parameter row): the rows' locators."""
        head, payload = _frame_parts(records[0][0], [batch for _, batch in records], meta)
        tensors, _, body = _st_header(payload)
        rows_at = _FRAME.size + body + tensors["params"]["data_offsets"][0]
        size = len(head) + len(payload)
        if not self._local:
            name = f"{self.root}/wal/{records[0][0]:0{_SEQ_WIDTH}d}{WAL_SUFFIX}"
            with self.fs.open_output_stream(name) as f:
                f.write(WAL_MAGIC + head)
                f.write(payload)  # one stream: one PUT, whole or absent
            return name, len(WAL_MAGIC) + rows_at
        if self._seg is None or self._seg_bytes >= SEGMENT_BYTES:
            self._open_segment(records[0][0])
        at = self._seg_bytes + rows_at
        done = os.writev(self._seg, [head, payload])
        if done < size:  # O_APPEND: each write lands at the end; a large one may come back short
            view = memoryview(head + payload)[done:]
            while view:
                view = view[os.write(self._seg, view) :]
        os.fdatasync(self._seg)  # the one fsync of the group (file size included)
        self._seg_bytes += size
        return self._seg_path, at

    def _open_segment(self, first_seq: int) -> None:
        self.roll_wal()
        path = f"{self.root}/wal/{first_seq:0{_SEQ_WIDTH}d}{WAL_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        os.write(fd, WAL_MAGIC)
        os.fsync(fd)
        _fsync_dir(os.path.dirname(path))  # the segment's name is durable before any ack
        self._seg, self._seg_bytes, self._seg_path = fd, len(WAL_MAGIC), path

    def roll_wal(self) -> None:
        """Close the open segment: the next group starts a new one (so old ones can be
        collected after a snapshot)."""
        if self._seg is not None:
            os.close(self._seg)
            self._seg = None

    def read_wal_file(self, name: str) -> tuple[list[tuple[int, dict]], int | None]:
        """(records, valid byte length if the file ends in a torn frame else None)."""
        path = f"{self.root}/wal/{name}"
        data = self._read(path)
        label = f"{self.uri}/wal/{name}"
        if name.endswith(".safetensors"):
            return [(int(name.split(".")[0]), _decode_record(data, label, path=path))], None
        return decode_segment(data, label, path)

    def truncate_torn(self, name: str, valid: int) -> None:
        """Cut a torn last frame off a local segment (durably; a segment left with no record is
        removed, freeing its name, its first seq, for the next append). Only the bank that owns
        the WAL does this (`repair_torn` after its restore), never a restore of an export."""
        if not self._local:
            return  # an S3 segment is one PUT: whole or absent, never torn by a crash
        path = f"{self.root}/wal/{name}"
        if valid <= len(WAL_MAGIC):
            os.unlink(path)
            _fsync_dir(os.path.dirname(path))
            return
        os.truncate(path, valid)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

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

    def write_snapshot(
        self,
        cols: dict,
        *,
        wal_upto: int,
        clock: int,
        dtype: str,
        rows=(),
        width: int = 0,
        base: np.ndarray | None = None,
    ) -> tuple[int, str, int]:
        """Write a snapshot (manifest last), then drop what no restore can need any more.
        `rows`: the entries' parameter rows in `dtype`, an iterable of `[m, width]` chunks in
        key order (streamed to params.safetensors); `base`: given when they are float16 deltas.
        Returns (seq, params file, byte offset of its first row): the entries' new locators."""
        self.roll_wal()  # later puts go to a new segment: the ones before can be collected
        seqs = self.snapshot_seqs()
        seq = (seqs[-1] + 1) if seqs else 0
        d = self._snap_dir(seq)
        self.fs.create_dir(d, recursive=True)
        n = len(cols["keys"])
        meta_bytes, dim = _meta_parquet(cols)
        width = width if n else 0
        delta = base is not None
        encoding = {"params": "delta" if delta else "absolute", "format": str(FORMAT)}
        if delta:
            encoding["base"] = _digest(base)
        head = _st_head({"params": (dtype, [n, width])}, encoding)
        files = {"meta.parquet": _described(meta_bytes)}
        files["params.safetensors"] = self._write_stream(
            f"{d}/params.safetensors", head, rows if n else (), n * width * np.dtype(dtype).itemsize
        )
        if delta:
            files["base.safetensors"] = _described(_base_bytes(base, _digest(base)))
        self._write(f"{d}/meta.parquet", meta_bytes)
        if delta:
            self._write(f"{d}/base.safetensors", _base_bytes(base, _digest(base)))
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
        self._write(f"{d}/manifest.json", json.dumps(manifest, indent=1).encode())
        self._collect(seq)
        return seq, f"{d}/params.safetensors", len(head)

    def _write_stream(self, path: str, head: bytes, chunks, body_bytes: int) -> dict:
        """`head` then each chunk's bytes, durably (local: temp file, fsync, rename; S3: one
        streamed upload); returns {bytes, sha256}. The chunks must add up to `body_bytes`."""
        h, total = hashlib.sha256(head), len(head)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}" if self._local else path
        with open(tmp, "wb") if self._local else self.fs.open_output_stream(path) as f:
            f.write(head)
            for chunk in chunks:
                data = np.ascontiguousarray(chunk).tobytes()
                h.update(data)
                f.write(data)
                total += len(data)
            if total != len(head) + body_bytes:
                raise BankError(
                    f"bank snapshot {path}: {total - len(head)} row bytes written, {body_bytes} "
                    "expected (entries changed during the snapshot)"
                )
            if self._local:
                f.flush()
                os.fsync(f.fileno())
        if self._local:
            os.replace(tmp, path)
            _fsync_dir(os.path.dirname(path))
        return {"bytes": total, "sha256": h.hexdigest()}

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
        files = self.wal_files()
        for i, (first, name) in enumerate(files):
            later = i + 1 < len(files) and files[i + 1][0] <= floor + 1  # all of it <= floor
            if later or (name.endswith(".safetensors") and first <= floor):
                self.fs.delete_file(f"{self.root}/wal/{name}")

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
        """(index columns, manifest); a truncated or corrupt file is a BankError naming it.
        The parameter rows are checked (streamed through sha256) but not loaded: the columns
        carry `param_loc` (their file and first row's offset) and, for deltas, `base`."""
        m = self.manifest(seq)
        blobs = {}
        for name, want in m["files"].items():
            label = f"{self.snapshot_name(seq)}/{name}"
            path = f"{self._snap_dir(seq)}/{name}"
            try:
                if name == "params.safetensors":
                    got, head = self._hash_file(path)
                else:
                    data = self._read(path)
                    got, head = _described(data), data
            except (OSError, FileNotFoundError) as exc:
                raise BankError(f"bank snapshot file {label} is missing ({exc})") from None
            if got != {"bytes": want["bytes"], "sha256": want["sha256"]}:
                raise BankError(
                    f"bank snapshot file {label} is truncated or corrupt ({got['bytes']} bytes, "
                    f"manifest says {want['bytes']}; sha256 differs); the previous snapshot is "
                    "untouched: delete this snapshot directory to fall back to it"
                )
            blobs[name] = head
        table = pq.read_table(pa.BufferReader(blobs["meta.parquet"]))
        tensors, meta, body = _st_header(blobs["params.safetensors"])
        t = tensors["params"]
        n = table.num_rows
        cols = {"keys": table.column("key").to_pylist()}
        if "base.safetensors" in blobs:
            cols["base"] = _load_base(blobs["base.safetensors"], f"{self.snapshot_name(seq)}")
        if n:
            flat = table.column("descriptor").combine_chunks().values.to_numpy()
            cols["descriptor"] = flat.reshape(n, -1).astype(np.float32)
            cols["param_loc"] = {
                "path": f"{self._snap_dir(seq)}/params.safetensors",
                "start": body + t["data_offsets"][0],
                "dtype": _ST_DTYPES[t["dtype"]],
                "width": int(t["shape"][1]),
                "delta": meta.get("params") == "delta",
                "base": meta.get("base"),
            }
            for c in ("step", "support", "loss", "last_used"):
                cols[c] = table.column(c).to_numpy()
        return cols, m

    def _hash_file(self, path: str) -> tuple[dict, bytes]:
        """({bytes, sha256}, the first 1 MiB) of a file, read in chunks."""
        h, total, head = hashlib.sha256(), 0, b""
        with self.fs.open_input_stream(path) as f:
            while chunk := f.read(16 << 20):
                if not head:
                    head = chunk[: 1 << 20]
                h.update(chunk)
                total += len(chunk)
        return {"bytes": total, "sha256": h.hexdigest()}, head

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
        out.records, out.torn = self._read_wal_after(out.wal_upto, warnings)
        out.warnings = warnings
        out.base = self.read_base()
        if out.base is None and out.cols is not None:
            out.base = out.cols.get("base")  # an export: its snapshot carries the base
        return out

    def _read_wal_after(
        self, upto: int, warnings: list[str]
    ) -> tuple[list[tuple[int, dict]], list[tuple[str, int]]]:
        """Every WAL record after `upto`, in order; torn tails dropped (with a warning), and a
        warning when the sequence has a gap (records lost between a snapshot and the WAL)."""
        files, records, torn = self.wal_files(), [], []
        for i, (_, name) in enumerate(files):
            if i + 1 < len(files) and files[i + 1][0] <= upto + 1:
                continue  # every record of this file is in the snapshot
            got, valid = self.read_wal_file(name)
            records.extend((seq, rec) for seq, rec in got if seq > upto)
            if valid is not None:
                torn.append((name, valid))
                warnings.append(
                    f"bank WAL segment {self.uri}/wal/{name} ends in a torn record (a crash "
                    f"mid-append, never acknowledged): dropped it, kept the {len(got)} before it"
                )
        expect = upto + 1
        for seq, _ in records:
            if seq != expect:
                warnings.append(
                    f"bank WAL under {self.uri}/wal has record {seq} where {expect} was due "
                    f"(the restored snapshot covers up to {upto}): records in between are lost"
                )
            expect = seq + 1
        return records, torn

    def repair_torn(self, torn: list[tuple[str, int]]) -> None:
        """`truncate_torn` each (segment, valid bytes) a restore reported."""
        for name, valid in torn:
            self.truncate_torn(name, valid)

    def __del__(self) -> None:
        self.roll_wal()
        self.close_readers()

    def clear(self) -> None:
        self.roll_wal()  # never append to a segment that is about to be unlinked
        self.close_readers()
        for sub in ("snapshots", "wal"):
            self.fs.delete_dir_contents(f"{self.root}/{sub}", missing_dir_ok=True)
        base = f"{self.root}/base.safetensors"
        if self.fs.get_file_info(base).type == pafs.FileType.File:
            self.fs.delete_file(base)  # a cleared bank takes the base of its next first put


def _meta_parquet(cols: dict) -> tuple[bytes, int]:
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


def _digest(base: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(base, np.float32).tobytes()).hexdigest()


def _described(data: bytes) -> dict:
    return {"bytes": len(data), "sha256": _sha256(data)}


def _base_bytes(base: np.ndarray, digest: str) -> bytes:
    return st_save({"base": np.ascontiguousarray(base, np.float32)}, {"sha256": digest})


def _load_base(data: bytes, label: str) -> np.ndarray:
    """The base vector of a base.safetensors; its bytes must match the digest it was saved
    under (a base that changed would silently shift every delta stored against it)."""
    try:
        base = st_load(data)["base"]
        want = _st_header(data)[1]["sha256"]
    except Exception as exc:
        raise BankError(f"bank base {label}/base.safetensors is unreadable ({exc})") from None
    if _digest(base) != want:
        raise BankError(
            f"bank base {label}/base.safetensors does not match its sha256 {want[:12]}: every "
            "float16 entry is a delta from it; restore the file from an export of this bank"
        )
    return base


def _st_head(tensors: dict[str, tuple[str, list[int]]], meta: dict) -> bytes:
    """A safetensors header for tensors whose bytes follow in order (written by streaming)."""
    codes = {v: k for k, v in _ST_DTYPES.items()}
    entries, at = {}, 0
    for name, (dtype, shape) in tensors.items():
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        entries[name] = {"dtype": codes[dtype], "shape": shape, "data_offsets": [at, at + nbytes]}
        at += nbytes
    raw = json.dumps({"__metadata__": meta, **entries}, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(raw)) + raw
