"""How much of a sweep's wall time is not training: Ray Tune + Ray Train start-up per trial.

Builds the smoke shard set in a temp dir, then runs `configs/tune_smoke.yaml` (FIFO, so every
trial trains its full budget; tracking off) once per `--steps` value and prints one JSON line
per sweep:

    outside_frac = 1 - sum over trials of train_s / (sweep wall seconds x concurrency)

`train_s` is each trial's own loop time as its workers report it (start-up excluded), and
`concurrency` the trials Tune runs side by side (2 on 2 CPUs). The issue-14 target: under 0.30
on a sweep whose trials train >= 30 s each (and reported on the smoke sweep too).

    .venv/bin/python bench/sweep_startup.py --steps 6,3000
    .venv/bin/python bench/sweep_startup.py --steps 6 --episode-actors 1   # episode actors
    .venv/bin/python bench/sweep_startup.py --steps 6 --trial-runs train   # a Train run per trial
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _train_seconds(trials_dir: Path) -> list[float]:
    """Each trial's last reported `train_s` (Tune writes one JSON object per report)."""
    out = []
    for result in sorted(trials_dir.rglob("result.json")):
        rows = [json.loads(line) for line in result.read_text().splitlines() if line.strip()]
        seconds = [r["train_s"] for r in rows if "train_s" in r]
        if seconds:
            out.append(max(seconds))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", default="6,3000", help="comma-separated outer.steps, one sweep each")
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument(
        "--episode-actors", type=int, help="cluster.episode_actors (0: in-worker episodes)"
    )
    ap.add_argument(
        "--trial-runs",
        choices=["auto", "train", "in_trial"],
        help="tune.trial_runs (train: a Ray Train run per trial; in_trial: the trial's process)",
    )
    args = ap.parse_args()
    actors = (
        [] if args.episode_actors is None else [f"cluster.episode_actors={args.episode_actors}"]
    )
    if args.trial_runs:
        actors.append(f"tune.trial_runs={args.trial_runs}")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.2")  # as the tests
    from train_startup import smoke_shards  # bench/ is the script's sys.path[0]

    from pipeline.runtime.tune import in_trial, run_sweep
    from pipeline.runtime.tune_config import load_sweep

    tmp, shards = smoke_shards("metaray-sweep-startup-")
    for steps in (int(s) for s in args.steps.split(",")):
        name = f"startup-{steps}"
        base, sweep = load_sweep(
            ROOT / "configs/tune_smoke.yaml",
            [
                f"data.uri={shards}",
                f"checkpoint.storage={tmp / 'runs'}",
                "tracking.enabled=false",
                f"tune.storage={tmp / 'tune'}",
                f"tune.name={name}",
                "tune.scheduler=fifo",
                f"tune.num_samples={args.trials}",
                f"outer.steps={steps}",
                f"outer.val_every={max(2, steps // 10)}",
                f"checkpoint.every={max(2, steps // 10)}",
                *actors,
            ],
        )
        t = time.perf_counter()
        result = run_sweep(base, sweep, quiet=True)
        wall = time.perf_counter() - t
        train = _train_seconds(tmp / "tune" / name)
        outside = 1 - sum(train) / (wall * max(result.concurrency, 1))
        row = {
            "steps": steps,
            "episode_actors": base.cluster.episode_actors,
            "trial_runs": "in_trial" if in_trial(base, sweep) else "train",
            "trials": len(result.rows),
            "concurrency": result.concurrency,
            "wall_s": round(wall, 1),
            "train_s_per_trial": [round(s, 1) for s in train],
            "outside_frac": round(outside, 3),
            "load_avg_1m": round(os.getloadavg()[0], 2),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
