"""PURE: the approximate-nearest-neighbour side of the bank index (HNSW from usearch).

Labels are stable entry ids (the index's rows move on removal; ids do not). Vectors are
unit descriptors stored as float16 (half the memory of float32, recall unchanged at the
bank's sizes: bench/RESULTS.md); similarity is cosine. usearch over faiss-cpu: its HNSW
removes entries (eviction and overwrites need it; faiss's HNSW cannot remove).
"""

from __future__ import annotations

import numpy as np

SERIAL_BELOW = 1_000  # entries inserted on one thread (see `Hnsw.add`): ~0.1 s of a build
# ef 160: recall@5 0.951 at 100k and 0.976-0.979 at 1M entries (bench/bank.py --scale --ef);
# 192 bought +0.004-0.008 recall for +15-30% p50 and a 1M p99 over 5 ms in 2 of 3 passes
EF_SEARCH = 160


class Hnsw:
    # connectivity 32 / expansion 128: recall@5 >= 0.95 on bench/bank_ann.py's clustered
    # descriptors where 16 / 64 / ef 64 gave 0.86 (bench/RESULTS.md)
    def __init__(self, dim: int, ef_search: int = EF_SEARCH, connectivity: int = 32) -> None:
        from usearch.index import Index  # imported only by banks that reach the size

        self._index = Index(
            ndim=dim, metric="cos", dtype="f16", connectivity=connectivity, expansion_add=128
        )
        self._index.expansion_search = ef_search
        self.row_of: dict[int, int] = {}  # entry id -> its current row in the dense block

    def add(self, ids: np.ndarray, vectors: np.ndarray, rows: np.ndarray) -> None:
        ids, vectors = np.asarray(ids, np.uint64), np.asarray(vectors, np.float32)
        # The graph's first SERIAL_BELOW entries go in on one thread: concurrent inserts into a
        # near-empty graph now and then link it badly (300 entries: recall@3 down to 0.73 in
        # 4 of 400 two-thread builds, and two builds of the same entries answered differently;
        # one thread: 1.0 in all 400, the same graph every time). Past that, all cores.
        serial = max(0, min(len(ids), SERIAL_BELOW - len(self._index)))
        if serial:
            self._index.add(ids[:serial], vectors[:serial], threads=1)
        if serial < len(ids):
            self._index.add(ids[serial:], vectors[serial:], threads=0)
        self.row_of.update(zip(ids.tolist(), np.asarray(rows).tolist(), strict=True))

    def remove(self, entry_id: int) -> None:
        self._index.remove(int(entry_id))
        self.row_of.pop(int(entry_id), None)

    def moved(self, entry_id: int, row: int) -> None:
        self.row_of[int(entry_id)] = row

    def search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """-> (rows, cosine sims) `[B, k]` best first; None when fewer than k were found."""
        q = np.atleast_2d(np.asarray(q, np.float32))
        # One query runs on the calling thread: threads=0 dispatches it to usearch's pool
        # for nothing (one query cannot be split), ~0.1-0.5 ms of a ~2 ms search at 100k
        # entries (profile, 2 shared cores). A batch still uses every core.
        found = self._index.search(q, k, threads=1 if len(q) == 1 else 0)
        ids = np.atleast_2d(found.keys)  # one query comes back 1-D (a `Matches`)
        counts = getattr(found, "counts", None)
        n = np.full(len(ids), ids.shape[1]) if counts is None else np.atleast_1d(counts)
        if ids.shape[1] < k or (n < k).any():
            return None
        row_of = self.row_of
        rows = np.array([[row_of[int(i)] for i in r] for r in ids], np.int64)
        return rows, (1.0 - np.atleast_2d(found.distances)).astype(np.float32)

    @property
    def ef_search(self) -> int:
        return int(self._index.expansion_search)

    @ef_search.setter
    def ef_search(self, ef: int) -> None:  # recall against latency (bench/bank.py --ef)
        self._index.expansion_search = int(ef)

    def nbytes(self) -> int:
        return int(self._index.memory_usage) + 100 * len(self.row_of)  # + the id map
