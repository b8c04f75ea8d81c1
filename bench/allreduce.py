"""All-reduce cost of metaray's parameter sizes: gloo on loopback, 2 processes, torch.distributed.

    .venv/bin/python bench/allreduce.py [--world 2] [--json]

For each model (the sizes metaray trains: the sinusoid MLP, the quickstart GRU, bigger GRUs,
and Meta-SGD, which all-reduces a learning-rate tensor per parameter as well) it times one
mean all-reduce of the whole gradient dict two ways: one call per tensor (what a naive loop
over the dict does) and one call on a flattened buffer (what DDP-style bucketing does).
Prints a table, then one JSON line. Feeds docs/SCALING.md; no assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

# (label, model kind, hidden, layers, episode, meta-sgd?)
MODELS = [
    ("sine MLP 1-40-40-1", "mlp", 40, 2, "regression", False),
    ("GRU lm h128 (quickstart)", "gru", 128, 1, "lm", False),
    ("GRU lm h128 Meta-SGD", "gru", 128, 1, "lm", True),
    ("GRU lm h256 x2", "gru", 256, 2, "lm", False),
    ("GRU lm h512 x2", "gru", 512, 2, "lm", False),
    ("LSTM lm h1024 x2", "lstm", 1024, 2, "lm", False),
]


def _shapes(kind: str, hidden: int, layers: int, episode: str, metasgd: bool) -> list[list[int]]:
    from pipeline.config import DataConfig, ModelConfig
    from pipeline.models import build_model

    model = build_model(
        ModelConfig(kind=kind, hidden=hidden, layers=layers), DataConfig(episode=episode)
    )
    shapes = [list(p.shape) for p in model.parameters()]
    return shapes * 2 if metasgd else shapes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _time(fn, iters: int) -> list[float]:
    out = []
    for _ in range(iters):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _worker(rank: int, world: int, port: int, plan: list, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = []
    for label, shapes in plan:
        grads = [torch.randn(s) for s in shapes]
        numel = sum(g.numel() for g in grads)
        iters = max(10, min(200, int(3e7 / max(numel, 1))))

        def per_tensor(grads=grads):
            for g in grads:
                dist.all_reduce(g)
                g.div_(world)

        def flat(grads=grads):
            buf = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(buf)
            buf.div_(world)
            torch.split(buf, [g.numel() for g in grads])

        for fn in (per_tensor, flat):
            _time(fn, 3)  # warm-up
        t_per = _time(per_tensor, iters)
        t_flat = _time(flat, iters)
        results.append(
            {
                "model": label,
                "params": numel,
                "tensors": len(grads),
                "mbytes": numel * 4 / 1e6,
                "per_tensor_ms": statistics.median(t_per) * 1e3,
                "flat_ms": statistics.median(t_flat) * 1e3,
                "flat_p90_ms": sorted(t_flat)[int(0.9 * len(t_flat))] * 1e3,
                "iters": iters,
            }
        )
    if rank == 0:
        queue.put(results)
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print only the JSON line")
    args = ap.parse_args()
    plan = [(m[0], _shapes(*m[1:])) for m in MODELS]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [
        ctx.Process(target=_worker, args=(r, args.world, port, plan, queue))
        for r in range(args.world)
    ]
    for p in procs:
        p.start()
    results = queue.get(timeout=600)
    for p in procs:
        p.join()
    load = os.getloadavg()
    if not args.json:
        print(
            f"gloo all-reduce (mean), {args.world} processes on 127.0.0.1, 1 thread each; "
            f"load average {load[0]:.2f}"
        )
        print(
            f"{'model':<26}{'params':>11}{'MB':>8}{'tensors':>8}{'per-tensor ms':>15}"
            f"{'flat ms':>10}{'flat GB/s*':>11}"
        )
        for r in results:
            # Ring all-reduce moves 2(W-1)/W of the buffer per rank: "bus bandwidth".
            bus = 2 * (args.world - 1) / args.world * r["mbytes"] / 1e3 / (r["flat_ms"] / 1e3)
            r["bus_gbps"] = bus
            print(
                f"{r['model']:<26}{r['params']:>11,}{r['mbytes']:>8.2f}{r['tensors']:>8}"
                f"{r['per_tensor_ms']:>15.3f}{r['flat_ms']:>10.3f}{bus:>11.2f}"
            )
        print("* bus bandwidth = 2(W-1)/W x bytes / time (the NCCL convention)")
    print(json.dumps({"world": args.world, "loadavg_1m": load[0], "results": results}))


if __name__ == "__main__":
    main()
