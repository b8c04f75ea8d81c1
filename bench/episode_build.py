"""What in-worker episodes (`cluster.episode_actors=0`) add to a trainer rank's step: the time
`LocalEpisodes` takes to build a rank's batch against the time `outer.train_step` takes on it,
in this process (1 torch thread, no Ray). With episode actors the build runs in another
process, overlapped with training; in-worker it is on the step's critical path.

Builds the default sinusoid shard set in a temp dir and prints one JSON line per config:
`build_ms`, `step_ms` (per step, one rank of `cluster.num_workers`), `build_over_step`.

    .venv/bin/python bench/episode_build.py --steps 400
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("configs/tune_smoke.yaml", "configs/tune_inner_lr.yaml")


def measure(config: str, shards: Path, steps: int) -> dict:
    from pipeline.data import episodes as ep
    from pipeline.meta import outer
    from pipeline.models import build_model
    from pipeline.runtime.episode_local import LocalEpisodes
    from pipeline.runtime.tune_config import load_sweep

    cfg, _ = load_sweep(ROOT / config, [f"data.uri={shards}"])
    world, batch = cfg.cluster.num_workers, cfg.outer.meta_batch
    src = LocalEpisodes(cfg.data, cfg.cluster, cfg.outer)
    t = time.perf_counter()
    built = [src.batch(src.train_tasks, s, batch, 0, world, cfg.outer.seed) for s in range(steps)]
    build = (time.perf_counter() - t) / steps
    model = build_model(cfg.model, cfg.data)
    state = outer.init_state(model, cfg.inner, cfg.outer, seed=cfg.outer.seed)
    kw = {"model": model, "inner_cfg": cfg.inner, "outer_cfg": cfg.outer}
    t = time.perf_counter()
    for b in built:
        state, _ = outer.train_step(state, ep.to_torch(b), **kw)
    step = (time.perf_counter() - t) / steps
    return {
        "config": config,
        "rank_of": world,
        "episodes_per_rank": batch // world,
        "build_ms": round(build * 1e3, 3),
        "step_ms": round(step * 1e3, 3),
        "build_over_step": round(build / step, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    args = ap.parse_args()
    import os

    import torch

    from pipeline.cli import main as cli

    torch.set_num_threads(1)
    shards = Path(tempfile.mkdtemp(prefix="metaray-episode-build-")) / "sinusoid"
    assert cli(["shards", "build", "sinusoid", "--out", str(shards)]) == 0
    for config in CONFIGS:
        row = measure(config, shards, args.steps)
        print(json.dumps({**row, "load_avg_1m": round(os.getloadavg()[0], 2)}), flush=True)


if __name__ == "__main__":
    main()
