"""Which approximate-nearest-neighbour library for the memory bank's descriptors (issue 14 s.3)?

    bash bench/make_peers_venv.sh    # the bench venv (the candidates are installed there too)
    flock /tmp/metaray-heavy.lock bench/.peers-venv/bin/python bench/bank_ann.py \
        [--sizes 100000,1000000]

Candidates: exact search (what `pipeline/bank/index.py` does: one float32 matrix-vector
product over the dense block + argpartition), faiss-cpu `IndexHNSWFlat` (inner product on
unit vectors = cosine) and usearch `Index` (HNSW, cosine, float32 and float16 storage).
Descriptors: unit vectors in `dim` dims around 4,096 random centres (tasks come in
families: languages, scripts), each spread along a shared `--intrinsic`-dim subspace plus
a little isotropic noise (descriptors of real tasks vary along few directions; isotropic
128-dim noise would make every neighbour equally far and no index could find "the" nearest);
queries are fresh draws from the same mixture. Per size and candidate, one JSON line: build
seconds and
inserts/s, single-query p50/p99 ms over `--queries` queries, recall@5 against exact search,
and resident bytes per entry (RSS growth while the index was built, over the entry count).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time

import numpy as np


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def mixture(n: int, seed: int, centres: np.ndarray, basis: np.ndarray, spread: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dim = centres.shape[1]
    out = np.empty((n, dim), np.float32)
    for a in range(0, n, 100_000):  # in blocks: the noise never needs n x dim float64
        b = min(n, a + 100_000)
        c = centres[rng.integers(0, len(centres), b - a)]
        z = rng.standard_normal((b - a, len(basis)), dtype=np.float32)
        iso = rng.standard_normal((b - a, dim), dtype=np.float32)
        out[a:b] = c + spread * (z @ basis) + 0.01 * iso
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def exact_topk(data: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    sims = data @ q
    top = np.argpartition(-sims, k)[:k]
    return top[np.argsort(-sims[top])]


def ground_truth(data: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((len(queries), k), np.int64)
    for a in range(0, len(queries), 64):
        sims = queries[a : a + 64] @ data.T
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, 1), axis=1)
        out[a : a + 64] = np.take_along_axis(top, order, 1)
    return out


def timed_queries(search, queries: np.ndarray) -> tuple[list[float], list[np.ndarray]]:
    times, found = [], []
    for q in queries:
        t0 = time.perf_counter()
        found.append(search(q))
        times.append((time.perf_counter() - t0) * 1e3)
    return times, found


def build(name: str, data: np.ndarray, m: int, ef_c: int, ef_s: int):
    """-> search(q) -> ids; the index object is returned to keep it alive."""
    dim = data.shape[1]
    if name == "exact":
        block = data.copy()
        return block, lambda q, k=5: exact_topk(block, q, k)
    if name == "faiss-hnsw":
        import faiss

        idx = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = ef_c
        idx.add(data)
        idx.hnsw.efSearch = ef_s
        return idx, lambda q, k=5: idx.search(q[None], k)[1][0]
    from usearch.index import Index

    dtype = "f16" if name == "usearch-f16" else "f32"
    idx = Index(ndim=dim, metric="cos", dtype=dtype, connectivity=m, expansion_add=ef_c)
    idx.expansion_search = ef_s
    idx.add(np.arange(len(data)), data, threads=1)
    return idx, lambda q, k=5: idx.search(q, k).keys


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--candidates", default="exact,faiss-hnsw,usearch-f32,usearch-f16")
    ap.add_argument("--m", type=int, default=16, help="HNSW links per node")
    ap.add_argument("--ef-construction", type=int, default=64)
    ap.add_argument("--ef-search", type=int, default=64)
    ap.add_argument("--spread", type=float, default=0.3, help="spread around each centre")
    ap.add_argument("--intrinsic", type=int, default=16, help="dims the spread lies in")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4096, args.dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = rng.standard_normal((args.intrinsic, args.dim)).astype(np.float32)
    basis /= np.sqrt(args.dim)
    queries = mixture(args.queries, 1, centres, basis, args.spread)
    for n in (int(s) for s in args.sizes.split(",")):
        data = mixture(n, 2, centres, basis, args.spread)
        truth = ground_truth(data, queries, 5)
        for name in args.candidates.split(","):
            gc.collect()
            before, t0 = rss(), time.perf_counter()
            keep, search = build(name, data, args.m, args.ef_construction, args.ef_search)
            secs = time.perf_counter() - t0
            grown = rss() - before
            times, found = timed_queries(search, queries)
            recall = np.mean(
                [len(set(f[:5]) & set(t)) / 5 for f, t in zip(found, truth, strict=True)]
            )
            print(
                json.dumps(
                    {
                        "candidate": name,
                        "entries": n,
                        "dim": args.dim,
                        "build_s": round(secs, 2),
                        "inserts_per_s": round(n / secs, 1),
                        "query_p50_ms": round(float(np.percentile(times, 50)), 4),
                        "query_p99_ms": round(float(np.percentile(times, 99)), 4),
                        "recall_at_5": round(float(recall), 4),
                        "ef_search": args.ef_search,
                        "m": args.m,
                        "rss_bytes_per_entry": round(grown / n, 1),
                        "load_avg_1m": round(os.getloadavg()[0], 2),
                    }
                ),
                flush=True,
            )
            del keep, search
        del data
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
