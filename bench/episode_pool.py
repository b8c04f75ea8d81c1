"""Episode-actor pool throughput against what a trainer consumes.

For each config: (1) the pool's episodes/s when drained as fast as possible (many requests in
flight), for 1 and 2 actors; (2) the trainer's consumption: episodes/s of `outer.train_step`
alone in this process (1 thread, data prebuilt); (3) a trainer loop fed by an `EpisodeStream`
with the config's `cluster.prefetch`: the fraction of its step time spent waiting for data.

    .venv/bin/python bench/episode_pool.py            # wordlang quickstart + sinusoid
    .venv/bin/python bench/episode_pool.py --steps 40

Needs the shard sets: data/quickstart-wordlang (scripts/quickstart.sh) and data/sinusoid
(`metaray shards build sinusoid --out data/sinusoid`).
"""

from __future__ import annotations

import argparse
import os
import time

CONFIGS = {
    "wordlang (quickstart)": ("configs/quickstart.yaml", []),
    "sinusoid": ("configs/sinusoid.yaml", []),
}


def _pool_rate(cfg, actors: int, steps: int) -> float:
    from pipeline.runtime.episode_actors import EpisodePool

    cluster = cfg.cluster.model_copy(update={"episode_actors": actors, "prefetch": 16})
    pool = EpisodePool(cfg.data, cluster, cfg.outer)
    for _ in pool.stream(0, 1, 0, 4):  # warm: actors started, rows cached
        pass
    t = time.perf_counter()
    n = sum(1 for _ in pool.stream(0, 1, 1000, 1000 + steps))
    rate = n * cfg.outer.meta_batch / (time.perf_counter() - t)
    import ray

    for a in pool.actors:
        ray.kill(a)
    return rate


def _consumption(cfg, steps: int) -> tuple[float, float]:
    """(episodes/s of train_step on prebuilt batches, data-wait fraction with the stream)."""
    import ray
    import torch

    from pipeline.data import episodes as ep
    from pipeline.meta import outer
    from pipeline.models import build_model
    from pipeline.runtime.episode_actors import EpisodePool

    torch.set_num_threads(1)
    model = build_model(cfg.model, cfg.data)
    state = outer.init_state(model, cfg.inner, cfg.outer, seed=0)
    pool = EpisodePool(cfg.data, cfg.cluster, cfg.outer)
    batches = [b for _, b in pool.stream(0, 1, 0, 3)]
    kw = dict(model=model, inner_cfg=cfg.inner, outer_cfg=cfg.outer)
    t = time.perf_counter()
    for i in range(steps):
        state, _ = outer.train_step(state, ep.to_torch(batches[i % 3]), **kw)
    consume = steps * cfg.outer.meta_batch / (time.perf_counter() - t)
    stream = pool.stream(0, 1, 100, 100 + steps)
    t = time.perf_counter()
    for _, b in stream:
        state, _ = outer.train_step(state, ep.to_torch(b), **kw)
    wait = stream.wait_s / (time.perf_counter() - t)
    for a in pool.actors:
        ray.kill(a)
    return consume, wait


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    import ray

    from pipeline import config

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"load average before: {os.getloadavg()}")
    print(
        "| config | pool 1 actor ep/s | pool 2 actors ep/s | trainer consumes ep/s "
        "| pool/consumption | data wait (prefetch) |"
    )
    print("|---|---|---|---|---|---|")
    for name, (path, over) in CONFIGS.items():
        cfg = config.load(path, over)
        if not os.path.exists(cfg.data.uri):
            print(f"| {name} | skipped: {cfg.data.uri} missing |")
            continue
        one = _pool_rate(cfg, 1, args.steps * 3)
        two = _pool_rate(cfg, 2, args.steps * 3)
        consume, wait = _consumption(cfg, args.steps)
        print(
            f"| {name} | {one:.0f} | {two:.0f} | {consume:.0f} | {max(one, two) / consume:.1f}x "
            f"| {100 * wait:.1f}% ({cfg.cluster.prefetch}) |"
        )
    print(f"load average after: {os.getloadavg()}")
    ray.shutdown()


if __name__ == "__main__":
    main()
