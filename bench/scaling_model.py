"""Projected meta-training throughput on 1-64 single-GPU nodes, from measured inputs and stated
assumptions (docs/SCALING.md explains each). Prints markdown tables; no measurement here.

    .venv/bin/python bench/scaling_model.py [--fixed-ms 60] [--tflops 5] [--gbps 25] [--alpha-us 25]

Model of one synchronous meta-step on N nodes, each with a per-GPU meta-batch of B tasks:
  compute  = F + B * flops_per_task / G        (F: per-iteration kernel-launch floor; tasks are
                                                batched into one bmm per layer, so F does not
                                                grow with B)
  allreduce= ring: 2(N-1)*alpha + 2(N-1)/N * S/BW    tree/hierarchical: 2*log2(N)*alpha + 2*S/BW
             (+ one latency-only all-reduce of the metrics, unless folded into the gradients)
  step     = compute + allreduce (no overlap: the outer update needs the reduced gradient)
  data     = episodes needed per second / episodes one actor makes per second -> actors needed
"""

from __future__ import annotations

import argparse
import math

FLOPS_PER_TASK = 14_311_489_536 / 8  # chargru, 2nd order, 3 inner steps (bench/inner_loop.py)
PARAMS = 103_907  # GRU lm h128, embed 32, vocab 259 (bench/allreduce.py)


def allreduce_ms(n: int, nbytes: float, gbps: float, alpha_us: float, tree: bool) -> float:
    if n == 1:
        return 0.0
    bw = gbps / 8 * 1e9  # bytes/s
    a = alpha_us * 1e-6
    if tree:
        t = 2 * math.log2(n) * a + 2 * nbytes / bw
        t += 2 * math.log2(n) * a  # metrics
    else:
        t = 2 * (n - 1) * a + 2 * (n - 1) / n * nbytes / bw
        t += 2 * (n - 1) * a  # metrics
    return t * 1e3


def step(n: int, b: int, args: argparse.Namespace, tree: bool) -> tuple[float, float, float]:
    compute = args.fixed_ms + b * FLOPS_PER_TASK / (args.tflops * 1e12) * 1e3
    comm = allreduce_ms(n, PARAMS * 4 * args.param_mult, args.gbps, args.alpha_us, tree)
    return compute, comm, compute + comm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fixed-ms", type=float, default=60.0, help="per-iteration launch floor F")
    ap.add_argument("--tflops", type=float, default=5.0, help="achieved fp32 TFLOP/s per GPU G")
    ap.add_argument("--gbps", type=float, default=25.0, help="node-to-node bandwidth, Gbit/s")
    ap.add_argument("--alpha-us", type=float, default=25.0, help="per-hop latency, microseconds")
    ap.add_argument("--param-mult", type=float, default=1.0, help="2 for Meta-SGD (lrs too)")
    ap.add_argument("--actor-eps", type=float, default=1400.0, help="episodes/s per actor")
    args = ap.parse_args()
    nodes = [1, 2, 4, 8, 16, 32, 64]
    print(
        f"F={args.fixed_ms} ms, G={args.tflops} TFLOP/s, {args.gbps} Gbit/s, "
        f"alpha={args.alpha_us} us, {PARAMS * 4 * args.param_mult / 1e6:.2f} MB gradient"
    )
    print("\nStrong scaling: global meta-batch 256 split over N GPUs (TorchOpt's setting)\n")
    print("| N | B/GPU | compute ms | ring ms | step ms | tasks/s | speed-up | eff. | tree ms |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    base = None
    for n in nodes:
        b = max(1, 256 // n)
        c, r, s = step(n, b, args, tree=False)
        _, t, _ = step(n, b, args, tree=True)
        tps = b * n / s * 1e3
        base = base or tps
        print(
            f"| {n} | {b} | {c:.1f} | {r:.2f} | {s:.1f} | {tps:,.0f} | {tps / base:.2f}x "
            f"| {tps / base / n:.0%} | {t:.2f} |"
        )
    print("\nWeak scaling: 64 tasks per GPU (global meta-batch 64N)\n")
    print("| N | step ms (ring) | tasks/s | eff. | episodes/s needed | actors needed |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    base = None
    for n in nodes:
        _, _, s = step(n, 64, args, tree=False)
        tps = 64 * n / s * 1e3
        base = base or tps
        print(
            f"| {n} | {s:.1f} | {tps:,.0f} | {tps / base / n:.0%} | {tps:,.0f} "
            f"| {math.ceil(tps / args.actor_eps)} |"
        )


if __name__ == "__main__":
    main()
