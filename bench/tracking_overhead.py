"""Tracking overhead per meta-step, and the wall time of the tune smoke sweep.

    .venv/bin/python bench/tracking_overhead.py [--steps 1000] [--rounds 3] [--sweep]

Per-step overhead: the same second-order MAML sinusoid step (`outer.train_step`, MLP, one
inner step) run with no tracker, with the MLflow tracker on a local SQLite store, and with
the MLflow tracker against a real `mlflow server` on 127.0.0.1; every step logs the metrics
the trainer logs (5 values) and every 10th step a loss-vs-inner-steps curve, as rank 0 does.
Modes are interleaved in rounds (medians reported). Wall times move with other processes'
load, so the overhead is computed from CPU time, which does not: (time inside the tracker's
calls on the training thread, beyond the null tracker's) + (the background sender's CPU,
`MlflowTracker.sender_cpu_s`, spread over the run's steps, including start's params and
end's plots/close), as a share of the training thread's CPU per step without tracking.
Goal: under 2% of step time. end() (plots rendered, queue flushed) is a fixed cost per run.

`--sweep` also times `metaray tune --config configs/tune_smoke.yaml` (3 trials, ASHA, on
an embedded 2-CPU Ray; shards built to a temp dir first; tracking to a local SQLite store).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import config  # noqa: E402
from pipeline.data.episodes import EpisodeBatch, Split  # noqa: E402
from pipeline.meta import outer  # noqa: E402
from pipeline.models import build_model  # noqa: E402
from pipeline.tracking import NullTracker, make_tracker  # noqa: E402


def batches(n: int, meta_batch: int, k: int, seed: int = 0) -> list[EpisodeBatch]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        amp = torch.rand(meta_batch, 1, 1, generator=g) * 4.9 + 0.1
        phase = torch.rand(meta_batch, 1, 1, generator=g) * math.pi
        x = torch.rand(meta_batch, 2 * k, 1, generator=g) * 10 - 5
        y = amp * torch.sin(x - phase)
        mask = torch.ones(meta_batch, k)
        out.append(EpisodeBatch(Split(x[:, :k], y[:, :k], mask), Split(x[:, k:], y[:, k:], mask)))
    return out


def run(cfg: config.RunConfig, tracker, data: list[EpisodeBatch]) -> dict[str, float]:
    """One timed run: per-step wall and CPU, time inside tracker calls, sender CPU, end()."""
    model = build_model(cfg.model, cfg.data)
    state = outer.init_state(model, cfg.inner, cfg.outer, seed=0)
    tracker.start("bench", config.flat_params(cfg))
    steps, calls = [], []
    cpu0 = time.thread_time()
    for i, batch in enumerate(data):
        t0 = time.perf_counter()
        state, m = outer.train_step(
            state, batch, model=model, inner_cfg=cfg.inner, outer_cfg=cfg.outer
        )
        t1 = time.perf_counter()
        metrics = {
            "loss": m["loss_post"],
            "loss_pre": m["loss_pre"],
            "loss_post": m["loss_post"],
            "episodes_per_s": cfg.outer.meta_batch / (t1 - t0),
            "data_wait_frac": 0.0,
        }
        tracker.log_metrics(metrics, i + 1)
        if (i + 1) % 10 == 0:
            tracker.log_inner_curve({0: m["loss_pre"], 1: m["loss_post"]}, i + 1)
        t2 = time.perf_counter()
        steps.append(t2 - t0)
        calls.append(t2 - t1)
    train_cpu = time.thread_time() - cpu0  # the training thread only: load-independent
    t_end = time.perf_counter()
    tracker.end()  # plots rendered, queue flushed, run closed
    n = len(data)
    return {
        "step_ms": 1e3 * statistics.median(steps),
        "call_us": 1e6 * statistics.median(calls),
        "train_cpu_ms": 1e3 * train_cpu / n,
        # every send of this run (the metrics, plus start's params and end's plots/close)
        "sender_us": 1e6 * getattr(tracker, "sender_cpu_s", 0.0) / n,
        "end_s": time.perf_counter() - t_end,
    }


def per_step(args: argparse.Namespace, server_uri: str, tmp: Path) -> None:
    shapes = {
        "smoke (MLP 16, meta-batch 4, K=5)": (16, 4, 5),
        "sinusoid (MLP 40, meta-batch 25, K=10)": (40, 25, 10),
    }
    print(f"{args.steps} steps per run, median of {args.rounds} interleaved runs per mode")
    print(
        "| step shape | tracker | step ms (wall) | training-thread CPU ms/step "
        "| in-call µs/step | sender CPU µs/step | overhead (CPU) | end() s |"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for label, (hidden, mb, k) in shapes.items():
        cfg = config.load(
            None,
            [
                "data.episode=regression",
                "model.kind=mlp",
                f"model.hidden={hidden}",
                f"outer.meta_batch={mb}",
                f"data.k_support={k}",
                f"data.k_query={k}",
            ],
        )
        data = batches(args.steps, mb, k)
        uris = {
            "none": None,
            "mlflow sqlite": f"sqlite:///{tmp}/bench.db",
            "mlflow server": server_uri,
        }
        res: dict[str, list[dict[str, float]]] = {k: [] for k in uris}
        for _ in range(args.rounds):
            for name, uri in uris.items():
                tracking = cfg.tracking.model_copy(update={"uri": uri, "experiment": "bench"})
                tracker = make_tracker(tracking) if uri else NullTracker()
                res[name].append(run(cfg, tracker, data))
        base_cpu = statistics.median(r["train_cpu_ms"] for r in res["none"])
        base_call = statistics.median(r["call_us"] for r in res["none"])
        for name, rows in res.items():
            med = {key: statistics.median(r[key] for r in rows) for key in rows[0]}
            extra_us = med["call_us"] - base_call + med["sender_us"]
            over = f"{100 * extra_us / (1e3 * base_cpu):.1f}%" if name != "none" else "-"
            print(
                f"| {label} | {name} | {med['step_ms']:.2f} | {med['train_cpu_ms']:.2f} "
                f"| {med['call_us']:.0f} | {med['sender_us']:.0f} | {over} "
                f"| {med['end_s']:.2f} |"
            )


def sweep(tmp: Path) -> None:
    venv = Path(sys.executable).parent
    shards = tmp / "smoke-sinusoid"
    subprocess.run(
        [
            str(venv / "metaray"),
            "shards",
            "build",
            "sinusoid",
            "--out",
            str(shards),
            "--train-tasks",
            "24",
            "--val-tasks",
            "8",
            "--test-tasks",
            "4",
            "--points",
            "40",
            "--rows-per-file",
            "320",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    cmd = [
        str(venv / "metaray"),
        "tune",
        "--config",
        str(ROOT / "configs/tune_smoke.yaml"),
        f"data.uri={shards}",
        f"tracking.uri=sqlite:///{tmp}/sweep.db",
        f"tune.storage={tmp / 'tune'}",
        f"checkpoint.storage={tmp / 'runs'}",
    ]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    table = out.stdout[out.stdout.index("trial ") :].split("\n\n")[0]
    print(f"\ntune smoke sweep (3 trials, ASHA, 2 side by side): {wall:.1f} s wall")
    print(table)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, check=True)
    print(f"rerun (Tuner.restore of the finished sweep): {time.perf_counter() - t0:.1f} s wall")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="meta-steps per run (0: skip)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per mode")
    parser.add_argument("--sweep", action="store_true", help="also time the tune smoke sweep")
    args = parser.parse_args()
    torch.set_num_threads(1)
    sys.path.insert(0, str(ROOT))
    from tests.fixtures.mlflow_server import start_mlflow_server

    print(f"load before: {os.getloadavg()[0]:.2f} (1-min load average, 2 cores)")
    with tempfile.TemporaryDirectory(prefix="metaray-bench-") as d:
        tmp = Path(d)
        if args.steps:
            server = start_mlflow_server(tmp / "server")
            try:
                per_step(args, server.uri, tmp)
            finally:
                server.stop()
        if args.sweep:
            sweep(tmp)
    print(f"load after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
