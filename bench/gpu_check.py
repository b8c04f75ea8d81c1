"""The GPU check: metaray's functional core on one CUDA device, as JSON lines.

    bash bench/gpu_check.sh                         # on the GPU machine (< 8 min on one GPU)
    .venv/bin/python bench/gpu_check.py --device cpu --quick   # its CPU form (unit tests)

Needs only PyTorch + numpy and this checkout: no Ray, MLflow or pydantic (a lent GPU machine
has none of them), so it exercises the core (`pipeline/meta`, `pipeline/models`), not the shell.
(a) `grads`: second-order meta-gradients (MAML; Meta-SGD for the GRU) of the GRU, LSTM and MLP
    models on the device against a float64 CPU reference (relative L2 error per model);
(b) `double_backward`: `nn.GRU` (cuDNN on CUDA) under double backward, and metaray's cells;
(c) `speed`: tasks/s of metaray's `train_step` against plain torch.func vmap and per-task
    loops, sine and chargru, meta-batch 8/64/256, in float32, TF32 and bf16 autocast, each
    precision timed only where metaray's meta-gradient stays within its tolerance;
(d) every `speed` line carries the peak device memory of that cell (`peak_mem_mb`).
One JSON object per line; a failing cell prints `"error"` and the run goes on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.torchfunc_baselines import loop_step, plain_cfgs, vmap_step
from pipeline.data.episodes import EpisodeBatch, Split
from pipeline.meta import outer
from pipeline.models.meta_rnn import MetaRNN
from pipeline.models.mlp import MLP

TOL = {"fp32": 1e-4, "tf32": 2e-2, "bf16": 5e-2}  # relative L2 error of the meta-gradient


def emit(**row) -> None:
    print(json.dumps(row), flush=True)


def sizes(quick: bool) -> dict:
    if quick:  # the CPU form: tiny shapes, so the unit test takes seconds
        return dict(
            hidden=8, embed=4, vocab=8, length=4, k=2, mlp=8, batches=[2], budget=0.0, steps=1
        )
    return dict(hidden=128, embed=32, vocab=64, length=32, k=16, mlp=40, batches=[8, 64, 256])


def make_model(name: str, sz: dict) -> tuple[nn.Module, object]:
    """Model + the inner/outer settings (plain namespaces: no pydantic here)."""
    torch.manual_seed(0)
    if name == "mlp":
        model: nn.Module = MLP(1, sz["mlp"], 2, 1)
        steps, lr = 1, 0.01
    else:
        model = MetaRNN(
            cell=name, vocab=sz["vocab"], embed=sz["embed"], hidden=sz["hidden"], task="lm"
        )
        steps, lr = sz.get("steps", 3), 0.1
    cfg, outer_cfg = plain_cfgs("maml", steps, lr)
    cfg.outer = outer_cfg
    return model, cfg


def make_batch(name: str, t: int, sz: dict, device: str, seed: int = 0) -> EpisodeBatch:
    g = torch.Generator().manual_seed(seed)
    k = sz["k"] if name != "mlp" else 10
    parts = []
    for _ in range(2):
        if name == "mlp":
            amp = torch.rand(t, 1, 1, generator=g) * 4.9 + 0.1
            x = torch.rand(t, k, 1, generator=g) * 10 - 5
            parts.append(Split(x, amp * torch.sin(x), torch.ones(t, k)))
        else:
            seq = torch.randint(0, sz["vocab"], (t, k, sz["length"] + 1), generator=g)
            parts.append(Split(seq[..., :-1], seq[..., 1:], torch.ones(t, k, sz["length"])))
    return EpisodeBatch(*(Split(*(a.to(device) for a in s)) for s in parts))


def to(state: outer.MetaState, device: str, dtype: torch.dtype | None = None) -> outer.MetaState:
    def mv(d: dict) -> dict:
        return {
            k: v.to(device=device, dtype=dtype if v.is_floating_point() and k != "count" else None)
            for k, v in d.items()
        }

    return outer.MetaState(mv(state.params), mv(state.lrs), mv(state.opt), state.step)


def meta_grad(model, cfg, state, batch) -> dict[str, Tensor]:
    grads, _ = outer.meta_gradients(state, batch, model=model, inner_cfg=cfg, pre_metrics=False)
    return grads


def rel_err(got: dict[str, Tensor], ref: dict[str, Tensor]) -> float:
    num = sum(float((got[k].double().cpu() - ref[k]).pow(2).sum()) for k in ref)
    den = sum(float(ref[k].pow(2).sum()) for k in ref)
    return math.sqrt(num / max(den, 1e-300))


def precision(name: str, device: str):
    """Context for one precision: TF32 matmuls, or bf16 autocast."""
    if name == "bf16":
        return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
    if name == "tf32" and device.startswith("cuda"):
        return _tf32()
    return contextlib.nullcontext()


@contextlib.contextmanager
def _tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def check_grads(device: str, sz: dict, precisions: list[str]) -> dict[tuple[str, str], float]:
    """(a): meta-gradients on `device` vs float64 CPU; -> {(model, precision): rel error}."""
    errs = {}
    for name in ("gru", "lstm", "mlp"):
        for alg in ("maml", "metasgd") if name == "gru" else ("maml",):
            model, cfg = make_model(name, sz)
            cfg.algorithm = alg
            state = outer.init_state(model, cfg, cfg.outer, seed=0)
            batch = make_batch(name, 4, sz, "cpu", seed=1)
            ref = meta_grad(model.double(), cfg, to(state, "cpu", torch.float64), _double(batch))
            model.float().to(device)
            dev_batch = make_batch(name, 4, sz, device, seed=1)
            for prec in precisions:
                try:
                    with precision(prec, device):
                        got = meta_grad(model, cfg, to(state, device), dev_batch)
                    err = rel_err(got, ref)
                    if alg == "maml":
                        errs[(name, prec)] = err
                    emit(
                        check="grads",
                        model=name,
                        algorithm=alg,
                        precision=prec,
                        device=device,
                        rel_err=err,
                        tol=TOL[prec],
                        ok=err <= TOL[prec],
                    )
                except Exception as e:  # report and go on: one cell must not end the check
                    errs[(name, prec)] = math.inf
                    emit(
                        check="grads",
                        model=name,
                        algorithm=alg,
                        precision=prec,
                        device=device,
                        ok=False,
                        error=f"{type(e).__name__}: {e}"[:300],
                    )
    return errs


def _double(batch: EpisodeBatch) -> EpisodeBatch:
    return EpisodeBatch(
        *(
            Split(*(a.double() if a.is_floating_point() else a for a in s))
            for s in (batch.support, batch.query)
        )
    )


def check_double_backward(device: str) -> None:
    """(b): second-order gradient through nn.GRU (cuDNN has none) and through our cells."""
    torch.manual_seed(0)
    x = torch.randn(4, 6, 8, device=device)
    gru = nn.GRU(8, 16, batch_first=True).to(device)
    ours = MetaRNN(cell="gru", vocab=16, embed=8, hidden=16, task="lm").to(device)
    tokens = torch.randint(0, 16, (1, 4, 6), device=device)
    cases = {
        "nn.GRU": (lambda: gru(x)[0].pow(2).mean(), list(gru.parameters())),
        "metaray cells": (
            lambda: ours(tokens, torch.ones(1, 4, 6, device=device)).pow(2).mean(),
            list(ours.parameters()),
        ),
    }
    for impl, (loss_fn, params) in cases.items():
        try:
            g = torch.autograd.grad(loss_fn(), params, create_graph=True)
            gg = torch.autograd.grad(sum(v.pow(2).sum() for v in g), params, allow_unused=True)
            finite = all(v is None or bool(torch.isfinite(v).all()) for v in gg)
            emit(
                check="double_backward",
                impl=impl,
                device=device,
                works=finite,
                cudnn=device.startswith("cuda") and torch.backends.cudnn.is_available(),
            )
        except Exception as e:
            emit(
                check="double_backward",
                impl=impl,
                device=device,
                works=False,
                error=f"{type(e).__name__}: {e}"[:300],
            )


def steppers(name: str, model, cfg):
    """{impl: step(state, batch) -> state} for the three versions compared."""

    def ours(state, batch):
        return outer.train_step(
            state,
            batch,
            model=model,
            inner_cfg=cfg,
            outer_cfg=cfg.outer,
            pre_metrics=False,
        )[0]

    return {
        "metaray": ours,
        "torch.func vmap": vmap_step(model, cfg.steps, cfg.lr, cfg.outer.lr),
        "per-task loop": loop_step(model, cfg.steps, cfg.lr, cfg.outer.lr),
    }


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_cell(step, state, batch, device: str, budget_s: float) -> tuple[float, int]:
    """Warm-up once, then repeat for ~budget_s; -> (seconds per step, steps timed)."""
    state = step(state, batch)
    sync(device)
    n, start = 0, time.perf_counter()
    while True:
        state = step(state, batch)
        n += 1
        sync(device)
        el = time.perf_counter() - start
        if el >= budget_s or n >= 50:
            return el / n, n


def check_speed(
    device: str,
    sz: dict,
    errs: dict,
    precisions: list[str],
    deadline: float,
    workloads: tuple[str, ...] = ("sine", "chargru"),
    impls: tuple[str, ...] | None = None,
) -> None:
    """(c) + (d): tasks/s and peak device memory per workload x meta-batch x precision x impl
    (`workloads` / `impls`: a subset, for a follow-up run that fills in skipped cells)."""
    for workload, name in (("sine", "mlp"), ("chargru", "gru")):
        if workload not in workloads:
            continue
        model, cfg = make_model(name, sz)
        model.to(device)
        base = to(outer.init_state(model, cfg, cfg.outer, seed=0), device)
        for t in sz["batches"]:
            batch = make_batch(name, t, sz, device)
            for prec in precisions:
                err = errs.get((name, prec), math.inf)
                for impl, step in steppers(name, model, cfg).items():
                    if impls is not None and impl not in impls:
                        continue
                    row = dict(
                        check="speed",
                        workload=workload,
                        meta_batch=t,
                        precision=prec,
                        impl=impl,
                        device=device,
                        grad_rel_err=err,
                    )
                    if err > TOL[prec]:
                        emit(**row, skipped=f"meta-gradient rel error {err:.2e} > {TOL[prec]}")
                        continue
                    if time.monotonic() > deadline:
                        emit(**row, skipped="time budget spent")
                        continue
                    emit(**row, **_timed(step, base, batch, device, prec, sz.get("budget", 2.0)))


def _timed(step, state, batch, device, prec, budget) -> dict:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    try:
        with precision(prec, device):
            secs, n = time_cell(step, state, batch, device, budget)
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"[:300]}
    t = batch.support.x.shape[0]
    if device.startswith("cuda"):
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:  # CPU form: the process's peak RSS
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "tasks_per_s": round(t / secs, 2),
        "ms_per_step": round(secs * 1e3, 3),
        "timed_steps": n,
        "peak_mem_mb": round(peak, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny shapes, one meta-batch (seconds)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="stop timing new cells after")
    ap.add_argument("--workloads", default="sine,chargru", help="speed cells: comma list")
    ap.add_argument("--batches", default="", help="speed cells' meta-batches (default 8,64,256)")
    ap.add_argument(
        "--impls", default="", help="speed cells: metaray,torch.func vmap,per-task loop (all)"
    )
    args = ap.parse_args(argv)
    deadline = time.monotonic() + args.budget_s
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        emit(check="env", error="--device cuda but torch.cuda.is_available() is False")
        return 2
    sz = sizes(args.quick)
    if args.batches:
        sz["batches"] = [int(b) for b in args.batches.split(",")]
    precisions = ["fp32"] if args.quick else ["fp32", "tf32", "bf16"]
    emit(
        check="env",
        torch=torch.__version__,
        device=args.device,
        name=torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        cudnn=torch.backends.cudnn.version() if args.device.startswith("cuda") else None,
    )
    errs = check_grads(args.device, sz, precisions)
    check_double_backward(args.device)
    impls = tuple(args.impls.split(",")) if args.impls else None
    check_speed(
        args.device, sz, errs, precisions, deadline, tuple(args.workloads.split(",")), impls
    )
    emit(check="done", seconds=round(args.budget_s - (deadline - time.monotonic()), 1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
