"""Meta-training throughput of the core on the two standard workloads.

    .venv/bin/python bench/inner_loop.py --workload sine --json
    .venv/bin/python bench/inner_loop.py --workload chargru --json [--first-order]
    .venv/bin/python bench/inner_loop.py --workload chargru --versions metaray,autograd --reps 3

sine:    MLP 1-40-40-1, K=10 support + 10 query, meta-batch 25, 1 inner SGD step (lr 0.01),
         second order, Adam 1e-3; 20 warm-up + 200 timed meta-iterations.
chargru: GRU LM, vocab 64, embed 32, hidden 128, 1 layer; 16 support + 16 query sequences of
         length 32 per task from a task-specific Markov chain; meta-batch 8; 3 inner steps
         (lr 0.1), second order, Adam 1e-3; 3 warm-up + 30 timed.
A meta-iteration is one full `outer.train_step` (inner loop, meta-gradient, Adam update).
Episodes are generated before timing (a pool of distinct batches, cycled), so the figure is
the meta-learning maths, not data generation. FLOPs per meta-iteration are counted with
torch's FlopCounterMode (matmul-family ops, forward and all backward passes) on one iteration.
The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.torchfunc_baselines import vmap_step
from pipeline.config import InnerConfig, OuterConfig
from pipeline.data.episodes import EpisodeBatch, Split
from pipeline.meta import outer
from pipeline.models.meta_rnn import MetaRNN
from pipeline.models.mlp import MLP

PEAK_GFLOPS = 210.0  # this CPU's float32 matmul peak on 2 threads (issue 3)
POOL = 10


def sine_batches(seed: int = 0, t: int = 25, k: int = 10) -> list[EpisodeBatch]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(POOL):
        amp = torch.rand(t, 1, 1, generator=g) * 4.9 + 0.1
        ph = torch.rand(t, 1, 1, generator=g) * torch.pi
        xs = torch.rand(t, k, 1, generator=g) * 10 - 5
        xq = torch.rand(t, k, 1, generator=g) * 10 - 5
        ones = torch.ones(t, k)
        out.append(
            EpisodeBatch(
                Split(xs, amp * torch.sin(xs - ph), ones), Split(xq, amp * torch.sin(xq - ph), ones)
            )
        )
    return out


def markov_batches(
    seed: int = 0, t: int = 8, k: int = 16, length: int = 32, vocab: int = 64
) -> list[EpisodeBatch]:
    """Each task: its own sparse random transition matrix; sequences sampled from it."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(POOL):
        parts = []
        for _split in range(2):
            xs = np.zeros((t, k, length + 1), np.int64)
            for i in range(t):
                trans = rng.dirichlet(np.full(vocab, 0.1), size=vocab)
                cum = trans.cumsum(1)
                state = rng.integers(0, vocab, k)
                xs[i, :, 0] = state
                for s in range(1, length + 1):
                    u = rng.random(k)
                    state = np.minimum((cum[state] < u[:, None]).sum(1), vocab - 1)
                    xs[i, :, s] = state
            x = torch.from_numpy(xs[..., :-1].copy())
            y = torch.from_numpy(xs[..., 1:].copy())
            parts.append(Split(x, y, torch.ones(t, k, length)))
        out.append(EpisodeBatch(*parts))
    return out


def setup(workload: str, first_order: bool, hand_grad: bool = True):
    alg = "fomaml" if first_order else "maml"
    if workload == "sine":
        torch.manual_seed(0)
        model = MLP(1, 40, 2, 1)
        ic = InnerConfig(algorithm=alg, steps=1, lr=0.01)
        oc = OuterConfig(optimizer="adam", lr=1e-3, meta_batch=25)
        return model, ic, oc, sine_batches(), (20, 200)
    torch.manual_seed(0)
    model = MetaRNN(
        cell="gru", vocab=64, embed=32, hidden=128, layers=1, task="lm", hand_grad=hand_grad
    )
    ic = InnerConfig(algorithm=alg, steps=3, lr=0.1)
    oc = OuterConfig(optimizer="adam", lr=1e-3, meta_batch=8)
    return model, ic, oc, markov_batches(), (3, 30)


VERSIONS = ("metaray", "bptt", "autograd", "vmap")


def make_step(version: str, workload: str, first_order: bool):
    """-> (step(state, i) -> state, initial state, batches, (warm, timed), tasks per step).
    metaray: as shipped (GRU: hand-written BPTT and HVP, the no-autograd sweep); bptt: the
    hand-written BPTT in the inner loop, second order by autograd through it (the version
    before the HVP); autograd: no hand-written GRU code at all (`MetaRNN(hand_grad=False)`);
    vmap: the plain torch.func version."""
    if version in ("autograd", "bptt") and workload != "chargru":
        raise SystemExit("version autograd is the GRU switch: chargru only")
    if version == "vmap" and first_order:
        raise SystemExit("version vmap is second order only")
    model, ic, oc, batches, counts = setup(workload, first_order, hand_grad=version != "autograd")
    state = outer.init_state(model, ic, oc, seed=0)
    if version == "vmap":
        base = vmap_step(model, ic.steps, ic.lr, oc.lr)

        def step(state, i):
            return base(state, batches[i % POOL])
    elif version == "bptt":

        def step(state, i):
            g, _ = outer.meta_gradients(
                state,
                batches[i % POOL],
                model=model,
                inner_cfg=ic,
                pre_metrics=False,
                manual=False,
            )
            return outer.apply_gradients(state, g, oc)
    else:

        def step(state, i):
            return outer.train_step(
                state, batches[i % POOL], model=model, inner_cfg=ic, outer_cfg=oc, pre_metrics=False
            )[0]

    return step, state, counts, batches[0].support.x.shape[0]


def timed_run(step, state, timed: int) -> tuple[float, object]:
    start = time.perf_counter()
    for i in range(timed):
        state = step(state, i)
    return time.perf_counter() - start, state


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", choices=["sine", "chargru"], required=True)
    ap.add_argument("--first-order", action="store_true")
    ap.add_argument("--json", action="store_true", help="JSON lines only (always printed)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--iters", type=int, default=None, help="override the timed iterations")
    ap.add_argument(
        "--baseline",
        choices=["vmap"],
        default=None,
        help="time the plain torch.func vmap version instead (same as --versions vmap)",
    )
    ap.add_argument(
        "--versions",
        default=None,
        help=f"comma list of {','.join(VERSIONS)}: run them interleaved in one process",
    )
    ap.add_argument("--reps", type=int, default=1, help="interleaved repetitions per version")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    versions = (args.versions or args.baseline or "metaray").split(",")
    for v in versions:
        if v not in VERSIONS:
            ap.error(f"--versions {v!r}: use {', '.join(VERSIONS)}")
    runs = {}
    for v in versions:
        step, state, (warm, timed), t_per = make_step(v, args.workload, args.first_order)
        for i in range(warm):
            state = step(state, i)
        with FlopCounterMode(display=False) as counter:
            step(state, 0)
        runs[v] = [step, state, counter.get_total_flops(), t_per, []]
    timed = args.iters or timed
    for rep in range(args.reps):
        for v in versions:  # interleaved: every version sees the same load drift
            step, state, flops, t_per, rates = runs[v]
            secs, runs[v][1] = timed_run(step, state, timed)
            its = timed / secs
            rates.append(its * t_per)
            print(json.dumps(result_line(args, v, rep, its, t_per, flops, timed)), flush=True)
    if len(versions) > 1 or args.reps > 1:
        med = {v: float(np.median(runs[v][4])) for v in versions}
        summary = {"summary": True, "workload": args.workload, "threads": torch.get_num_threads()}
        summary["median_tasks_per_s"] = {v: round(m, 2) for v, m in med.items()}
        summary["ratio_to_" + versions[-1]] = {
            v: round(m / med[versions[-1]], 3) for v, m in med.items()
        }
        print(json.dumps(summary))
    return 0


def result_line(args, version, rep, its, t_per, flops, timed) -> dict:
    return {
        "workload": args.workload,
        "order": "first" if args.first_order else "second",
        "version": version,
        "rep": rep,
        "tasks_per_s": round(its * t_per, 2),
        "meta_iters_per_s": round(its, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "flops_per_meta_iter": flops,
        "gflops_per_s": round(flops * its / 1e9, 2),
        "fraction_of_peak": round(flops * its / 1e9 / PEAK_GFLOPS, 4),
        "threads": torch.get_num_threads(),
        "timed_iters": timed,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "torch": torch.__version__,
    }


if __name__ == "__main__":
    raise SystemExit(main())
