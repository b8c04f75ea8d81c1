"""Memory-bank figures: query latency, put throughput, memory per entry.

    .venv/bin/python bench/bank.py            # full run (~1-2 min on 2 cores)
    .venv/bin/python bench/bank.py --quick    # smaller sizes, seconds
    .venv/bin/python bench/bank.py --ray      # also put/query through the Ray actor
    .venv/bin/python bench/bank.py --scale 10000,100000,1000000   # JSON lines, HNSW vs exact
    .venv/bin/python bench/bank.py --wal-puts                     # JSON lines, puts/s with WAL
    .venv/bin/python bench/bank.py --wal-compare /tmp/before-tree  # same, that tree vs this one
    .venv/bin/python bench/bank.py --params-rss 2000,20000        # JSON lines, RSS per full entry
    .venv/bin/python bench/bank.py --params-compare /tmp/before-tree  # same, that tree vs this one

Query latency: one query (k=5, cosine) against N entries; the parameter width does not enter
the search (only the k returned rows are copied), so the 100k index holds small parameter rows
to fit in memory. Put throughput uses a realistic full meta-RNN parameter vector
(GRU hidden 128, embed 32, vocab 259: 104,835 floats = 410 KiB float32 per entry).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

# --wal-compare runs this same script against another tree's `pipeline` (e.g. main before a change)
# (an expression, not a name: ruff's E402 allows only sys.path calls above the imports)
sys.path.insert(
    0,
    os.environ.get("BANK_BENCH_TREE")
    or os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
)

from pipeline.bank.index import BankIndex
from pipeline.bank.service import BankService
from pipeline.config import BankConfig

_HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL_PARAMS = 104_835  # 259*32 + 3*(32*128 + 128*128 + 2*128) + 128*259 + 259


def _fill(idx: BankIndex, n: int, dim: int, p: int, rng: np.random.Generator) -> None:
    chunk = 10_000
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        idx.upsert(
            [f"t{s + i}" for i in range(m)],
            rng.standard_normal((m, dim), dtype=np.float32),
            rng.standard_normal((m, p), dtype=np.float32),
        )


def query_latency(sizes: list[int], dims: list[int], p: int, repeats: int) -> None:
    print(f"query latency (k=5, one query, {p} params/entry; ms)")
    print(f"{'entries':>8} {'dim':>4} {'p50':>7} {'p99':>7} {'batch64/q':>10}")
    rng = np.random.default_rng(0)
    for n in sizes:
        for dim in dims:
            idx = BankIndex(capacity=n)
            _fill(idx, n, dim, p, rng)
            qs = rng.standard_normal((repeats, dim), dtype=np.float32)
            ts = np.empty(repeats)
            for i in range(repeats):
                t = time.perf_counter()
                hits = idx.search(qs[i], k=5)
                idx.params_of(hits.slots[0])
                ts[i] = time.perf_counter() - t
            t = time.perf_counter()
            for i in range(0, repeats, 64):
                idx.search(qs[i : i + 64], k=5)
            per_q = (time.perf_counter() - t) / repeats
            p50, p99 = np.percentile(ts * 1e3, [50, 99])
            print(f"{n:>8} {dim:>4} {p50:>7.2f} {p99:>7.2f} {per_q * 1e3:>10.3f}")
            del idx


def put_throughput(n: int, batch: int, dim: int, p: int, ray_too: bool) -> None:
    rng = np.random.default_rng(1)
    desc = rng.standard_normal((batch, dim), dtype=np.float32)
    params = rng.standard_normal((batch, p), dtype=np.float32)
    print(
        f"put throughput (steady state at capacity {n}: each new key evicts; batches of "
        f"{batch}, dim {dim}, {p} params/entry)"
    )
    rows = []
    for dtype in ("float32", "float16"):
        for mode in ("memory", "wal", "wal+ray") if ray_too else ("memory", "wal"):
            with tempfile.TemporaryDirectory() as d:
                cfg = BankConfig(
                    capacity=n,
                    dtype=dtype,
                    snapshot_uri=None if mode == "memory" else d,
                    snapshot_every=10**6,
                    name=f"bench-{dtype}-{mode}-{os.getpid()}",
                )
                elapsed = _puts(cfg, n, batch, desc, params, ray_actor=mode == "wal+ray")
            rows.append((dtype, mode, n / elapsed))
            print(f"  {dtype:8} {mode:8} {n / elapsed:>9.0f} entries/s")
    # memory per entry at this width, from the index's own accounting
    for dtype in ("float32", "float16"):
        idx = BankIndex(capacity=n, dtype=dtype)
        for s in range(0, n, batch):
            idx.upsert([f"k{s + i}" for i in range(batch)], desc, params)
        floor = p * (4 if dtype == "float32" else 2) + dim * 4
        per = idx.nbytes() / len(idx)
        print(
            f"  memory/entry {dtype}: {per:,.0f} B (params+descriptor {floor:,} B, "
            f"+{per - floor:.0f} B)"
        )
        del idx


def _puts(cfg, n, batch, desc, params, *, ray_actor: bool) -> float:
    keys = lambda s: [f"k{s + i}" for i in range(batch)]  # noqa: E731
    if not ray_actor:
        bank = BankService(cfg)
        for s in range(0, n, batch):  # untimed: fill to capacity (first touch of the memory)
            bank.put({"keys": keys(s), "descriptor": desc, "params": params})
        t = time.perf_counter()  # timed: steady state, every new key evicts the LRU entry
        for s in range(n, 2 * n, batch):
            bank.put({"keys": keys(s), "descriptor": desc, "params": params})
        return time.perf_counter() - t
    import ray

    from pipeline.bank.actor import get_bank, put

    bank = get_bank(cfg)
    ray.get(
        [
            put(bank, {"keys": keys(s), "descriptor": desc, "params": params})
            for s in range(0, n, batch)
        ]
    )
    t = time.perf_counter()
    refs = [
        put(bank, {"keys": keys(s), "descriptor": desc, "params": params})
        for s in range(n, 2 * n, batch)
    ]
    ray.get(refs)
    elapsed = time.perf_counter() - t
    ray.kill(bank)
    return elapsed


def hook_overhead(steps: int, write_every: list[int]) -> None:
    """Meta-step time vs the cost of one bank write by the trainer's hook (real Ray bank).
    Measured separately on the same steps (base step, then the hook's write), so the ratio is
    not at the mercy of other processes' load between two runs; amortised per write_every."""

    import ray

    from pipeline import config
    from pipeline.bank.trainer_hook import BankHook
    from pipeline.data import episodes as ep
    from pipeline.data.sources.wordlang import top_words
    from pipeline.meta import outer
    from pipeline.models import build_model

    langs = ["en", "de", "fr", "es", "it", "ru", "pl", "nl"]
    rows = {}
    for lang in langs:
        w, f = top_words(lang, 1000)
        rows[lang] = {"text": np.array(w, dtype=object), "freq": f}
    cfg = config.load(
        None,
        ["outer.meta_batch=16", "bank.enabled=true", "bank.write_every=1", "bank.name=bench-hook"],
    )
    model = build_model(cfg.model, cfg.data)
    state = outer.init_state(model, cfg.inner, cfg.outer, seed=0)
    hook = BankHook(cfg.bank, model)
    base, write = [], []
    for step in range(steps):
        batch = ep.build_step(lambda k: rows[k], langs, cfg.data, seed=0, step=step, meta_batch=16)
        t = time.perf_counter()
        b = ep.to_torch(batch)
        new, _, adapted = outer.train_step(
            state, b, model=model, inner_cfg=cfg.inner, outer_cfg=cfg.outer, return_adapted=True
        )
        t1 = time.perf_counter()
        hook.after_step(step, state.params, b, adapted)
        state = new
        write.append(time.perf_counter() - t1)
        base.append(t1 - t)
    stats = hook.close()
    b, w = np.median(base), np.median(write)
    print(
        f"trainer hook (GRU 128, maml 1 inner step, meta-batch 16 on one worker, {steps} "
        f"steps): meta-step {b * 1e3:.0f} ms median, one bank write {w * 1e3:.0f} ms median "
        f"({100 * w / b:.0f}% of a step); writer {stats}"
    )
    for every in write_every:
        print(f"  bank.write_every={every:>3}: +{100 * w / b / every:.1f}% per step amortised")
    ray.kill(hook.writer.bank)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def scale(
    sizes: list[int], dim: int, queries: int, ann_min: int, efs: list[int] | None = None
) -> None:
    """One JSON line per size (and per HNSW ef in `efs`, on the same build): the real
    BankIndex (HNSW from `ann_min` entries) filled with clustered descriptors
    (bench/bank_ann.py's mixture) and one-float parameter rows, so `rss_bytes_per_entry` is
    what an entry costs BEYOND its parameters. The queries are timed back to back, as the
    bank actor serves them; recall against exact search is computed after, apart: an exact
    scan of 1M rows between two timed queries flushes the CPU caches the next one would use
    (the `interleaved` figures, kept to compare with the earlier runs, which did that)."""
    import json

    from bench.bank_ann import mixture

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4096, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    basis = rng.standard_normal((16, dim)).astype(np.float32) / np.sqrt(dim)
    qs = mixture(queries, 1, centres, basis, 0.3)
    for n in sizes:
        desc = mixture(n, 2, centres, basis, 0.3)
        before, t0 = _rss(), time.perf_counter()
        idx = BankIndex(capacity=n, ann_min_entries=ann_min)
        for a in range(0, n, 10_000):
            b = min(n, a + 10_000)
            idx.upsert([f"t{i}" for i in range(a, b)], desc[a:b], np.zeros((b - a, 1), np.float32))
        puts = n / (time.perf_counter() - t0)
        grown = _rss() - before
        exact = [set(idx.search(q, k=5, touch=False, exact=True).keys[0]) for q in qs]
        ann = idx._ann
        for ef in efs if (efs and ann is not None) else [None]:
            if ef is not None:
                ann.ef_search = ef
            row = {"entries": n, "dim": dim, "search": "hnsw" if ann is not None else "exact"}
            if ann is not None:
                row["ef"] = ann.ef_search
            times, found = _timed_queries(idx, qs)
            row.update(_latency(times), recall_at_5=_recall(found, exact))
            times, _ = _timed_queries(idx, qs, exact_between=True)
            interleaved = _latency(times)
            row.update({f"interleaved_{k}": v for k, v in interleaved.items()})
            row.update(
                rss_bytes_per_entry=round(grown / n, 1),
                puts_per_s=round(puts, 1),
                puts_note="in memory, batches of 10,000, one-float params (no WAL)",
                load_avg_1m=round(os.getloadavg()[0], 2),
            )
            print(json.dumps(row), flush=True)
        del idx, desc


def _timed_queries(idx, qs, exact_between: bool = False) -> tuple[list[float], list[set]]:
    """ms per query (search + the best hit's parameters), and each query's 5 keys."""
    times, found = [], []
    for q in qs:
        t = time.perf_counter()
        hits = idx.search(q, k=5, touch=False)
        idx.params_of(hits.slots[0])
        times.append((time.perf_counter() - t) * 1e3)
        found.append(set(hits.keys[0]))
        if exact_between:
            idx.search(q, k=5, touch=False, exact=True)
    return times, found


def _latency(times: list[float]) -> dict[str, float]:
    p50, p99 = np.percentile(times, [50, 99])
    return {"query_p50_ms": round(float(p50), 3), "query_p99_ms": round(float(p99), 3)}


def _recall(found: list[set], exact: list[set]) -> float:
    return round(float(np.mean([len(f & e) / 5 for f, e in zip(found, exact, strict=True)])), 4)


WAL_WORKLOADS = (  # (params per entry, entries per put batch, timed entries)
    (1_024, 1, 4_096),  # small entries, one per put: the per-commit cost dominates
    (FULL_PARAMS, 1, 256),  # 410 KiB entries: the disk's write bandwidth dominates
    (FULL_PARAMS, 16, 512),  # 16 full entries a put: the trainer hook's batch (meta-batch 16)
)


def wal_puts(group: int, only: int | None = None) -> None:
    """One JSON line per (workload, mode): steady-state puts/s (entries/s) with the WAL on, as
    `put` one batch per call (one commit each) and, where the tree has it, `put_many` of
    `group` batches per call (one commit per group)."""
    import json

    import pipeline

    modes = ["put"] + (["put_many"] if hasattr(BankService, "put_many") else [])
    default = BankConfig().dtype  # float32 before issue 14's float16 deltas, float16 after
    for p, per_put, n in WAL_WORKLOADS:
        if only is not None and p != only:
            continue
        rng = np.random.default_rng(2)
        desc = rng.standard_normal((per_put, 128), dtype=np.float32)
        base = rng.standard_normal(p, dtype=np.float32)  # the meta-init the entries come from
        params = base + 0.05 * rng.standard_normal((per_put, p), dtype=np.float32)
        for dtype in dict.fromkeys((default, "float32")):
            for mode in modes:
                if per_put > 1 and mode == "put_many" and group * per_put * p > 2**26:
                    continue  # groups of 64 x 16 full entries: 430 MB a call, not a trainer's
                with tempfile.TemporaryDirectory() as d:
                    cfg = BankConfig(capacity=n, snapshot_uri=d, snapshot_every=10**9, dtype=dtype)
                    bank = BankService(cfg)
                    elapsed = _wal_timed(bank, n, per_put, desc, params, mode, group, base)
                width = 2 if dtype == "float16" else 4
                row = {
                    "bench": "wal_puts",
                    "tree": os.path.dirname(os.path.dirname(pipeline.__file__)),
                    "dtype": dtype,
                    "mode": mode,
                    "group": group if mode == "put_many" else 1,
                    "entries_per_put": per_put,
                    "params": p,
                    "entry_bytes": p * width + 128 * 4,
                    "entries": n,
                    "puts_per_s": round(n / elapsed, 1),
                    "wal_mb_per_s": round(n * (p * width + 512) / elapsed / 2**20, 1),
                    "load_avg_1m": round(os.getloadavg()[0], 2),
                }
                print(json.dumps(row), flush=True)


def _wal_timed(bank, n: int, per_put: int, desc, params, mode: str, group: int, base) -> float:
    def batches(start: int) -> list[dict]:
        return [
            {
                "keys": [f"k{s + i}" for i in range(per_put)],
                "descriptor": desc,
                "params": params,
                "base": base,  # ignored by a tree from before the float16 deltas
            }
            for s in range(start, start + n, per_put)
        ]

    for b in batches(0):  # untimed: fill to capacity, so every timed key evicts one
        bank.put(b)
    timed = batches(n)
    t = time.perf_counter()
    if mode == "put":
        for b in timed:
            bank.put(b)
    else:
        for i in range(0, len(timed), group):
            bank.put_many(timed[i : i + group])
    return time.perf_counter() - t


def wal_compare(before: str, reps: int, group: int, only: int | None = None) -> None:
    """`wal_puts` of tree `before` and of this tree, alternating, `reps` times each, on the
    same disk (the system temp dir) in one run: the before/after figure of a WAL change."""
    import subprocess

    for _ in range(reps):
        for tree in (before, _HERE):
            env = dict(os.environ, BANK_BENCH_TREE=tree)
            cmd = [sys.executable, os.path.abspath(__file__), "--wal-puts", "--group", str(group)]
            cmd += [] if only is None else ["--wal-params", str(only)]
            subprocess.run(cmd, env=env, check=True)


def params_rss(sizes: list[int], cache_mb: float, per_put: int = 16) -> None:
    """One JSON line per size: a bank with a snapshot_uri (WAL on) filled with `n` REAL
    meta-RNN-sized entries (104,835 float32 params, descriptor 128) in puts of `per_put` (the
    trainer hook's batch), each size in a fresh bank: resident memory grown per entry, in all
    and beyond the parameter cache, the fill's puts/s, and single-query latency with the
    parameters of the top 3 (read from disk on a cache miss)."""
    import json

    import pipeline

    rng = np.random.default_rng(3)
    base = rng.standard_normal(FULL_PARAMS, dtype=np.float32)
    noise = 0.05 * rng.standard_normal((per_put, FULL_PARAMS), dtype=np.float32)
    for n in sizes:
        with tempfile.TemporaryDirectory() as d:
            cfg = BankConfig(capacity=n, snapshot_uri=d, snapshot_every=10**9)
            if "param_cache_mb" in BankConfig.model_fields:
                cfg = cfg.model_copy(update={"param_cache_mb": cache_mb})
            start = _rss()
            import torch  # noqa: F401  (the bank's float16 cast imports it: a fixed cost, apart)

            before = _rss()
            bank = BankService(cfg)
            t0 = time.perf_counter()
            for s in range(0, n, per_put):
                m = min(per_put, n - s)
                bank.put(
                    {
                        "keys": [f"t{s + i}" for i in range(m)],
                        "descriptor": rng.standard_normal((m, 128), dtype=np.float32),
                        "params": base + noise[:m],
                        "base": base,
                    }
                )
            puts = n / (time.perf_counter() - t0)
            grown = _rss() - before
            params = getattr(bank, "params", None)
            cache = _cache_bytes(bank)
            times = []
            for q in rng.standard_normal((200, 128), dtype=np.float32):
                t = time.perf_counter()
                bank.query(q, 3)
                times.append((time.perf_counter() - t) * 1e3)
            p50, p99 = np.percentile(times, [50, 99])
            row = {
                "bench": "params_rss",
                "tree": os.path.dirname(os.path.dirname(pipeline.__file__)),
                "entries": n,
                "dim": 128,
                "params": FULL_PARAMS,
                "dtype": cfg.dtype,
                "param_cache_mb": cache_mb if params is not None else None,
                "rss_bytes_per_entry_all": round(grown / n, 1),
                "cache_bytes": cache,
                "rss_bytes_per_entry": round((grown - cache) / n, 1),
                "index_bytes_per_entry": round(bank.index.nbytes() / n, 1),
                "torch_import_rss_mb": round((before - start) / 2**20, 1),
                "puts_per_s": round(puts, 1),
                "puts_note": f"WAL on, fsync before ack, {per_put} entries a put, filling",
                "query_p50_ms": round(float(p50), 3),
                "query_p99_ms": round(float(p99), 3),
                "query_note": "top 3 with their parameters (disk reads on cache misses)",
                "cache_hits": params.cache.hits if params is not None else None,
                "cache_misses": params.cache.misses if params is not None else None,
                "load_avg_1m": round(os.getloadavg()[0], 2),
            }
            print(json.dumps(row), flush=True)
            del bank


def _cache_bytes(bank) -> int:
    params = getattr(bank, "params", None)  # a tree from before has no parameter cache
    return params.cache.bytes if params is not None else 0


def params_compare(before: str, sizes: str, cache_mb: float, reps: int) -> None:
    """`--params-rss` of tree `before` (its sizes capped at what fits in RAM) and of this tree,
    alternating, one process per (tree, size) so each starts from the same RSS."""
    import subprocess

    for _ in range(reps):
        for tree in (before, _HERE):
            for n in sizes.split(","):
                if tree == before and int(n) > 4_000:
                    continue  # 410 KiB a resident entry: 20k entries would be 8 GB of heap
                env = dict(os.environ, BANK_BENCH_TREE=tree)
                cmd = [sys.executable, os.path.abspath(__file__), "--params-rss", n]
                cmd += ["--cache-mb", str(cache_mb)]
                subprocess.run(cmd, env=env, check=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--ray", action="store_true", help="also measure through the Ray actor")
    ap.add_argument("--hook", action="store_true", help="only: trainer step cost of the hook")
    ap.add_argument("--scale", default=None, help="only: JSON lines at these entry counts")
    ap.add_argument("--ann-min", type=int, default=50_000, help="with --scale: HNSW from here")
    ap.add_argument("--ef", default=None, help="with --scale: HNSW ef values, one build")
    ap.add_argument("--wal-puts", action="store_true", help="only: puts/s with the WAL")
    ap.add_argument("--wal-compare", default=None, help="only: --wal-puts of TREE vs this tree")
    ap.add_argument("--group", type=int, default=64, help="put_many batches per call")
    ap.add_argument("--wal-params", type=int, default=None, help="only the workloads this wide")
    ap.add_argument("--reps", type=int, default=2, help="with --wal-compare / --params-compare")
    ap.add_argument("--params-rss", default=None, help="only: RSS per full entry at these sizes")
    ap.add_argument("--params-compare", default=None, help="only: --params-rss, TREE vs this")
    ap.add_argument("--sizes", default="2000,20000", help="with --params-compare")
    ap.add_argument("--cache-mb", type=float, default=256, help="bank.param_cache_mb")
    args = ap.parse_args()
    if args.params_rss:
        params_rss([int(x) for x in args.params_rss.split(",")], args.cache_mb)
        return
    if args.params_compare:
        params_compare(args.params_compare, args.sizes, args.cache_mb, args.reps)
        return
    if args.wal_puts:
        wal_puts(args.group, args.wal_params)
        return
    if args.wal_compare:
        wal_compare(args.wal_compare, args.reps, args.group, args.wal_params)
        return
    if args.scale:
        efs = [int(x) for x in args.ef.split(",")] if args.ef else None
        scale([int(x) for x in args.scale.split(",")], 128, 500, args.ann_min, efs)
        return
    print(f"load: {os.getloadavg()}")
    if args.hook:
        import ray

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
        hook_overhead(6 if args.quick else 20, [1, 10, 20, 50])
        print(f"load: {os.getloadavg()}")
        return
    if args.ray:
        import ray

        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    if args.quick:
        query_latency([1_000, 10_000], [64, 128], 256, 200)
        put_throughput(1_024, 64, 128, FULL_PARAMS, args.ray)
    else:
        query_latency([1_000, 10_000, 100_000], [64, 128, 256], 1_024, 1_000)
        put_throughput(4_096, 64, 128, FULL_PARAMS, args.ray)
    print(f"load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
