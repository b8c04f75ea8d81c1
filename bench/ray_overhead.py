"""Ray overhead: steps/s of `metaray train` (Ray Train + episode actors) against the
single-process loop (`pipeline/local_train.py`) on the same config; start-up separately;
1 worker vs 2 workers (1 thread each) on a 2-core machine; peak RSS per worker. Threads are
kept at 1 everywhere: on a shared, oversubscribed 2-core machine 2 OpenMP threads per process
spin against each other and measure the load, not Ray.

    .venv/bin/python bench/ray_overhead.py                       # quickstart, 200 steps
    .venv/bin/python bench/ray_overhead.py --config configs/sinusoid.yaml --steps 300

Steps/s of a Ray run is measured inside the worker over its training loop (`train_s`), so
worker start-up and teardown are excluded and reported as start-up (`fit()` wall - train_s).
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--steps", type=int, default=200)
    args = ap.parse_args()
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
