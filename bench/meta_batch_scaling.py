"""ms per metaray chargru meta-step (bench/vs_peers.py's workload and contender, second order,
1 torch thread, the heap kept for reuse as a worker does) at several meta-batch sizes: a line
through them splits the step into a fixed part (Python, op dispatch, per-op set-up) and a
per-task part. RESULTS.md, "how much of the chargru meta-step is a fixed per-op cost".

    flock /tmp/metaray-heavy.lock .venv/bin/python bench/meta_batch_scaling.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_peers as vp

from pipeline.runtime.heap import reuse_freed_memory


def ms_per_step(tasks: int, warmup: int = 2) -> float:
    vp.WORK["chargru"]["t"] = tasks
    meta_grad, update = vp.contender("metaray", "chargru", torch.float32)
    batch = vp.batch("chargru", torch.float32)
    for _ in range(warmup):
        update(meta_grad(batch))
    n = max(3, 24 // tasks)
    t0 = time.perf_counter()
    for _ in range(n):
        update(meta_grad(batch))
    return (time.perf_counter() - t0) / n * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1,2,4,8,16", help="meta-batch sizes")
    ap.add_argument("--reps", type=int, default=3, help="passes over the sizes (median kept)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    reuse_freed_memory(256)
    sizes = [int(s) for s in args.sizes.split(",")]
    times: dict[int, list[float]] = {t: [] for t in sizes}
    for _ in range(args.reps):  # interleaved: a slow moment hits every size alike
        for t in sizes:
            times[t].append(ms_per_step(t))
    med = {t: statistics.median(v) for t, v in times.items()}
    for t, ms in med.items():
        print(
            json.dumps(
                {"meta_batch": t, "ms_per_step": round(ms, 1), "ms_per_task": round(ms / t, 1)}
            )
        )
    if len(sizes) > 1:
        slope, fixed = statistics.linear_regression(sizes, [med[t] for t in sizes])
        print(json.dumps({"fixed_ms": round(fixed, 1), "ms_per_task": round(slope, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
