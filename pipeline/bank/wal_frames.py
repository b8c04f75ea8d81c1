"""WAL bytes: records, group frames and segments, encoded and decoded (no file I/O here).

A segment is an 8-byte header (magic + format) and then frames `[u64 length][u64 first seq]
[u32 crc32][safetensors]`, ONE FRAME PER GROUP: the group's batches concatenated (their keys, a
JSON list per batch, give the split; batch i has seq first + i). A group is atomic: its frame is
whole (CRC) or dropped. Decoding drops a torn LAST frame (a crash mid-append, never
acknowledged) and keeps every frame before it; a bad frame with valid bytes after it is damage,
not a crash: a BankError naming it. A segment of an unknown format is a BankError naming the
format; format-1 records (a file per batch) are still read (older metaray does not read format
2: do not downgrade a bank). Decoded records carry, for their parameter rows, only where they
are (`param_loc`): the rows stay on disk. Safetensors and JSON only: nothing is unpickled.
"""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
from safetensors.numpy import save as st_save

from pipeline.bank.formats import FORMAT, ST_DTYPES, st_header
from pipeline.errors import BankError

WAL_FORMAT = 3  # 1: a file per batch; 2: framed segments; 3: 2 with float16 delta rows
WAL_READ = (2, 3)  # segment formats read (format-1 files are recognised by their suffix)
WAL_SUFFIX = ".wal"
WAL_MAGIC = b"MRBWAL" + struct.pack("<H", WAL_FORMAT)  # 8 bytes opening every segment
FRAME = struct.Struct("<QQI")  # payload bytes, first seq, crc32 of (length, seq, payload)
_RECORD_KEYS = ("descriptor", "params", "step", "support", "loss")


def encode_record(batch: dict, meta: dict | None = None) -> bytes:
    """A batch as safetensors (format 1's whole record, format 2/3's frame payload); `keys` may
    be a list of keys or, for a group, a list of per-batch key lists. `meta`: the params
    encoding ({"params": "delta", "base": sha256} for float16 deltas)."""
    tensors = {k: np.ascontiguousarray(batch[k]) for k in ("descriptor", "params")}
    for k, dt in (("step", np.int64), ("support", np.int32), ("loss", np.float32)):
        tensors[k] = np.ascontiguousarray(np.asarray(batch[k], dt))
    header = {"keys": json.dumps(list(batch["keys"])), "format": str(FORMAT), **(meta or {})}
    return st_save(tensors, header)


def decode_record(data: bytes | memoryview, label: str, *, path: str = "", at: int = 0) -> dict:
    """A record's keys, descriptors and metadata; its parameter rows stay where they are:
    `param_loc` = file `path`, byte offset of the first row (`at` = the payload's offset in the
    file), dtype, width, whether they are deltas and from which base."""
    try:
        view = memoryview(data)
        tensors, meta, body = st_header(view)
        out = {"keys": json.loads(meta["keys"])}
        for name, t in tensors.items():
            a, b = t["data_offsets"]
            if body + b > len(view):
                raise ValueError(f"tensor {name} runs past the end")
            dt = np.dtype(ST_DTYPES[t["dtype"]])
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
    head, payload = frame_parts(first_seq, batches, meta)
    return head + payload


def frame_parts(first_seq: int, batches: list[dict], meta: dict | None) -> tuple[bytes, bytes]:
    """(frame header, payload) of `encode_group`, apart: written with one writev, no copy that
    joins them (nor a concatenation for a group of one batch)."""
    if len(batches) == 1:
        cat = {k: np.atleast_1d(batches[0][k]) for k in _RECORD_KEYS}
    else:
        cat = {k: np.concatenate([np.atleast_1d(b[k]) for b in batches]) for k in _RECORD_KEYS}
    payload = encode_record({**cat, "keys": [list(b["keys"]) for b in batches]}, meta)
    return FRAME.pack(len(payload), first_seq, _crc(len(payload), first_seq, payload)), payload


def frame_params_offset(frame: bytes) -> int:
    """Byte offset, inside a frame from `encode_group`, of its first parameter row."""
    tensors, _, body = st_header(memoryview(frame)[FRAME.size :])
    return FRAME.size + body + tensors["params"]["data_offsets"][0]


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
        if len(data) - off < FRAME.size:
            return out, off
        length, seq, crc = FRAME.unpack_from(data, off)
        end = off + FRAME.size + length
        if end > len(data):
            return out, off
        payload = view[off + FRAME.size : end]
        if _crc(length, seq, payload) != crc:
            if end == len(data):
                return out, off  # the last frame, partly written
            raise BankError(
                f"bank WAL segment {label} has a corrupt record (seq {seq}, byte {off}) with "
                "records after it; move the segment aside to restore the entries before it"
            )
        rec = decode_record(payload, f"{label} (seq {seq})", path=path, at=off + FRAME.size)
        out.extend(_split_group(seq, rec))
        off = end
    return out, None
