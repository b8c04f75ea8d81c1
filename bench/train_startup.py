"""What one short training run costs beyond its steps: Ray Train V2's start-up and teardown.

Builds the smoke shard set in a temp dir, starts one local Ray (2 CPUs, no dashboard, as the
tests do), then runs `configs/smoke.yaml` for `--steps` meta-steps `--runs` times and prints
one JSON line per run: wall seconds of `run_training` and of `fit()` inside it (a smoke step
takes ~0.07 s, so with `--steps 2` nearly all of it is start-up and teardown). Ray Train's
controller log (session `logs/train/ray-train-sys-controller-*.log`) breaks `fit()` down.

    .venv/bin/python bench/train_startup.py --runs 2 --steps 2
    .venv/bin/python bench/train_startup.py --runs 2 --steps 2 --episode-actors 0
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def smoke_shards(prefix: str) -> tuple[Path, Path]:
    """A temp dir and the tests' smoke sinusoid shard set built in it (what the timed runs read)."""
    from pipeline.cli import main as cli

    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    shards = tmp / "smoke-sinusoid"
    build = ["shards", "build", "sinusoid", "--out", str(shards), "--train-tasks", "24"]
    assert cli([*build, "--val-tasks", "8", "--test-tasks", "4", "--points", "40"]) == 0
    return tmp, shards


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument(
        "--episode-actors", type=int, help="cluster.episode_actors (0: in-worker episodes)"
    )
    args = ap.parse_args()
    actors = (
        [] if args.episode_actors is None else [f"cluster.episode_actors={args.episode_actors}"]
    )
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # as the tests
    import ray

    from pipeline import config
    from pipeline.runtime import launch

    tmp, shards = smoke_shards("metaray-startup-")
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    fit_s: list[float] = []
    inner_fit = launch._fit

    def timed_fit(*a, **k):
        t = time.perf_counter()
        try:
            return inner_fit(*a, **k)
        finally:
            fit_s.append(time.perf_counter() - t)

    launch._fit = timed_fit
    for i in range(args.runs):
        cfg = config.load(
            str(ROOT / "configs/smoke.yaml"),
            [
                f"data.uri={shards}",
                f"checkpoint.storage={tmp / 'runs'}",
                f"checkpoint.run_name=r{i}",
                f"outer.steps={args.steps}",
                "cluster.num_workers=1",
                "tracking.enabled=false",
                *actors,
            ],
        )
        t = time.perf_counter()
        result = launch.run_training(cfg, quiet=True)
        wall = time.perf_counter() - t
        print(
            json.dumps(
                {
                    "run": i,
                    "episode_actors": cfg.cluster.episode_actors,
                    "steps": result.steps,
                    "run_training_s": round(wall, 2),
                    "fit_s": round(fit_s[-1], 2),
                }
            ),
            flush=True,
        )
    ray.shutdown()


if __name__ == "__main__":
    main()
