"""metaray against its peers on second-order MAML, side by side in one process tree.

    bash bench/make_peers_venv.sh                   # once: higher + torchopt, apart from .venv
    flock /tmp/metaray-heavy.lock bench/.peers-venv/bin/python bench/vs_peers.py [--reps 3]

Workloads (the same sizes, K, inner steps, second order, Adam 1e-3 for every contender):
- sine: MLP 1-40-40-1 (ReLU), K=10 support + 10 query, meta-batch 25, 1 inner step lr 0.01;
- chargru: byte GRU LM (vocab 64, embed 32, hidden 128), 16 + 16 sequences of 32 per task,
  meta-batch 8, 3 inner steps lr 0.1.
Contenders: metaray (`outer.train_step`); `higher` (innerloop_ctx, per-task loop, nn modules
incl. `nn.GRU`); `torchopt` (MetaSGD + extract/recover_state_dict, per task); a plain
per-task `torch.func` loop (grad-of-grad through `functional_call` of the nn model).
Each contender lives in its own worker process (so `peak_rss_mb` is its own), built once;
the parent runs them interleaved (rep -> threads -> contender), one at a time, and prints
one JSON line per run, then the median ratio of metaray to the best peer per workload and
thread count. Before timing, every contender's meta-gradient on one batch is compared with
metaray's in float64 (same init, same data): `grad_rel_err`. The machine's single-thread
float32 matmul rate is measured in the same run (start and end); each run's `share_of_matmul`
is its matmul FLOPs/s (torch's FlopCounterMode) over that rate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.torchfunc_baselines import one_task_loss, plain_cfgs
from pipeline.data.episodes import EpisodeBatch, Split
from pipeline.meta import outer
from pipeline.meta.losses import task_loss
from pipeline.models.meta_rnn import MetaRNN
from pipeline.models.mlp import MLP

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ("metaray", "higher", "torchopt", "torch.func loop")
WORK = {
    "sine": dict(t=25, steps=1, lr=0.01, iters=40),
    "chargru": dict(t=8, steps=3, lr=0.1, iters=4, vocab=64, embed=32, hidden=128, k=16, length=32),
}


class PeerMLP(nn.Module):
    """The sinusoid MLP as the peers write it (nn.Linear + ReLU)."""

    kind = "regression"

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.ModuleList([nn.Linear(1, 40), nn.Linear(40, 40)])
        self.head = nn.Linear(40, 1)

    def forward(self, x, mask=None):
        for lin in self.body:
            x = torch.relu(lin(x))
        return self.head(x)


class PeerLM(nn.Module):
    """The byte GRU LM as the peers write it (nn.Embedding + nn.GRU + nn.Linear)."""

    kind = "lm"

    def __init__(self, vocab: int, embed: int, hidden: int) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, embed)
        self.gru = nn.GRU(embed, hidden, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x, mask=None):
        return self.head(self.gru(self.embed(x))[0])


GRU_NAMES = {  # metaray name -> nn.GRU name (same gate order r, z, n)
    "rnn.0.w_ih": "gru.weight_ih_l0",
    "rnn.0.w_hh": "gru.weight_hh_l0",
    "rnn.0.b_ih": "gru.bias_ih_l0",
    "rnn.0.b_hh": "gru.bias_hh_l0",
}


def build(workload: str, dtype: torch.dtype):
    """-> (metaray model, peer nn model with the same initial values, name map ours->peer)."""
    w = WORK[workload]
    torch.manual_seed(0)
    if workload == "sine":
        ours: nn.Module = MLP(1, 40, 2, 1)
        peer: nn.Module = PeerMLP()
        names = {k: k for k, _ in ours.named_parameters()}
    else:
        ours = MetaRNN(cell="gru", vocab=w["vocab"], embed=w["embed"], hidden=w["hidden"])
        peer = PeerLM(w["vocab"], w["embed"], w["hidden"])
        names = {k: GRU_NAMES.get(k, k) for k, _ in ours.named_parameters()}
    ours.to(dtype)
    peer.to(dtype)
    mine = dict(ours.named_parameters())
    with torch.no_grad():
        for k, p in peer.named_parameters():
            p.copy_(mine[next(a for a, b in names.items() if b == k)])
    return ours, peer, names


def batch(workload: str, dtype: torch.dtype, seed: int = 0) -> EpisodeBatch:
    w, g = WORK[workload], torch.Generator().manual_seed(seed)
    parts = []
    for _ in range(2):
        if workload == "sine":
            amp = torch.rand(w["t"], 1, 1, generator=g) * 4.9 + 0.1
            x = torch.rand(w["t"], 10, 1, generator=g) * 10 - 5
            parts.append(
                Split(
                    x.to(dtype), (amp * torch.sin(x)).to(dtype), torch.ones(w["t"], 10, dtype=dtype)
                )
            )
        else:
            seq = torch.randint(0, w["vocab"], (w["t"], w["k"], w["length"] + 1), generator=g)
            m = torch.ones(w["t"], w["k"], w["length"], dtype=dtype)
            parts.append(Split(seq[..., :-1], seq[..., 1:], m))
    return EpisodeBatch(*parts)


def _loss(net, s: Split, t: int):
    return task_loss(net.kind, net(s.x[t], s.mask[t])[None], s.y[t][None], s.mask[t][None])[0]


def contender(impl: str, workload: str, dtype: torch.dtype):
    """-> (meta_grad(batch) -> {metaray name: grad}, update(grads)) for one contender."""
    w = WORK[workload]
    ours, peer, names = build(workload, dtype)
    if impl == "metaray":
        ic, oc = plain_cfgs("maml", w["steps"], w["lr"])
        st = {"s": outer.init_state(ours, ic, oc)}
        if dtype == torch.float64:
            s0 = st["s"]
            st["s"] = s0._replace(
                lrs={k: v.double() for k, v in s0.lrs.items()},
            )

        def meta_grad(b):  # task groups on the run's threads, as outer.task_threads=N does
            return outer.meta_gradients(
                st["s"],
                b,
                model=ours,
                inner_cfg=ic,
                pre_metrics=False,
                threads=torch.get_num_threads(),
            )[0]

        def update(g):
            st["s"] = outer.apply_gradients(st["s"], g, oc)

        return meta_grad, update
    opt = torch.optim.Adam(peer.parameters(), lr=1e-3)
    pmap = dict(peer.named_parameters())
    inv = {v: k for k, v in names.items()}
    if impl == "higher":
        meta_grad = _higher(peer, w)
    elif impl == "torchopt":
        meta_grad = _torchopt(peer, w)
    else:
        meta_grad = _funcloop(peer, w)

    def grads(b):
        opt.zero_grad(set_to_none=True)
        out = meta_grad(b)
        return (
            {inv[k]: v for k, v in out.items()}
            if out
            else {inv[k]: p.grad for k, p in pmap.items()}
        )

    def update(g):
        for k, v in g.items():
            pmap[names[k]].grad = v
        opt.step()

    return grads, update


def _higher(peer, w):
    import higher

    inner = torch.optim.SGD(peer.parameters(), lr=w["lr"])

    def meta_grad(b):
        n = b.support.x.shape[0]
        for t in range(n):
            with higher.innerloop_ctx(peer, inner, copy_initial_weights=False) as (fnet, diffopt):
                for _ in range(w["steps"]):
                    diffopt.step(_loss(fnet, b.support, t))
                (_loss(fnet, b.query, t) / n).backward()
        return None  # gradients are in peer's .grad

    return meta_grad


def _torchopt(peer, w):
    import torchopt

    inner = torchopt.MetaSGD(peer, lr=w["lr"])

    def meta_grad(b):
        n = b.support.x.shape[0]
        net_state = torchopt.extract_state_dict(peer)
        opt_state = torchopt.extract_state_dict(inner)
        for t in range(n):
            for _ in range(w["steps"]):
                inner.step(_loss(peer, b.support, t))
            (_loss(peer, b.query, t) / n).backward()
            torchopt.recover_state_dict(peer, net_state)
            torchopt.recover_state_dict(inner, opt_state)
        return None

    return meta_grad


def _funcloop(peer, w):
    from torch.func import grad

    g_one = grad(one_task_loss(peer, w["steps"], w["lr"]))

    def meta_grad(b):
        params = {k: p.detach() for k, p in peer.named_parameters()}
        n = b.support.x.shape[0]
        total = {k: torch.zeros_like(v) for k, v in params.items()}
        for t in range(n):
            g = g_one(params, *(s[t] for s in b.support), *(q[t] for q in b.query))
            for k in total:
                total[k] += g[k] / n
        return total

    return meta_grad


def check_grads(workload: str) -> dict[str, float]:
    """Every contender's meta-gradient vs metaray's, float64, same init and batch."""
    b = batch(workload, torch.float64, seed=1)
    got = {impl: contender(impl, workload, torch.float64)[0](b) for impl in IMPLS}
    ref = got["metaray"]
    out = {}
    for impl, g in got.items():
        num = sum(float((g[k].double() - ref[k]).pow(2).sum()) for k in ref)
        out[impl] = (num / sum(float(ref[k].pow(2).sum()) for k in ref)) ** 0.5
    return out


def matmul_rate(n: int = 512, secs: float = 1.0) -> float:
    """Single-thread float32 matmul GFLOP/s of this machine, now."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < secs:
        a @ b
        reps += 1
    rate = 2 * n**3 * reps / (time.perf_counter() - start) / 1e9
    torch.set_num_threads(old)
    return rate


def peak_rss_mb() -> float:
    """This process's own peak RSS (VmHWM: reset by exec, unlike ru_maxrss, which a child
    started with subprocess inherits from its parent on Linux)."""
    with open("/proc/self/status") as f:
        line = next(x for x in f if x.startswith("VmHWM:"))
    return int(line.split()[1]) / 1024


def worker(impl: str, workload: str) -> None:
    """One contender, built once; answers {"threads", "iters"} lines with one result each."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(1)
    if impl == "metaray":  # what a Train worker sets at start-up (cluster.malloc_reuse_mb);
        # the peers' rates do not move with it (bench/RESULTS.md, "the C heap")
        from pipeline.config import ClusterConfig
        from pipeline.runtime.heap import reuse_freed_memory

        reuse_freed_memory(ClusterConfig().malloc_reuse_mb)
    meta_grad, update = contender(impl, workload, torch.float32)
    batches = [batch(workload, torch.float32, seed=s) for s in range(4)]
    update(meta_grad(batches[0]))  # warm-up
    with FlopCounterMode(display=False) as fc:
        update(meta_grad(batches[1]))
    print(json.dumps({"ready": True, "flops": fc.get_total_flops()}), flush=True)
    warmed: set[int] = set()
    for line in sys.stdin:
        cmd = json.loads(line)
        torch.set_num_threads(cmd["threads"])
        if cmd["threads"] not in warmed:
            update(meta_grad(batches[2]))
            warmed.add(cmd["threads"])
        start = time.perf_counter()
        for i in range(cmd["iters"]):
            update(meta_grad(batches[i % 4]))
        secs = time.perf_counter() - start
        print(json.dumps({"secs": secs, "peak_rss_mb": round(peak_rss_mb(), 1)}), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="sine,chargru")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--iters-scale", type=float, default=1.0, help="scale the timed iterations")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--workload", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(args.worker, args.workload)
        return 0
    impls = args.impls.split(",")
    threads = [int(t) for t in args.threads.split(",")]
    rate0 = matmul_rate()
    print(
        json.dumps(
            {
                "matmul_gflops_1thread": round(rate0, 1),
                "when": "start",
                "load_avg_1m": round(os.getloadavg()[0], 2),
            }
        ),
        flush=True,
    )
    results: dict[tuple, list[float]] = {}
    for workload in args.workloads.split(","):
        errs = check_grads(workload)
        print(json.dumps({"workload": workload, "grad_rel_err_vs_metaray_fp64": errs}), flush=True)
        procs = {impl: _spawn(impl, workload) for impl in impls}
        iters = max(1, round(WORK[workload]["iters"] * args.iters_scale))
        for rep in range(args.reps):
            for th in threads:
                for impl in impls:
                    rate = _run(procs[impl], workload, impl, th, iters, rep, rate0)
                    results.setdefault((workload, th, impl), []).append(rate)
        for p, _ in procs.values():
            p.stdin.close()
            p.wait(timeout=60)
    rate1 = matmul_rate()
    print(
        json.dumps(
            {
                "matmul_gflops_1thread": round(rate1, 1),
                "when": "end",
                "load_avg_1m": round(os.getloadavg()[0], 2),
            }
        ),
        flush=True,
    )
    _summary(results)
    return 0


def _spawn(impl: str, workload: str):
    cmd = [sys.executable, __file__, "--worker", impl, "--workload", workload]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    ready = json.loads(p.stdout.readline())
    return p, ready["flops"]


def _run(proc, workload, impl, threads, iters, rep, rate0) -> float:
    p, flops = proc
    p.stdin.write(json.dumps({"threads": threads, "iters": iters}) + "\n")
    p.stdin.flush()
    r = json.loads(p.stdout.readline())
    its = iters / r["secs"]
    tps = its * WORK[workload]["t"]
    print(
        json.dumps(
            {
                "workload": workload,
                "impl": impl,
                "threads": threads,
                "rep": rep,
                "tasks_per_s": round(tps, 2),
                "peak_rss_mb": r["peak_rss_mb"],
                "flops_per_meta_iter": flops,
                "share_of_matmul": round(flops * its / 1e9 / rate0, 4),
                "load_avg_1m": round(os.getloadavg()[0], 2),
            }
        ),
        flush=True,
    )
    return tps


def _summary(results: dict[tuple, list[float]]) -> None:
    import statistics

    for workload, th in sorted({(w, t) for w, t, _ in results}):
        med = {
            i: statistics.median(v) for (w, t, i), v in results.items() if (w, t) == (workload, th)
        }
        peers = {i: m for i, m in med.items() if i != "metaray"}
        best = max(peers, key=peers.get) if peers else None
        print(
            json.dumps(
                {
                    "summary": True,
                    "workload": workload,
                    "threads": th,
                    "median_tasks_per_s": {i: round(m, 2) for i, m in med.items()},
                    "best_peer": best,
                    "ratio_to_best_peer": round(med["metaray"] / peers[best], 2) if best else None,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    raise SystemExit(main())
