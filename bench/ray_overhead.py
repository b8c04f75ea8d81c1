"""Ray overhead: steps/s of `metaray train` (Ray Train + episode actors) against the
single-process loop (`pipeline/local_train.py`) on the same config; start-up separately;
1 worker vs 2 workers (1 thread each) on a 2-core machine; peak RSS per worker. Threads are
kept at 1 everywhere: on a shared, oversubscribed 2-core machine 2 OpenMP threads per process
spin against each other and measure the load, not Ray.

    .venv/bin/python bench/ray_overhead.py                       # quickstart, 200 steps
    .venv/bin/python bench/ray_overhead.py --config configs/sinusoid.yaml --steps 300

Steps/s of a Ray run is measured inside the worker over its training loop (`train_s`), so
worker start-up and teardown are excluded and reported as start-up (`fit()` wall - train_s).

`--mode run`: ONE `run_training` of the config as it is (its report cadence kept; only the
steps, storage and run name changed, tracking off), through `launch.connect` like `metaray
train` / `jobs/train.py`: embedded Ray when no RAY_ADDRESS is set, the job's cluster when it
runs under `ray job submit`. Prints one JSON line: steps/s, start-up, the poll interval in the
driver's environment and in the environment of Train's controller process (read from /proc
while the run is on; the cluster is on this host), the nodes the workers ran on, load average.
`bench/cluster_steps.py` runs it embedded vs on a two-node cluster (issue 14 s.2).

    .venv/bin/python bench/ray_overhead.py --mode run --config configs/smoke.yaml --steps 60 \
        data.uri=/tmp/smoke-sinusoid [--poll 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a job's working dir: pipeline/

POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def _local(cfg, steps: int, threads: int) -> tuple[float, float]:
    from pipeline.local_train import slices, train

    cfg = cfg.model_copy(
        update={"cluster": cfg.cluster.model_copy(update={"threads_per_worker": threads})}
    )
    t = time.perf_counter()
    res = train(**slices(cfg), steps=steps)
    total = time.perf_counter() - t
    return steps / res.seconds, total - res.seconds


def _ray(cfg, steps: int, workers: int, threads: int, storage: str) -> dict[str, float]:
    from pipeline import config
    from pipeline.runtime.launch import run_training

    run = config.from_dict(
        {
            **config.to_dict(cfg),
            "cluster": {
                **config.to_dict(cfg.cluster),
                "num_workers": workers,
                "threads_per_worker": threads,
                "cpus_per_worker": 2 / workers,
            },
            "checkpoint": {
                **config.to_dict(cfg.checkpoint),
                "storage": storage,
                "run_name": f"overhead-{workers}w-{time.time_ns()}",
            },
            "tracking": {**config.to_dict(cfg.tracking), "enabled": False},
        }
    )
    r = run_training(run, quiet=True)
    m = r.metrics
    return {
        "steps_per_s": steps / m["train_s"],
        "startup_s": r.seconds - m["train_s"],
        "peak_rss_mb": m["peak_rss_mb"],
        "data_wait": m["data_wait_frac"],
    }


class _ControllerEnv(threading.Thread):
    """While the run is on: find this job's TrainController actor (state API) and read the
    poll variable from its process environment (/proc: same host)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.value: str | None = None
        self.error = ""
        self.done = threading.Event()

    def run(self) -> None:
        import psutil
        import ray
        from ray.util.state import list_actors

        ctx = ray.get_runtime_context()
        job, gcs = ctx.get_job_id(), ctx.gcs_address  # this Ray, not another on the host
        while not self.done.is_set():
            try:
                rows = list_actors(
                    filters=[("class_name", "=", "TrainController"), ("job_id", "=", job)],
                    address=gcs,
                    raise_on_missing_output=False,
                )
                pids = [r.pid for r in rows if r.pid and r.state == "ALIVE"]
                if pids:
                    self.value = psutil.Process(pids[0]).environ().get(POLL_ENV, "<unset>")
                    return
            except Exception as exc:  # report, do not fail the run
                self.error = f"{type(exc).__name__}: {exc}"[:200]
            time.sleep(0.5)


def _one_run(args: argparse.Namespace) -> None:
    """One run through `launch.connect` (embedded, or the job's cluster); a JSON line."""
    import ray

    from pipeline import config
    from pipeline.runtime import launch

    if args.poll is not None:
        os.environ[POLL_ENV] = args.poll  # kept by connect (setdefault)
    over = [f"outer.steps={args.steps}", *args.overrides]
    cfg = config.load(args.config, over)
    storage = tempfile.mkdtemp(prefix="mro-")
    cfg = config.from_dict(
        {
            **config.to_dict(cfg),
            "checkpoint": {
                **config.to_dict(cfg.checkpoint),
                "storage": storage,
                "run_name": f"poll-{time.time_ns()}",
            },
            "tracking": {**config.to_dict(cfg.tracking), "enabled": False},
        }
    )
    load0 = os.getloadavg()
    launch.connect(cfg)  # run_training's own connect then finds Ray up and leaves it
    kind = "cluster" if os.environ.get("RAY_ADDRESS") else "embedded"
    nodes = len([n for n in ray.nodes() if n["Alive"]])
    probe = _ControllerEnv()
    probe.start()
    try:
        r = launch.run_training(cfg, quiet=True)
    finally:
        probe.done.set()
        ray.shutdown()
        shutil.rmtree(storage, ignore_errors=True)
    m = r.metrics
    row = {
        "label": args.label or kind,
        "ray": kind,
        "nodes": nodes,
        "workers": cfg.cluster.num_workers,
        "steps": r.steps,
        "train_s": round(m["train_s"], 2),
        "steps_per_s": round(r.steps / m["train_s"], 2),
        "fit_s": round(r.seconds, 1),
        "startup_s": round(r.seconds - m["train_s"], 1),
        "poll_driver": os.environ.get(POLL_ENV),
        "poll_controller": probe.value,
        "probe_error": probe.error if probe.value is None else "",
        "loss": round(float(m.get("loss", float("nan"))), 5),
        "load_before": [round(x, 2) for x in load0],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    print("RESULT " + json.dumps(row), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--mode", choices=["table", "run"], default="table")
    ap.add_argument("--poll", default=None, help=f"--mode run: set {POLL_ENV} first")
    ap.add_argument("--label", default="")
    ap.add_argument("overrides", nargs="*", help="--mode run: dotted config overrides")
    args = ap.parse_args()
    if args.mode == "run":
        _one_run(args)
        return
    import ray

    from pipeline import config

    over = [
        f"outer.steps={args.steps}",
        f"outer.val_every={args.steps}",
        f"checkpoint.every={args.steps}",
    ]
    cfg = config.load(args.config, over)
    print(f"{args.config}, {args.steps} steps; load average before: {os.getloadavg()}")
    local_sps, local_start = _local(cfg, args.steps, 1)
    local_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as storage:
        one = _ray(cfg, args.steps, 1, 1, storage)
        two = _ray(cfg, args.steps, 2, 1, storage)
    ray.shutdown()
    print("| run | steps/s | vs local | start-up s | peak RSS MB / worker | data wait |")
    print("|---|---|---|---|---|---|")
    print(
        f"| local_train (1 process, 1 thread) | {local_sps:.1f} | 1.00 | {local_start:.1f} "
        f"| {local_rss:.0f} (whole process) | - |"
    )
    for name, r in (
        ("metaray train, 1 worker x 1 thread", one),
        ("metaray train, 2 workers x 1 thread", two),
    ):
        print(
            f"| {name} | {r['steps_per_s']:.1f} | {r['steps_per_s'] / local_sps:.2f} "
            f"| {r['startup_s']:.1f} | {r['peak_rss_mb']:.0f} | {100 * r['data_wait']:.1f}% |"
        )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
