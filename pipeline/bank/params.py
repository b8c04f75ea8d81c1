"""Where a bank entry's parameters live: their encoding, the bank's base, locators, a cache.

ENCODING (`bank.dtype`): float16 (the default) stores each entry as its DELTA from the bank's
base (`decoded = base + float32(delta)`: equal to what was put up to the float16 rounding of
the delta); float32 stores the parameters themselves, bit for bit (no delta: a float32 delta
would round `base + (p - base)` and gain nothing).

THE BASE is one flat float32 vector per bank: the meta-init sent as `base` with the first put
(the trainer hook sends its meta-parameters); a first put without one makes its first entry's
own parameters the base (adapted entries lie near each other, so their deltas stay small, not
the values themselves as against zeros). It is fixed for the bank's life (`clear` resets it),
written once as `<root>/base.safetensors` (durably, before the first WAL record that needs it)
and named by the sha256 of its bytes; every WAL record and snapshot carries that digest, and
every snapshot a copy of the base, so an export is self-contained. Clients always put ABSOLUTE
parameters: the bank computes the delta against its own base, so an entry adapted from another
meta-init (a later training step, another run) is stored against the bank's base (counted in
`stats()["params"]`), never misread; one whose delta does not fit in float16 is refused, naming
`bank.dtype=float32` or a separate bank. A restore whose base file does not match the digest
its records name is refused, naming the file.

LOCATORS: a bank with a `snapshot_uri` keeps no parameter rows on its heap. The index holds one
int64 per entry, `source << 40 | byte offset`, into a WAL segment frame (where the put already
wrote the row durably) or a snapshot's params.safetensors (after a snapshot every live entry is
re-pointed there, before old files are collected). Source 0 is rows held in memory: a bank with
`bank.wal=false` keeps the rows it put since the last snapshot there (its loss bound is the same
window). A hit reads the row (`pread`, or an S3 range read) through an LRU cache bounded in
bytes (`bank.param_cache_mb`); puts write through it. A bank without a `snapshot_uri` keeps the
encoded rows in the index itself (there is no disk). No ray, no pickle.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from pipeline.errors import BankError

SHIFT = 40  # low 40 bits: byte offset (1 TiB per file); high bits: source id
_OFFSET = (1 << SHIFT) - 1
MEMORY = 0  # source id of rows held in memory (bank.wal=false, until the next snapshot)


def digest(base: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(base, np.float32).tobytes()).hexdigest()


@dataclass(frozen=True)
class Source:
    """A file holding parameter rows: `path` on the store's filesystem, the rows' dtype and
    whether they are deltas from the bank's base."""

    path: str
    dtype: str
    delta: bool
    width: int

    @property
    def row_bytes(self) -> int:
        return self.width * np.dtype(self.dtype).itemsize


_GRAIN = 32_768  # torch's intra-op grain: smaller casts run on the calling thread alone


def _cast(x: np.ndarray, dtype) -> np.ndarray:
    """`x` cast to float16 / float32 (round to nearest even: what numpy's astype does, bit for
    bit), through torch's vectorised cast, ~15x faster than numpy's float16 path; in slices
    below torch's parallel grain, because a cast split over threads waits for a core on a busy
    machine (measured: 4x slower puts under load). numpy where torch is absent."""
    x = np.ascontiguousarray(x)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency of metaray
        with np.errstate(over="ignore"):  # an overflow is the caller's error
            return x.astype(dtype)
    out = np.empty(x.shape, dtype)
    if not x.flags.writeable:  # rows read from disk (np.frombuffer): only read here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            src = torch.from_numpy(x).view(-1)
    else:
        src = torch.from_numpy(x).view(-1)
    dst = torch.from_numpy(out).view(-1)
    for a in range(0, src.numel(), _GRAIN):
        dst[a : a + _GRAIN].copy_(src[a : a + _GRAIN])
    return out


def _half_delta(p: np.ndarray, base: np.ndarray) -> np.ndarray:
    """float16(p - base) for rows `p` `[B, P]`, in torch slices (see `_cast`): one pass, no
    full-size float32 temporary."""
    p = np.ascontiguousarray(p, np.float32)
    try:
        import torch
    except ImportError:  # pragma: no cover
        with np.errstate(over="ignore"):
            return (p - base).astype(np.float16)
    out = np.empty(p.shape, np.float16)
    src, dst, b = torch.from_numpy(p), torch.from_numpy(out), torch.from_numpy(base)
    for a in range(0, p.shape[1], _GRAIN):
        dst[:, a : a + _GRAIN].copy_(src[:, a : a + _GRAIN] - b[a : a + _GRAIN])
    return out


def _widen(x: np.ndarray) -> np.ndarray:
    """Stored rows -> a new float32 array (float16 widened exactly)."""
    return _cast(x, np.float32) if x.dtype == np.float16 else x.astype(np.float32)


class ByteLRU:
    """code -> row, least recently used dropped first once the rows pass `limit` bytes."""

    def __init__(self, limit: int) -> None:
        self.limit, self.bytes = int(limit), 0
        self._rows: OrderedDict[int, np.ndarray] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, code: int) -> np.ndarray | None:
        row = self._rows.get(code)
        if row is None:
            self.misses += 1
            return None
        self._rows.move_to_end(code)
        self.hits += 1
        return row

    def put(self, code: int, row: np.ndarray) -> None:
        if row.nbytes > self.limit:
            return
        old = self._rows.pop(code, None)
        if old is not None:
            self.bytes -= old.nbytes
        self._rows[code] = row
        self.bytes += row.nbytes
        while self.bytes > self.limit:
            _, dropped = self._rows.popitem(last=False)
            self.bytes -= dropped.nbytes

    def rekey(self, old: np.ndarray, new: np.ndarray) -> None:
        """Codes moved (a snapshot re-pointed the entries): keep the cached rows under their new
        codes; rows of entries no longer live are dropped."""
        if not self._rows:
            return
        order = np.argsort(old, kind="stable")
        cached = np.fromiter(self._rows.keys(), np.int64, len(self._rows))
        at = np.minimum(np.searchsorted(old, cached, sorter=order), len(old) - 1)
        found = old[order[at]] == cached
        rows, self._rows, self.bytes = self._rows, OrderedDict(), 0
        for code, ok, i in zip(cached.tolist(), found.tolist(), at.tolist(), strict=True):
            if ok:
                row = rows[code]
                self._rows[int(new[order[i]])] = row
                self.bytes += row.nbytes

    def clear(self) -> None:
        self._rows, self.bytes = OrderedDict(), 0


class ParamRows:
    """The bank's parameter rows: encode on put, decode on read, locate on disk, cache."""

    def __init__(self, dtype: str, cache_bytes: int, store=None) -> None:
        if dtype not in ("float16", "float32"):
            raise BankError(f"bank dtype={dtype!r}: use 'float16' or 'float32'")
        self.dtype, self.delta = dtype, dtype != "float32"
        self.store = store  # BankStore or None (rows then live in the index)
        self.base: np.ndarray | None = None
        self.digest: str | None = None
        self.cache = ByteLRU(cache_bytes)
        self.sources: list[Source | None] = [None]  # id 0: MEMORY
        self._source_id: dict[Source, int] = {}
        self.memory: dict[int, np.ndarray] = {}  # MEMORY code -> encoded row
        self._next_memory = 0
        self.foreign_base = 0  # entries put against a base other than the bank's
        self._width: int | None = None  # known from restored rows before any base is

    @property
    def width(self) -> int | None:
        return self._width if self.base is None else int(self.base.shape[0])

    @property
    def on_disk(self) -> bool:
        return self.store is not None

    # ---- the base ------------------------------------------------------------------------
    def set_base(self, base: np.ndarray, *, write: bool = True) -> None:
        self.base = np.ascontiguousarray(base, np.float32).reshape(-1)
        self.digest = digest(self.base)
        if write and self.store is not None:
            self.store.write_base(self.base, self.digest)

    def ensure_base(self, width: int, base=None, first_row=None) -> None:
        """Fix the base at the first put (`base`: the batch's meta-init, else its first row,
        else zeros); later batches' bases only count as foreign when they differ."""
        if self.base is None:
            if base is None:
                base = np.zeros(width, np.float32) if first_row is None else first_row
            self.set_base(np.asarray(base))

    def check_base(self, base, n: int) -> None:
        if base is not None and not np.array_equal(base, self.base):  # not a sha256 per put
            self.foreign_base += n

    # ---- encoding ------------------------------------------------------------------------
    def encode(self, params: np.ndarray) -> np.ndarray:
        """Absolute float32 rows `[B, P]` -> stored rows (float16 deltas, or float32 as is)."""
        p = np.asarray(params, np.float32)
        if not self.delta:
            return np.ascontiguousarray(p)
        rows = _half_delta(p, self.base)
        if not np.isfinite(rows).all():
            bad = int(np.flatnonzero(~np.isfinite(rows).all(axis=1))[0])
            raise BankError(
                f"bank put: row {bad} differs from the bank's base (sha256 {self.digest[:12]}, "
                "the meta-init of its first put) by more than float16 holds; set "
                "bank.dtype=float32, or use a bank per model run (bank.name / bank.snapshot_uri)"
            )
        return rows

    def decode(self, rows: np.ndarray, delta: bool | None = None) -> np.ndarray:
        out = _widen(np.asarray(rows))
        if self.delta if delta is None else delta:
            out += self.base
        return out

    def transcode(self, rows: np.ndarray, src: Source | None) -> np.ndarray:
        """Rows of `src` (None: this bank's own encoding) in this bank's encoding."""
        if src is None or (src.dtype == self.dtype and src.delta == self.delta):
            return rows
        return self.encode(self.decode(rows, src.delta))

    # ---- locators ------------------------------------------------------------------------
    def source(self, src: Source) -> int:
        if src.delta and self.base is None:
            raise BankError(f"bank rows in {src.path} are deltas but the bank has no base")
        if self._width is None:
            self._width = src.width
        sid = self._source_id.get(src)
        if sid is None:
            sid = len(self.sources)
            self.sources.append(src)
            self._source_id[src] = sid
        return sid

    def codes(self, src: Source, offsets: np.ndarray) -> np.ndarray:
        return (np.int64(self.source(src)) << SHIFT) | np.asarray(offsets, np.int64)

    def hold(self, rows: np.ndarray) -> np.ndarray:
        """Keep encoded rows in memory (no WAL): codes of source MEMORY."""
        codes = np.arange(self._next_memory, self._next_memory + len(rows), dtype=np.int64)
        self._next_memory += len(rows)
        for c, r in zip(codes.tolist(), rows, strict=True):
            self.memory[c] = r.copy()
        return codes

    def remember(self, codes: np.ndarray, rows: np.ndarray) -> None:
        """Write-through: the rows a put just wrote go into the cache."""
        for c, r in zip(np.asarray(codes).tolist(), rows, strict=True):
            self.cache.put(int(c), r.copy())

    def _raw(self, code: int) -> tuple[np.ndarray, Source | None]:
        sid, off = code >> SHIFT, code & _OFFSET
        if sid == MEMORY:
            return self.memory[code], None
        src = self.sources[sid]
        row = self.cache.get(code)
        if row is None:
            data = self.store.read_at(src.path, off, src.row_bytes)
            row = np.frombuffer(data, np.dtype(src.dtype)).copy()
            self.cache.put(code, row)
        return row, src

    def fetch(self, codes: np.ndarray) -> np.ndarray:
        """Absolute float32 rows `[len(codes), P]` for locator codes (through the cache)."""
        out = np.empty((len(codes), self.width or 0), np.float32)
        for i, code in enumerate(np.asarray(codes, np.int64).ravel().tolist()):
            row, src = self._raw(code)
            out[i] = self.decode(row, self.delta if src is None else src.delta)
        return out

    def read_rows(self, codes: np.ndarray) -> list[tuple[np.ndarray, Source | None]]:
        """(stored row, its source) per code, uncached; rows at consecutive offsets of one file
        are read with ONE read (a snapshot's rows are mostly in order: one S3 range read per run,
        not one per row)."""
        codes = np.asarray(codes, np.int64).ravel().tolist()
        out: list = [None] * len(codes)
        i = 0
        while i < len(codes):
            sid, off = codes[i] >> SHIFT, codes[i] & _OFFSET
            if sid == MEMORY:
                out[i] = (self.memory[codes[i]], None)
                i += 1
                continue
            src = self.sources[sid]
            j = i + 1
            while j < len(codes) and codes[j] == codes[j - 1] + src.row_bytes:
                j += 1  # same source (high bits equal), next row
            data = self.store.read_at(src.path, off, (j - i) * src.row_bytes)
            rows = np.frombuffer(data, np.dtype(src.dtype)).reshape(j - i, src.width)
            for k in range(i, j):
                out[k] = (rows[k - i], src)
            i = j
        return out

    def encoded(self, codes: np.ndarray, chunk: int = 256):
        """Yield the rows of `codes` in this bank's encoding, `chunk` rows at a time (a snapshot
        streams them to its params file); read in runs, not cached (a snapshot reads them all)."""
        codes = np.asarray(codes, np.int64).ravel()
        for a in range(0, len(codes), chunk):
            got = self.read_rows(codes[a : a + chunk])
            rows = [self.transcode(r[None], src)[0] for r, src in got]
            yield np.stack(rows).astype(self.dtype, copy=False)

    def decoded(self, codes: np.ndarray) -> np.ndarray:
        """Absolute float32 rows of `codes`, read in runs and not cached (an import)."""
        got = self.read_rows(codes)
        out = np.empty((len(got), self.width or 0), np.float32)
        for i, (row, src) in enumerate(got):
            out[i] = self.decode(row, self.delta if src is None else src.delta)
        return out

    def relocate(self, old: np.ndarray, src: Source, start: int) -> np.ndarray:
        """Every live entry now lives in `src` (a new snapshot), row i at `start + i * row`:
        the new codes; sources, memory rows and file handles of the old ones are dropped."""
        self.sources, self._source_id, self.memory = [None], {}, {}
        new = self.codes(src, start + np.arange(len(old), dtype=np.int64) * src.row_bytes)
        self.cache.rekey(np.asarray(old, np.int64).ravel(), new)
        if self.store is not None:
            self.store.close_readers(keep={src.path})
        return new

    def reset(self) -> None:
        self.sources, self._source_id, self.memory = [None], {}, {}
        self.cache.clear()
        self.base = self.digest = self._width = None

    def stats(self) -> dict:
        return {
            "where": "disk" if self.on_disk else "memory",
            "base_sha256": self.digest,
            "entries_put_against_another_base": self.foreign_base,
            "cache_bytes": self.cache.bytes,
            "cache_limit_bytes": self.cache.limit,
            "cache_hits": self.cache.hits,
            "cache_misses": self.cache.misses,
            "memory_rows": len(self.memory),
        }
