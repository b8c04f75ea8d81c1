"""The bank's on-disk format number and the safetensors header, shared by the WAL and snapshots.

Reading a header (rather than `safetensors.load`) is what lets a restore leave the parameter
rows on disk: it learns where the rows start without reading them. Writing one lets a snapshot
stream its rows after it.
"""

from __future__ import annotations

import json
import struct

import numpy as np

FORMAT = 2  # snapshot / record metadata: 2 adds the params encoding and the base digest
SEQ_WIDTH = 12  # digits of a seq in WAL and snapshot names (they sort as text)
ST_DTYPES = {"F16": "float16", "F32": "float32", "F64": "float64", "I64": "int64", "I32": "int32"}


def st_header(data: bytes | memoryview) -> tuple[dict, dict, int]:
    """(tensor entries, metadata, byte offset of the data) of a safetensors blob's header."""
    n = int.from_bytes(bytes(data[:8]), "little")
    header = json.loads(bytes(data[8 : 8 + n]))
    return header, header.pop("__metadata__", None) or {}, 8 + n


def st_head(tensors: dict[str, tuple[str, list[int]]], meta: dict) -> bytes:
    """A safetensors header for tensors whose bytes follow in order (written by streaming)."""
    codes = {v: k for k, v in ST_DTYPES.items()}
    entries, at = {}, 0
    for name, (dtype, shape) in tensors.items():
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        entries[name] = {"dtype": codes[dtype], "shape": shape, "data_offsets": [at, at + nbytes]}
        at += nbytes
    raw = json.dumps({"__metadata__": meta, **entries}, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(raw)) + raw
