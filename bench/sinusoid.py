"""Reproduce the MAML / Meta-SGD sinusoid regression benchmark with the core.

    .venv/bin/python bench/sinusoid.py [--steps 20000] [--shots 5 10 20] [--algos maml metasgd]

Tasks (Finn et al., 2017): y = A sin(x - p), A ~ U[0.1, 5], p ~ U[0, pi], x ~ U[-5, 5]; fresh
tasks every meta-step (meta-batch 25), MLP 1-40-40-1 ReLU, 1 inner SGD step at lr 0.01
(Meta-SGD: learned per-parameter lrs, initialised at 0.01), Adam 1e-3, second order.
Evaluation: 1000 held-out tasks (fixed seed), K support points, 100 query points per task;
mean query MSE with a 95% CI (1.96 standard errors over tasks), after 1 and 10 inner steps.
Prints a markdown table (and one JSON line) for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import InnerConfig, OuterConfig
from pipeline.data.episodes import EpisodeBatch, Split
from pipeline.meta import outer
from pipeline.meta.inner import adapt
from pipeline.meta.losses import task_loss
from pipeline.models.mlp import MLP

PUBLISHED = {  # (algorithm, K) -> (MSE, source)
    ("maml", 5): (1.13, "Meta-SGD paper (MAML)"),
    ("maml", 10): (0.77, "Meta-SGD paper (MAML); ~0.67 public PyTorch reproduction"),
    ("maml", 20): (0.48, "Meta-SGD paper (MAML)"),
    ("metasgd", 10): (0.31, "public PyTorch reproduction"),
}


def tasks(n: int, k: int, q: int, g: torch.Generator) -> EpisodeBatch:
    amp = torch.rand(n, 1, 1, generator=g) * 4.9 + 0.1
    ph = torch.rand(n, 1, 1, generator=g) * math.pi
    xs = torch.rand(n, k, 1, generator=g) * 10 - 5
    xq = torch.rand(n, q, 1, generator=g) * 10 - 5
    return EpisodeBatch(
        Split(xs, amp * torch.sin(xs - ph), torch.ones(n, k)),
        Split(xq, amp * torch.sin(xq - ph), torch.ones(n, q)),
    )


def held_out_mse(state, model, ic, batch, steps: list[int]) -> dict[int, tuple[float, float]]:
    """Per-task query MSE after each step count -> (mean, 95% CI half-width)."""
    out = {}
    p, done = state.params, 0
    for s in sorted(steps):
        p = adapt(p, batch.support, model=model, steps=s - done, lrs=state.lrs, first_order=True)
        p = {k: v.detach() for k, v in p.items()}
        done = s
        with torch.no_grad():
            pred = model.functional(p, batch.query.x, batch.query.mask)
            mse = task_loss("regression", pred, batch.query.y, batch.query.mask)
        if not torch.isfinite(mse).all():  # e.g. Meta-SGD's lrs, learned for 1 step, at 10
            out[s] = (float("nan"), float("nan"))
            continue
        out[s] = (float(mse.mean()), 1.96 * float(mse.std()) / math.sqrt(len(mse)))
    return out


def run(alg: str, k: int, steps: int, seed: int) -> dict:
    torch.manual_seed(seed)
    model = MLP(1, 40, 2, 1)
    ic = InnerConfig(algorithm=alg, steps=1, lr=0.01)
    oc = OuterConfig(optimizer="adam", lr=1e-3, meta_batch=25)
    state = outer.init_state(model, ic, oc, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    start = time.perf_counter()
    for _ in range(steps):
        state, _ = outer.train_step(
            state, tasks(25, k, k, g), model=model, inner_cfg=ic, outer_cfg=oc, pre_metrics=False
        )
    secs = time.perf_counter() - start
    held = tasks(1000, k, 100, torch.Generator().manual_seed(12345 + k))
    res = held_out_mse(state, model, ic, held, [0, 1, 10])
    return {
        "algorithm": alg,
        "k": k,
        "steps": steps,
        "train_s": round(secs, 1),
        **{f"mse_{s}": round(v[0], 4) for s, v in res.items()},
        **{f"ci_{s}": round(v[1], 4) for s, v in res.items()},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=20000, help="meta-steps per (algorithm, K)")
    ap.add_argument("--shots", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--algos", nargs="+", default=["maml", "metasgd"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    rows = []
    for alg in args.algos:
        for k in args.shots:
            rows.append(run(alg, k, args.steps, args.seed))
            print(json.dumps(rows[-1]), flush=True)
    print(f"\nload average (1 min) at start {load0:.2f}, at end {os.getloadavg()[0]:.2f}")
    print(
        "\n| algorithm | K | meta-steps | train s | MSE, 1 step (95% CI) | MSE, 10 steps (95% CI) "
        "| published (1 step) |"
    )
    print("|---|---|---|---|---|---|---|")

    def cell(r: dict, s: int) -> str:
        m = r[f"mse_{s}"]
        return "diverges" if math.isnan(m) else f"{m:.3f} ± {r[f'ci_{s}']:.3f}"

    for r in rows:
        pub = PUBLISHED.get((r["algorithm"], r["k"]))
        ref = f"{pub[0]} ({pub[1]})" if pub else "-"
        print(
            f"| {r['algorithm']} | {r['k']} | {r['steps']} | {r['train_s']} "
            f"| {cell(r, 1)} | {cell(r, 10)} | {ref} |"
        )
    print(json.dumps({"rows": [{k: None if v != v else v for k, v in r.items()} for r in rows]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
