"""The memory bank's behaviour, without Ray: index + write-ahead log + snapshots + stats.

`pipeline/bank/actor.py` runs this class as the one named Ray actor; tests and the CLI can
also run it in-process against a snapshot URI. Every method is one call into the pure index
(`index.py`) plus persistence (`store.py`).

Durability: with `snapshot_uri` set and `wal=True`, `put` writes its batch to the WAL (fsync /
one S3 PUT) BEFORE applying and returning, so an acknowledged entry survives a crash.
Group commit: `put_many(batches)` appends every batch of the call to the WAL and fsyncs ONCE
before acknowledging any (`BankStore.append_group`); `put(batch)` is a group of one. Why an
explicit batch call and not a commit leader coalescing concurrent `put`s: the actor runs one
call at a time (a plain Ray actor, `max_concurrency=1`), so concurrent callers' puts never
overlap inside it and a leader would have no followers; making it threaded would put a lock
around every index read and write for a gain the caller can get by handing over its queued
batches in one call (as `import_snapshot` does, and `actor.put_many` for any client). With
`wal=False` the documented bound is: entries put since the last snapshot (at most
`snapshot_every` batches) can be lost. Without `snapshot_uri` the bank lives in memory only.
LRU recency from queries is not logged, so after a restore LRU order reflects writes only.

Parameters (`params.py`): stored as float16 deltas from the bank's base (`bank.dtype=float32`:
the values, exact). With a `snapshot_uri` the heap holds no parameter rows: the index keeps one
int64 locator per entry into the WAL frame the put wrote (or, after a snapshot, the snapshot's
params file), and a hit reads the row through an LRU cache of `bank.param_cache_mb`.
"""

from __future__ import annotations

import logging
import os
from functools import lru_cache
from typing import Any

import numpy as np

from pipeline.bank.index import BankIndex
from pipeline.bank.params import ParamRows, Source
from pipeline.bank.store import BankStore
from pipeline.config import BankConfig
from pipeline.errors import BankError

log = logging.getLogger(__name__)


class BankService:
    def __init__(self, cfg: dict | BankConfig) -> None:
        self.cfg = cfg if isinstance(cfg, BankConfig) else BankConfig.model_validate(cfg)
        self.store = (
            BankStore(self.cfg.snapshot_uri, s3_endpoint=self.cfg.s3_endpoint)
            if self.cfg.snapshot_uri
            else None
        )
        cache = int(self.cfg.param_cache_mb * 2**20)
        self.params = ParamRows(self.cfg.dtype, cache, self.store)
        payload = "locator" if self.store is not None else self.cfg.dtype
        self.index = BankIndex(
            self.cfg.capacity,
            self.cfg.eviction,
            payload,
            ann_min_entries=self.cfg.ann_min_entries,
        )
        self.wal_seq = -1  # last WAL record written (or replayed)
        self.since_snapshot = 0
        self.counts = {"puts": 0, "entries_put": 0, "queries": 0, "hits": 0, "evicted": 0}
        self.warnings: list[str] = []
        self._trim_every = _TRIM_EVERY
        self.restored = {"snapshot": None, "wal_records": 0, "entries": 0}
        if self.store is not None:
            self._restore()

    def _restore(self) -> None:
        r = self.store.restore()
        self.store.repair_torn(r.torn)  # this bank owns the WAL: later appends start clean
        self.warnings.extend(r.warnings)
        for w in r.warnings:
            log.warning("%s", w)
        if r.base is not None:
            self.params.set_base(r.base, write=self.store.read_base() is None)
        if r.cols is not None and r.cols["keys"]:
            name = self.store.snapshot_name(r.snapshot_seq)
            codes = self._located(r.cols["param_loc"], len(r.cols["keys"]), name)
            cols = dict(r.cols, params=codes)
            self.index.load_columns(cols, clock=r.clock)
        self.wal_seq = r.wal_upto
        for seq, rec in r.records:
            rec["params"] = self._located(rec["param_loc"], len(rec["keys"]), f"WAL record {seq}")
            self._apply(rec)
            self.wal_seq = seq
        self.since_snapshot = len(r.records)
        snap = self.store.snapshot_name(r.snapshot_seq) if r.snapshot_seq >= 0 else None
        self.restored = {
            "snapshot": snap,
            "wal_records": len(r.records),
            "entries": len(self.index),
        }

    def _located(self, loc: dict, n: int, what: str) -> np.ndarray:
        """Locator codes `[n, 1]` for `n` consecutive rows at `loc` (a restored file)."""
        if loc["delta"] and loc["base"] != self.params.digest:
            have = (self.params.digest or "none")[:12]
            raise BankError(
                f"bank {what} under {self.cfg.snapshot_uri} holds float16 deltas from base "
                f"{str(loc['base'])[:12]} but the bank's base.safetensors is {have}: put back the "
                "bank's own base.safetensors (each snapshot directory holds a copy)"
            )
        src = Source(loc["path"], loc["dtype"], loc["delta"], loc["width"])
        return self.params.codes(src, loc["start"] + np.arange(n) * src.row_bytes)[:, None]

    def _apply(self, batch: dict) -> Any:
        return self.index.upsert(
            list(batch["keys"]),
            batch["descriptor"],
            batch["params"],
            steps=batch.get("step", 0),
            support=batch.get("support", 0),
            loss=batch.get("loss", 0.0),
        )

    # ---- writes --------------------------------------------------------------------------
    def put(self, batch: dict) -> dict:
        """Store a batch {keys, descriptor [B,D], params [B,P], step, support, loss}.
        Returns only after the batch is durable (WAL) when persistence is on."""
        return self.put_many([batch])[0]

    def put_many(self, batches: list[dict]) -> list[dict]:
        """Group commit: store several put batches with ONE WAL fsync; returns one `put`
        result per batch, only after all of them are durable. Every batch is validated before
        any reaches the WAL (one bad batch rejects the call). The group is one WAL frame, so a
        crash before this returns keeps all of it or none (it was never acknowledged)."""
        batches = self._validated([self._normalised(b) for b in batches])
        if not batches:
            return []
        first_put = batches[0]
        self.params.ensure_base(
            first_put["params"].shape[1], first_put["base"], first_put["params"][0]
        )
        for b in batches:
            self.params.check_base(b["base"], len(b["keys"]))
        batches = [dict(b, params=self.params.encode(b["params"])) for b in batches]
        first = self.wal_seq + 1
        if self.store is not None and self.cfg.wal:
            records = [(first + i, b) for i, b in enumerate(batches)]
            path, at = self.store.append_group(records, self._encoding())
            rows = np.concatenate([b["params"] for b in batches])
            src = Source(path, self.cfg.dtype, self.params.delta, rows.shape[1])
            codes = self.params.codes(src, at + np.arange(len(rows)) * src.row_bytes)
            self.params.remember(codes, rows)  # write-through: a fresh entry is a likely hit
            batches = self._with_payload(batches, codes)
        elif self.store is not None:  # no WAL: held in memory until the next snapshot
            codes = self.params.hold(np.concatenate([b["params"] for b in batches]))
            batches = self._with_payload(batches, codes)
        out = []
        for run in _disjoint_runs(batches):
            out.extend(self._apply_run(run))
        self.wal_seq += len(batches)
        self.counts["puts"] += len(batches)
        self.counts["entries_put"] += sum(len(b["keys"]) for b in batches)
        self.since_snapshot += len(batches)
        if self.store is not None and self.since_snapshot >= self.cfg.snapshot_every:
            self.snapshot()
        self._trim_every -= 1
        if self._trim_every <= 0:
            self._trim_every = _TRIM_EVERY
            _malloc_trim()
        return out

    def _encoding(self) -> dict:
        if self.params.delta:
            return {"params": "delta", "base": self.params.digest}
        return {"params": "absolute"}

    @staticmethod
    def _with_payload(batches: list[dict], codes: np.ndarray) -> list[dict]:
        out, at = [], 0
        for b in batches:
            n = len(b["keys"])
            out.append(dict(b, params=codes[at : at + n, None]))
            at += n
        return out

    def _apply_run(self, run: list[dict]) -> list[dict]:
        """Apply batches with pairwise-distinct keys as ONE index upsert: the same per-entry
        steps in the same order as one upsert each (what a WAL replay does), so the state is the
        same, for a fraction of the per-call cost (56 -> 11 us an entry for 1-entry batches,
        the put_many bottleneck once the fsync is shared). `stored` and `rejected` are per batch;
        the run's evictions are reported on its last batch (they cannot be told apart)."""
        res = self._apply(
            {k: np.concatenate([b[k] for b in run]) for k in ("descriptor", "params", *_META)}
            | {"keys": [k for b in run for k in b["keys"]]}
        )
        self.counts["evicted"] += len(res.evicted)
        rejected, out = set(res.rejected), []
        for i, b in enumerate(run):
            mine = [k for k in b["keys"] if k in rejected]
            last = i == len(run) - 1
            out.append(
                {
                    "stored": len(b["keys"]) - len(mine),
                    "evicted": res.evicted if last else [],
                    "rejected": mine,
                    "entries": len(self.index),
                }
            )
        return out

    def _normalised(self, batch: dict) -> dict:
        b = len(batch["keys"])
        base = batch.get("base")
        return {
            "keys": list(batch["keys"]),
            "descriptor": np.atleast_2d(np.asarray(batch["descriptor"], np.float32)),
            "params": np.atleast_2d(np.asarray(batch["params"], np.float32)),
            "base": None if base is None else np.asarray(base, np.float32).reshape(-1),
            **{k: _per_entry(batch.get(k, d), b) for k, d in _META.items()},
        }

    def _validated(self, batches: list[dict]) -> list[dict]:
        """Check every batch against the index (and, on an empty bank, against the group's
        first batch, which will fix the widths): a rejected batch must not reach the WAL."""
        located = self.index.dtype == "locator"
        width = self.params.width
        for b in batches:
            p = b["params"]
            # a locator index holds one code per entry: the widths are checked here
            self.index.check_batch(b["keys"], b["descriptor"], p[:, :1] if located else p)
            if width is not None and self.index.dim is not None and p.shape[1] != width:
                raise BankError(
                    f"bank put: descriptor dim {b['descriptor'].shape[1]} / {p.shape[1]} params "
                    f"do not match the bank's {self.index.dim} / {width}; use the same model and "
                    "descriptor for every writer, or a separate bank (bank.name)"
                )
            if b["base"] is not None and b["base"].shape[0] != p.shape[1]:
                raise BankError(
                    f"bank put: base has {b['base'].shape[0]} values but the parameter rows "
                    f"{p.shape[1]}; send the flat meta-init the rows were adapted from"
                )
        if self.index.dim is None and batches:
            want = (batches[0]["descriptor"].shape[1], batches[0]["params"].shape[1])
            for b in batches[1:]:
                got = (b["descriptor"].shape[1], b["params"].shape[1])
                if got != want:
                    raise BankError(
                        f"bank put: descriptor dim {got[0]} / {got[1]} params do not match "
                        f"the first batch's {want[0]} / {want[1]} in one put_many; use the "
                        "same model and descriptor for every writer"
                    )
        return batches

    def snapshot(self, uri: str | None = None) -> str:
        """Write a snapshot (to `uri` for an export); returns its name."""
        store = BankStore(uri, s3_endpoint=self.cfg.s3_endpoint) if uri else self.store
        if store is None:
            raise _no_store()
        cols = self.index.columns()
        n = len(cols["keys"])
        payload = cols.get("params")
        if n == 0:
            rows = ()
        elif self.index.dtype == "locator":
            rows = self.params.encoded(payload[:, 0])
        else:
            rows = (payload[a : a + 256] for a in range(0, n, 256))
        width = self.params.width or 0
        if n and self.params.delta:
            self.params.ensure_base(width)  # a bank from before deltas: zeros
        seq, path, start = store.write_snapshot(
            {k: v for k, v in cols.items() if k != "params"},
            wal_upto=self.wal_seq,
            clock=self.index._clock,
            dtype=self.cfg.dtype,
            rows=rows,
            width=width,
            base=self.params.base if self.params.delta else None,
        )
        if store is self.store:
            self.since_snapshot = 0
            if n:  # every entry now reads from this snapshot (older files may be collected)
                src = Source(path, self.cfg.dtype, self.params.delta, width)
                self.index.replace_params(self.params.relocate(payload[:, 0], src, start))
        return store.snapshot_name(seq)

    def import_snapshot(self, uri: str, chunk: int = 256) -> int:
        """Upsert every entry of the latest snapshot at `uri` (and its WAL) through this bank's
        WAL, `chunk` entries per group commit (so no more than that is decoded at once)."""
        store = BankStore(uri, s3_endpoint=self.cfg.s3_endpoint)
        r = store.restore()
        if r.warnings and r.cols is None:
            raise BankError("; ".join(r.warnings))
        theirs = ParamRows("float32", 0, store)
        if r.base is not None:
            theirs.set_base(r.base, write=False)
        batches = ([r.cols] if r.cols and r.cols["keys"] else []) + [rec for _, rec in r.records]
        group, held, total = [], 0, 0
        for c in batches:
            loc = c["param_loc"]
            src = Source(loc["path"], loc["dtype"], loc["delta"], loc["width"])
            for a in range(0, len(c["keys"]), chunk):
                keys = c["keys"][a : a + chunk]
                offsets = loc["start"] + np.arange(a, a + len(keys)) * src.row_bytes
                codes = theirs.codes(src, offsets)
                part = {k: c[k][a : a + chunk] for k in ("descriptor", *_META) if k in c}
                rows = theirs.decoded(codes)
                group.append({**part, "keys": keys, "params": rows, "base": r.base})
                held += len(keys)
                if held >= chunk:
                    self.put_many(group)
                    total, group, held = total + held, [], 0
        if group:
            self.put_many(group)
            total += held
        store.close_readers()
        return total

    def clear(self) -> int:
        n = len(self.index)
        self.index.clear()
        self.params.reset()
        if self.store is not None:
            self.store.clear()
            self.snapshot()  # an empty snapshot marks the cleared state durably
        return n

    # ---- reads ---------------------------------------------------------------------------
    def query(self, descriptors: np.ndarray, k: int | None = None, *, with_params: bool = True):
        """Top-k per query: keys, sims [B,k], hit [B] (best sim >= threshold), params [B,k,P]."""
        k = k or self.cfg.top_k
        hits = self.index.search(descriptors, k)
        best = hits.sims[:, 0] if hits.sims.shape[1] else np.full(len(hits.keys), -np.inf)
        hit = best >= self.cfg.threshold
        self.counts["queries"] += len(hit)
        self.counts["hits"] += int(hit.sum())
        out = {"keys": hits.keys, "sims": hits.sims, "hit": hit}
        b, kk = hits.slots.shape
        out["support"] = self.index.meta_of(hits.slots.ravel(), "support").reshape(b, kk)
        if with_params:
            flat = self._params_at(hits.slots.ravel())
            out["params"] = flat.reshape(b, kk, flat.shape[1])
        return out

    def _params_at(self, slots: np.ndarray) -> np.ndarray:
        """Absolute float32 parameters `[len(slots), P]` of index rows."""
        if len(slots) == 0 or self.index.dim is None:
            return np.zeros((len(slots), self.params.width or 0), np.float32)
        payload = self.index.params_of(slots)
        if self.index.dtype == "locator":
            return self.params.fetch(payload[:, 0])
        return self.params.decode(payload)

    def neighbours(self, key: str, k: int = 5) -> dict:
        """Nearest stored tasks to a stored task (itself excluded)."""
        e = self.index.get(key)
        hits = self.index.search(e["descriptor"], k + 1, touch=False)
        pairs = [
            (kk, float(s)) for kk, s in zip(hits.keys[0], hits.sims[0], strict=True) if kk != key
        ]
        return {"key": key, "neighbours": pairs[:k]}

    def get(self, key: str, with_params: bool = True) -> dict:
        """One entry: key, descriptor, metadata and (`with_params`) its float32 parameters."""
        e = self.index.get(key)
        if with_params:
            e["params"] = self._params_at(np.array([self.index._slot[key]]))[0]
        else:
            del e["params"]
        return e

    def keys(self) -> list[str]:
        return self.index.keys()

    def stats(self) -> dict:
        q = self.counts["queries"]
        return {
            "entries": len(self.index),
            "capacity": self.cfg.capacity,
            "eviction": self.cfg.eviction,
            "dim": self.index.dim,
            "n_params": self.params.width,
            "dtype": self.cfg.dtype,
            "bytes": self.index.nbytes() + self.params.cache.bytes,
            "params": self.params.stats(),
            "hit_rate": (self.counts["hits"] / q) if q else None,
            "threshold": self.cfg.threshold,
            **self.counts,
            "wal_seq": self.wal_seq,
            "snapshot_uri": self.cfg.snapshot_uri,
            "restored": self.restored,
            "warnings": list(self.warnings),
        }

    def ping(self) -> bool:
        return True

    def pid(self) -> int:
        """The serving process (the actor's, under Ray): what a crash test SIGKILLs."""
        return os.getpid()


_META = {"step": 0, "support": 0, "loss": 0.0}
# every this many put calls the freed heap goes back to the OS: a put's transient buffers (the
# batch, its float16 rows, its WAL frame: MBs) are freed, but glibc keeps freed heap memory
# resident, so without it resident memory per entry "beyond the cache" was 2.7-3.2 KB at 20k
# entries instead of the index's 0.7 KB (bench/RESULTS.md, issue 14 s.3)
_TRIM_EVERY = 32


def _malloc_trim() -> None:
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


@lru_cache(maxsize=1)
def _libc():
    """glibc, for malloc_trim; None elsewhere (musl, macOS: nothing to do)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 - glibc only
    except (OSError, AttributeError):
        return None
    return libc


def _disjoint_runs(batches: list[dict]) -> list[list[dict]]:
    """Consecutive batches split where a key repeats (one upsert holds each key once)."""
    runs: list[list[dict]] = []
    seen: set[str] = set()
    for b in batches:
        if not runs or not seen.isdisjoint(b["keys"]):
            runs.append([])
            seen = set()
        runs[-1].append(b)
        seen.update(b["keys"])
    return runs


def _per_entry(value: Any, b: int) -> np.ndarray:
    """A metadata field as one value per entry (a scalar is repeated: `np.full` is several
    times cheaper than `broadcast_to`, and this runs per put on the group-commit path)."""
    a = np.asarray(value)
    return np.full(b, a) if a.ndim == 0 else np.broadcast_to(a, (b,))


def _no_store():
    return BankError(
        "this bank has no bank.snapshot_uri: set one (a directory or s3://bucket/prefix) "
        "or pass an export URI"
    )
