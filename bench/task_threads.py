"""A lever for issue 14 s.1, measured, not built: the chargru meta-gradient with the meta-batch
split over Python threads (each half on one torch thread) instead of torch's intra-op threads.

    flock /tmp/metaray-heavy.lock .venv/bin/python bench/task_threads.py [--iters 8]

Prints tasks/s of `outer.meta_gradients` (vs_peers' chargru workload: byte GRU LM, hidden 128,
16 + 16 sequences of 32, meta-batch 8, 3 inner steps, second order) serially at 1 and 2 torch
threads, and with the two halves of the batch on two Python threads (torch releases the GIL
inside its ops), at 1 and at 2 torch threads; and the largest difference to the serial
gradients (the halves are summed in a fixed order, so the split is deterministic).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import vs_peers
from bench.torchfunc_baselines import plain_cfgs
from pipeline.data.episodes import EpisodeBatch
from pipeline.meta import outer
from pipeline.meta.gradients import split_part


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iters", type=int, default=8)
    args = ap.parse_args()
    w = vs_peers.WORK["chargru"]
    model, _, _ = vs_peers.build("chargru", torch.float32)
    inner, outer_cfg = plain_cfgs("maml", w["steps"], w["lr"])
    state = outer.init_state(model, inner, outer_cfg)
    batch = vs_peers.batch("chargru", torch.float32)
    t = w["t"]

    def grads(b: EpisodeBatch):
        return outer.meta_gradients(state, b, model=model, inner_cfg=inner, pre_metrics=False)[0]

    halves = [
        EpisodeBatch(split_part(batch.support, sl), split_part(batch.query, sl))
        for sl in (slice(0, t // 2), slice(t // 2, t))
    ]
    pool = ThreadPoolExecutor(2)

    def split(_: EpisodeBatch):
        a, b = pool.map(grads, halves)
        return {k: (a[k] + b[k]) / 2 for k in a}

    def built(b: EpisodeBatch):  # the shipped path: outer.task_threads=2
        return outer.meta_gradients(
            state, b, model=model, inner_cfg=inner, pre_metrics=False, threads=2
        )[0]

    def rate(fn) -> float:
        fn(batch)
        start = time.perf_counter()
        for _ in range(args.iters):
            fn(batch)
        return args.iters * t / (time.perf_counter() - start)

    ref, two = grads(batch), split(batch)
    print(f"max |serial - split| = {max(float((ref[k] - two[k]).abs().max()) for k in ref):.2e}")
    forms = [(1, grads, "serial"), (2, grads, "serial"), (1, split, "split"), (2, split, "split")]
    forms += [(1, built, "built"), (2, built, "built")]
    for threads, fn, name in forms:
        torch.set_num_threads(threads)
        print(f"{name:6s} {threads} torch thread(s): {rate(fn):6.1f} tasks/s")


if __name__ == "__main__":
    main()
