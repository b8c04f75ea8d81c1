"""Projected meta-training throughput on 1-64 single-GPU nodes, from figures measured on one
H200 (`bench/gpu_check.sh`, 2026-12-04: the eager floor F and the per-task cost G), on the
2-core CPU machine (op and FLOP counts, episode supply, bank) and stated assumptions for the
network and CUDA graphs (docs/SCALING.md explains each). Prints markdown tables; the multi-GPU
rows are a projection: only one GPU was ever measured.

    .venv/bin/python bench/scaling_model.py                    # eager floor and CUDA-graph floor
    .venv/bin/python bench/scaling_model.py --launch-us 8.1 --tflops 14.3 --gbps 25 --alpha-us 25

Model of one synchronous meta-step on N nodes, each with a per-GPU meta-batch of B tasks:
  compute  = F + B * flops_per_task / G   F: per-iteration floor = aten ops per meta-iteration x
                                          launch cost (eager), or --graph-ms (CUDA graphs /
                                          compiled); metaray batches tasks into one bmm per
                                          layer, so F does not grow with B
  allreduce= ring: 2(N-1)*alpha + 2(N-1)/N * S/BW   tree: 2*log2(N)*alpha + 2*S/BW
             (+ one latency-only all-reduce of the metrics, which are not folded in)
  step     = compute + allreduce (no overlap: the outer update needs the reduced gradient)
  data     = episodes/s needed / episodes/s one actor makes -> actors needed
  bank     = entries/s the trainers write (B x N every --bank-every steps) / WAL entries/s
  per-task loop (TorchOpt's published runtime): each task pays the floor on its own,
             t = ceil(M/N) * (r*F + flops_per_task / G); r = --loop-floor-ratio
"""

from __future__ import annotations

import argparse
import math

# Measured (bench/RESULTS.md, "Issue 14 / issue 10 item 5"; load-independent counts)
FLOPS_PER_TASK = 14.47e9 / 8  # chargru, 2nd order, 3 inner steps, hand HVP: FlopCounterMode
OPS_PER_ITER = 11_034  # aten ops per metaray chargru meta-iteration (bench/loop_ops.py), any B
LOOP_R_CPU = 1.311  # per-task loop over nn.GRU: its ops per task / OPS_PER_ITER (loop_ops.py)
# Measured on one H200, chargru fp32 (bench/results/gpu_check-h200.jsonl): metaray 90.6 ms per
# meta-step at B=8 and 122.1 ms at B=256 -> G = 1.81 GFLOP / 0.127 ms = 14.3 TFLOP/s and
# F = 89.4 ms = 8.1 us per aten op; the per-task torch.func loop took 269 ms per task at B=8,
# r = 269 / 90.6 = 2.97 (r on CUDA, where a loop's small ops cost a launch each).
GPU_LAUNCH_US = 8.1
GPU_TFLOPS = 14.3
LOOP_R_GPU = 2.97
PARAMS = 103_907  # GRU lm h128, embed 32, vocab 259 (bench/allreduce.py)
CPU_TASKS_S = 22.02  # metaray chargru, 1 CPU thread (bench/vs_peers.py, median of 3, quiet)
ACTOR_EPS = 1422.0  # wordlang episodes/s from one episode actor (bench/episode_pool.py)
BANK_WAL_EPS = 538.0  # float32 410 KiB entries/s with the WAL, batches of 64 (bench/bank.py)
TORCHOPT_8GPU = 5.2  # TorchOpt (Ren et al., JMLR 2023): "5.2x training time speedup, 8-GPU server"
NODES = [1, 2, 4, 8, 16, 32, 64]


def allreduce_ms(n: int, nbytes: float, gbps: float, alpha_us: float, tree: bool) -> float:
    if n == 1:
        return 0.0
    bw = gbps / 8 * 1e9  # bytes/s
    a = alpha_us * 1e-6
    hops = 2 * math.log2(n) if tree else 2 * (n - 1)
    t = hops * a + (2 if tree else 2 * (n - 1) / n) * nbytes / bw
    t += hops * a  # metrics: a second, latency-only all-reduce
    return t * 1e3


def task_ms(args: argparse.Namespace) -> float:
    return FLOPS_PER_TASK / (args.tflops * 1e12) * 1e3


def step(n: int, b: int, floor: float, args: argparse.Namespace, tree: bool = False):
    compute = floor + b * task_ms(args)
    comm = allreduce_ms(n, PARAMS * 4 * args.param_mult, args.gbps, args.alpha_us, tree)
    return compute, comm, compute + comm


def bottleneck(n: int, b: int, floor: float, args: argparse.Namespace) -> str:
    """The largest share of the step, then the first supply that runs out at this scale."""
    c, r, s = step(n, b, floor, args)
    tps = b * n / s * 1e3
    parts = {"floor F": floor, "task FLOPs": b * task_ms(args), "all-reduce": r}
    top = max(parts, key=parts.get)
    out = f"{top} {parts[top] / s:.0%}"
    actors = math.ceil(tps / ACTOR_EPS)
    if actors > args.head_cpus + args.spare_cpus * (n - 1) and actors > 1:
        out += f"; episode actors {actors} > CPUs for them"
    bank = b * n / (args.bank_every * s / 1e3)
    if bank > BANK_WAL_EPS:
        out += f"; bank WAL {bank:,.0f} > {BANK_WAL_EPS:.0f} entries/s"
    return out


def strong(floor: float, args: argparse.Namespace, total: int) -> None:
    print(f"\nStrong scaling: global meta-batch {total} split over N GPUs, F = {floor:.1f} ms\n")
    print("| N | B/GPU | compute ms | ring ms | step ms | tasks/s | speed-up | eff. | tree ms "
          "| largest share |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    base = None
    for n in NODES:
        b = max(1, total // n)
        c, r, s = step(n, b, floor, args)
        _, t, _ = step(n, b, floor, args, tree=True)
        tps = b * n / s * 1e3
        base = base or tps
        parts = {"F": floor, "FLOPs": b * task_ms(args), "all-reduce": r}
        top = max(parts, key=parts.get)
        print(
            f"| {n} | {b} | {c:.1f} | {r:.2f} | {s:.1f} | {tps:,.0f} | {tps / base:.2f}x "
            f"| {tps / base / n:.0%} | {t:.2f} | {top} {parts[top] / s:.0%} |"
        )


def weak(floor: float, args: argparse.Namespace, b: int) -> None:
    print(f"\nWeak scaling: {b} tasks per GPU (global meta-batch {b}N), F = {floor:.1f} ms\n")
    print("| N | step ms (ring) | tasks/s | speed-up | eff. | actors needed | bank entries/s "
          "| first bottleneck |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    base = None
    for n in NODES:
        _, _, s = step(n, b, floor, args)
        tps = b * n / s * 1e3
        base = base or tps
        bank = b * n / (args.bank_every * s / 1e3)
        print(
            f"| {n} | {s:.1f} | {tps:,.0f} | {tps / base:.2f}x | {tps / base / n:.0%} "
            f"| {math.ceil(tps / ACTOR_EPS)} | {bank:,.0f} | {bottleneck(n, b, floor, args)} |"
        )


def vs_torchopt(floor: float, args: argparse.Namespace) -> None:
    """TorchOpt's distributed example: a fixed meta-batch (32) split over the GPUs of one
    server, a per-task loop on each GPU. Modelled here with the same G and network; its
    per-task floor is r x metaray's per-iteration floor."""
    m = args.torchopt_batch
    print(
        f"\nOn paper vs TorchOpt's 5.2x on 8 GPUs: meta-batch {m} (its example's), F = {floor:.1f}"
        f" ms, a per-task loop paying r x F per task\n"
    )
    print("| r | per-task loop, 1 GPU tasks/s | 8 GPUs (model) | 8 GPUs at TorchOpt's 5.2x "
          "| metaray 1 GPU | metaray 8 GPUs | metaray 8 GPUs / TorchOpt's 5.2x |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in args.loop_floor_ratio:
        per_task = r * floor + task_ms(args)
        loop1 = 1e3 / per_task
        comm = allreduce_ms(8, PARAMS * 4 * args.param_mult, args.gbps, args.alpha_us, False)
        loop8 = m / (math.ceil(m / 8) * per_task + comm) * 1e3
        published = TORCHOPT_8GPU * loop1
        _, _, s1 = step(1, m, floor, args)
        _, _, s8 = step(8, m // 8, floor, args)
        mr1, mr8 = m / s1 * 1e3, m / s8 * 1e3
        print(
            f"| {r:g} | {loop1:,.1f} | {loop8:,.1f} ({loop8 / loop1:.1f}x) | {published:,.1f} "
            f"| {mr1:,.0f} | {mr8:,.0f} ({mr8 / mr1:.2f}x) | {mr8 / published:.1f}x |"
        )
    _, _, s8 = step(8, m // 8, floor, args)
    even = (TORCHOPT_8GPU * s8 / m - task_ms(args)) / floor  # 5.2 x loop1 = metaray 8 GPUs
    print(f"\nBreak-even: metaray on 8 GPUs beats 5.2x a per-task loop while r > {even:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--launch-us", type=float, default=GPU_LAUNCH_US, help="eager cost per aten op, us"
    )
    ap.add_argument("--graph-ms", type=float, default=10.0, help="floor with CUDA graphs, ms")
    ap.add_argument(
        "--tflops", type=float, default=GPU_TFLOPS, help="achieved fp32 TFLOP/s per GPU G"
    )
    ap.add_argument("--gbps", type=float, default=25.0, help="node-to-node bandwidth, Gbit/s")
    ap.add_argument("--alpha-us", type=float, default=25.0, help="per-hop latency, microseconds")
    ap.add_argument("--param-mult", type=float, default=1.0, help="2 for Meta-SGD (lrs too)")
    ap.add_argument("--head-cpus", type=int, default=4, help="CPUs for episode actors, head")
    ap.add_argument("--spare-cpus", type=int, default=5, help="... on each GPU node (7 - 2)")
    ap.add_argument("--bank-every", type=int, default=20, help="bank.write_every (steps)")
    ap.add_argument("--torchopt-batch", type=int, default=32)
    ap.add_argument(
        "--loop-floor-ratio", type=float, nargs="+", default=[LOOP_R_GPU, LOOP_R_CPU, 0.25]
    )
    args = ap.parse_args()
    eager = OPS_PER_ITER * args.launch_us / 1e3
    print(
        f"Inputs: {FLOPS_PER_TASK / 1e9:.2f} GFLOP/task, {OPS_PER_ITER:,} aten ops/iteration, "
        f"G={args.tflops} TFLOP/s ({task_ms(args):.3f} ms/task), eager F={eager:.1f} ms "
        f"({args.launch_us} us/op), graph F={args.graph_ms} ms, {args.gbps} Gbit/s, "
        f"alpha={args.alpha_us} us, {PARAMS * 4 * args.param_mult / 1e6:.2f} MB gradient; "
        f"1 CPU thread today: {CPU_TASKS_S} tasks/s"
    )
    for floor in (eager, args.graph_ms):
        strong(floor, args, 256)
        weak(floor, args, 64)
        vs_torchopt(floor, args)


if __name__ == "__main__":
    main()
