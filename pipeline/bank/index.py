"""PURE memory-bank index: task descriptors -> adapted parameters, with cosine top-k search.

Storage is a set of preallocated, growable numpy arrays (one row per entry), not a list of
dicts, so an entry costs its parameter bytes + its descriptor + a small constant (metadata
columns and the key string). The parameter column is the entry's payload: its stored rows
(float32 or float16), or with dtype "locator" one int64 per entry saying where the rows are
on disk (`pipeline/bank/params.py`; the index never reads them). Rows are kept dense
(`[0, n)`): search is one matrix-vector product over a contiguous block, and
deletion/eviction moves the last row into the hole.

Approximate search: from `ann_min_entries` entries on, queries go to an HNSW index
(usearch, float16 vectors, cosine) kept beside the dense block; below that size exact
search is faster (bench/bank_ann.py). HNSW labels are stable entry ids, not rows (rows move
on removal); an overwritten or evicted entry is removed from the HNSW index too.

No ray, boto3 or mlflow here: the actor (`pipeline/bank/actor.py`) is the shell around it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from pipeline.bank.ann import EF_SEARCH, Hnsw
from pipeline.errors import BankError

Eviction = Literal["lru", "worst_loss"]
_DTYPES = {"float32": np.float32, "float16": np.float16, "locator": np.int64}
_INITIAL_ROWS = 256


def normalise(vectors: np.ndarray, *, what: str = "descriptor") -> np.ndarray:
    """Unit-length float32 rows; a zero or non-finite row cannot be compared, so it is an error."""
    v = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    if not np.isfinite(v).all():
        bad = int(np.flatnonzero(~np.isfinite(v).all(axis=1))[0])
        raise BankError(f"{what} row {bad} has NaN/inf values; compute it from a finite model")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    if (norms == 0).any():
        bad = int(np.flatnonzero(norms[:, 0] == 0)[0])
        raise BankError(f"{what} row {bad} is all zeros and has no direction to compare")
    return v / norms


@dataclass
class Hits:
    """Top-k results for a batch of B queries (k' = min(k, entries))."""

    keys: list[list[str]]  # [B][k']
    sims: np.ndarray  # [B, k'] float32 cosine similarity, best first
    slots: np.ndarray  # [B, k'] int64 rows (valid until the next write)


@dataclass
class UpsertResult:
    inserted: int = 0
    updated: int = 0
    evicted: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)  # worst_loss: worse than every stored entry


class BankIndex:
    """Descriptor index with upsert by task key and a capacity with LRU or worst-loss eviction."""

    META = ("step", "support", "loss", "last_used")
    _COLUMNS = ("_desc", "_params", "_step", "_support", "_loss", "_last_used", "_id")

    def __init__(
        self,
        capacity: int,
        eviction: Eviction = "lru",
        dtype: str = "float32",
        *,
        dim: int | None = None,
        n_params: int | None = None,
        ann_min_entries: int | None = None,
        ann_ef: int = EF_SEARCH,
    ) -> None:
        if capacity <= 0:
            raise BankError(f"bank capacity={capacity} must be positive")
        if eviction not in ("lru", "worst_loss"):
            raise BankError(f"bank eviction={eviction!r}: use 'lru' or 'worst_loss'")
        if dtype not in _DTYPES:
            raise BankError(f"bank dtype={dtype!r}: use 'float32' or 'float16'")  # or 'locator'

        self.capacity, self.eviction, self.dtype = capacity, eviction, dtype
        self.dim, self.n_params = dim, n_params
        self._n = 0
        self._clock = 0  # logical time for LRU: bumps on every write and every hit
        self._keys: list[str] = []
        self._slot: dict[str, int] = {}
        self._rows = 0
        self.ann_min_entries, self.ann_ef = ann_min_entries, ann_ef
        self._ann = None  # usearch.Index once the bank reaches ann_min_entries
        self._next_id = 0
        if dim is not None and n_params is not None:
            self._allocate(dim, n_params)

    @classmethod
    def from_config(cls, cfg) -> BankIndex:  # cfg: pipeline.config.BankConfig
        return cls(cfg.capacity, cfg.eviction, cfg.dtype, ann_min_entries=cfg.ann_min_entries)

    # ---- storage -------------------------------------------------------------------------
    def _allocate(self, dim: int, n_params: int) -> None:
        self.dim, self.n_params = int(dim), int(n_params)
        rows = min(self.capacity, _INITIAL_ROWS)
        self._desc = np.zeros((rows, self.dim), np.float32)
        self._params = np.zeros((rows, self.n_params), _DTYPES[self.dtype])
        self._step = np.zeros(rows, np.int64)
        self._support = np.zeros(rows, np.int32)
        self._loss = np.zeros(rows, np.float32)
        self._last_used = np.zeros(rows, np.int64)
        self._id = np.zeros(rows, np.int64)  # stable entry id: the HNSW label
        self._rows = rows

    def _grow(self, need: int) -> None:
        if need <= self._rows:
            return
        rows = min(self.capacity, max(need, 2 * self._rows))
        for name in self._COLUMNS:
            old = getattr(self, name)
            new = np.zeros((rows, *old.shape[1:]), old.dtype)
            new[: self._n] = old[: self._n]
            setattr(self, name, new)
        self._rows = rows

    def __len__(self) -> int:
        return self._n

    def __contains__(self, key: str) -> bool:
        return key in self._slot

    def keys(self) -> list[str]:
        return list(self._keys)

    def nbytes(self) -> int:
        """Bytes held for the live entries (allocated rows, metadata and key strings)."""
        if self.dim is None:
            return 0
        arrays = sum(getattr(self, n).nbytes for n in self._COLUMNS)
        keys = sum(len(k) for k in self._keys) + 120 * self._n  # str + dict slot + list ref
        ann = 0 if self._ann is None else self._ann.nbytes()
        return arrays + keys + ann

    # ---- writes --------------------------------------------------------------------------
    def upsert(
        self,
        keys: Sequence[str],
        descriptors: np.ndarray,
        params: np.ndarray,
        *,
        steps: Sequence[int] | np.ndarray | int = 0,
        support: Sequence[int] | np.ndarray | int = 0,
        loss: Sequence[float] | np.ndarray | float = 0.0,
    ) -> UpsertResult:
        """Insert or overwrite entries by task key; evicts past capacity by the policy."""
        desc, p = self.check_batch(keys, descriptors, params)
        b = len(keys)
        if self.dim is None:
            self._allocate(desc.shape[1], p.shape[1])
        steps_a = np.broadcast_to(np.asarray(steps, np.int64), (b,))
        support_a = np.broadcast_to(np.asarray(support, np.int32), (b,))
        loss_a = np.broadcast_to(np.asarray(loss, np.float32), (b,))
        out = UpsertResult()
        pending: list[str] = []  # written keys: added to the HNSW index in one call below
        for i, key in enumerate(keys):
            slot = self._slot.get(key)
            if slot is None:
                if self._n >= self.capacity:
                    victim = self._victim()
                    if self.eviction == "worst_loss" and loss_a[i] >= self._loss[victim]:
                        out.rejected.append(key)
                        continue
                    out.evicted.append(self._keys[victim])
                    self._remove_slot(victim)
                self._grow(self._n + 1)
                slot = self._n
                self._n += 1
                self._keys.append(key)
                self._slot[key] = slot
                out.inserted += 1
            else:
                out.updated += 1
                self._ann_remove(slot)
            self._clock += 1
            self._id[slot] = self._next_id
            self._next_id += 1
            pending.append(key)
            self._desc[slot] = desc[i]
            self._params[slot] = p[i]
            self._step[slot], self._support[slot] = steps_a[i], support_a[i]
            self._loss[slot], self._last_used[slot] = loss_a[i], self._clock
        self._ann_add(pending)
        self._ann_build()
        return out

    def check_batch(
        self, keys: Sequence[str], descriptors: np.ndarray, params: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Validate a put batch without changing anything; returns (unit descriptors, params)."""
        b = len(keys)
        desc = normalise(descriptors)
        p = np.atleast_2d(np.asarray(params))
        if desc.shape[0] != b or p.shape[0] != b:
            raise BankError(
                f"bank put: {b} keys but {desc.shape[0]} descriptors and {p.shape[0]} "
                "parameter rows; give one descriptor and one flat parameter vector per key"
            )
        if len(set(keys)) != b:
            raise BankError("bank put: duplicate task keys in one batch; put each key once")
        if self.dim is not None and (desc.shape[1] != self.dim or p.shape[1] != self.n_params):
            raise BankError(
                f"bank put: descriptor dim {desc.shape[1]} / {p.shape[1]} params do not match "
                f"the bank's {self.dim} / {self.n_params}; use the same model and descriptor "
                "for every writer, or a separate bank (bank.name)"
            )
        return desc, p

    def _victim(self) -> int:
        if self.eviction == "lru":
            return int(np.argmin(self._last_used[: self._n]))
        return int(np.argmax(self._loss[: self._n]))

    # ---- the approximate index ---------------------------------------------------------
    def _ann_build(self) -> None:
        """Build the HNSW index once the bank is big enough (then it is kept up to date)."""
        if self._ann is None and self.ann_min_entries and self._n >= self.ann_min_entries:
            self._ann = Hnsw(self.dim, self.ann_ef)
            n = self._n
            self._ann.add(self._id[:n], self._desc[:n], np.arange(n))

    def _ann_add(self, keys: list[str]) -> None:
        """Add this batch's live entries (rows looked up now: evictions moved some)."""
        if self._ann is None:
            return
        rows = np.array([self._slot[k] for k in keys if k in self._slot], np.int64)
        if len(rows):
            self._ann.add(self._id[rows], self._desc[rows], rows)

    def _ann_remove(self, slot: int) -> None:
        if self._ann is not None:
            self._ann.remove(int(self._id[slot]))

    def _remove_slot(self, slot: int) -> None:
        last = self._n - 1
        self._ann_remove(slot)
        del self._slot[self._keys[slot]]
        if slot != last:  # keep rows dense: move the last row into the hole
            moved = self._keys[last]
            for name in self._COLUMNS:
                arr = getattr(self, name)
                arr[slot] = arr[last]
            self._keys[slot] = moved
            self._slot[moved] = slot
            if self._ann is not None:
                self._ann.moved(int(self._id[slot]), slot)
        self._keys.pop()
        self._n = last

    def remove(self, key: str) -> bool:
        slot = self._slot.get(key)
        if slot is None:
            return False
        self._remove_slot(slot)
        return True

    def clear(self) -> None:
        self._n, self._keys, self._slot = 0, [], {}
        self._ann = None

    # ---- reads ---------------------------------------------------------------------------
    def search(
        self, queries: np.ndarray, k: int = 1, *, touch: bool = True, exact: bool | None = None
    ) -> Hits:
        """Cosine top-k for each query row. `touch` marks hits as used (for LRU). `exact`:
        True forces exact search; None uses the HNSW index once the bank has one."""
        q = normalise(queries, what="query descriptor")
        b = q.shape[0]
        kk = min(k, self._n)
        if kk == 0:
            empty = np.zeros((b, 0), np.int64)
            return Hits([[] for _ in range(b)], empty.astype(np.float32), empty)
        if q.shape[1] != self.dim:
            raise BankError(
                f"bank query: descriptor dim {q.shape[1]} does not match the bank's {self.dim}"
            )
        found = None if self._ann is None or exact else self._ann.search(q, kk)
        slots, top = found if found is not None else self._exact_search(q, kk)
        if touch:
            self._clock += 1
            self._last_used[slots.ravel()] = self._clock
        return Hits([[self._keys[s] for s in row] for row in slots], top, slots)

    def _exact_search(self, q: np.ndarray, kk: int) -> tuple[np.ndarray, np.ndarray]:
        """-> (slots, cosine sims) `[B, kk]`, best first: one product over the dense block."""
        b = q.shape[0]
        sims = q @ self._desc[: self._n].T  # [B, n]
        if kk < self._n:
            part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        else:
            part = np.broadcast_to(np.arange(self._n), (b, self._n))
        part_sims = np.take_along_axis(sims, part, axis=1)
        order = np.argsort(-part_sims, axis=1, kind="stable")
        slots = np.take_along_axis(part, order, axis=1).astype(np.int64)
        return slots, np.take_along_axis(part_sims, order, axis=1)

    def params_of(self, slots: np.ndarray | Sequence[int]) -> np.ndarray:
        """Flat float32 parameters of the given rows (float16 storage is widened); with dtype
        "locator" the int64 locators, as stored."""
        slots = np.asarray(slots, np.int64)
        if self.dim is None:  # never written: no rows to give
            return np.zeros((len(slots), 0), np.float32)
        rows = self._params[slots]
        return rows if self.dtype == "locator" else rows.astype(np.float32)

    def meta_of(self, slots: np.ndarray | Sequence[int], name: str) -> np.ndarray:
        """One metadata column (`META`) at the given rows."""
        if name not in self.META:
            raise BankError(f"bank metadata {name!r}: use one of {self.META}")
        if self.dim is None:
            return np.zeros(len(np.asarray(slots)), np.int64)
        return getattr(self, f"_{name}")[np.asarray(slots, np.int64)].copy()

    def get(self, key: str) -> dict:
        slot = self._slot.get(key)
        if slot is None:
            raise BankError(f"bank has no entry for task key {key!r}")
        return {
            "key": key,
            "descriptor": self._desc[slot].copy(),
            "params": self.params_of([slot])[0],
            **{m: getattr(self, f"_{m}")[slot].item() for m in self.META},
        }

    # ---- whole-state views for persistence ----------------------------------------------
    def columns(self) -> dict[str, np.ndarray | list[str]]:
        """Live rows as column arrays (views; copy before mutating the index again)."""
        n = self._n
        if self.dim is None:
            return {"keys": []}
        return {
            "keys": list(self._keys),
            "descriptor": self._desc[:n],
            "params": self._params[:n],
            **{m: getattr(self, f"_{m}")[:n] for m in self.META},
        }

    def replace_params(self, rows: np.ndarray) -> None:
        """New payloads for every live entry, in `columns()` order (a snapshot moved them)."""
        self._params[: self._n] = np.asarray(rows).reshape(self._n, -1)

    def load_columns(self, cols: dict, *, clock: int | None = None) -> None:
        """Replace the contents with `columns()`-shaped data (a restored snapshot)."""
        keys = list(cols["keys"])
        self.clear()
        if not keys:
            return
        desc, params = np.asarray(cols["descriptor"]), np.asarray(cols["params"])
        if len(keys) > self.capacity:
            raise BankError(
                f"snapshot holds {len(keys)} entries but bank.capacity={self.capacity}; "
                "raise bank.capacity to restore it"
            )
        self._allocate(desc.shape[1], params.shape[1])
        self._grow(len(keys))
        n = len(keys)
        self._desc[:n] = desc
        self._params[:n] = params
        for m in self.META:
            getattr(self, f"_{m}")[:n] = np.asarray(cols[m])
        self._keys, self._slot, self._n = keys, {k: i for i, k in enumerate(keys)}, n
        self._clock = int(clock if clock is not None else self._last_used[:n].max(initial=0))
        self._id[:n] = np.arange(n)
        self._next_id = n
        self._ann_build()
