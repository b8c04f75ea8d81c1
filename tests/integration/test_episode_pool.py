"""Episode actors on a real local Ray: the batch of a step is the same whatever the number of
actors and ranks, and the same as a rank builds itself with `cluster.episode_actors=0`; each
actor holds only its tasks; a killed actor is restarted and its requests retried; a corrupt
shard stops the stream with an error naming the file."""

from __future__ import annotations

import os
import shutil
import signal

import numpy as np
import pytest

from pipeline import config
from pipeline.data import episodes as ep
from pipeline.data.shards import clear_cache, open_shard_set
from pipeline.errors import ShardError

pytestmark = pytest.mark.integration


def _cfg(uri, actors: int, workers: int = 1):
    return config.load(
        "configs/smoke.yaml",
        [f"data.uri={uri}", f"cluster.episode_actors={actors}", f"cluster.num_workers={workers}"],
    )


def _reference(cfg, steps):
    ss = open_shard_set(cfg.data.uri)
    return [
        ep.build_step(
            ss.read_task,
            ss.tasks("train"),
            cfg.data,
            seed=cfg.outer.seed,
            step=s,
            meta_batch=cfg.outer.meta_batch,
        )
        for s in steps
    ]


def _equal(a, b) -> bool:
    pairs = zip(a.support + a.query, b.support + b.query, strict=True)
    return all(np.array_equal(x, y) for x, y in pairs)


def test_same_batches_for_any_actor_and_rank_count(ray_cluster, smoke_shards):
    import ray

    from pipeline.runtime.episode_actors import EpisodePool
    from pipeline.runtime.episode_local import LocalEpisodes

    ref = _reference(_cfg(smoke_shards, 1), range(3, 6))
    for actors, world in ((1, 1), (3, 2)):
        cfg = _cfg(smoke_shards, actors, world)
        pool = EpisodePool(cfg.data, cfg.cluster, cfg.outer)
        streams = [pool.stream(r, world, 3, 6) for r in range(world)]
        for want, *got in zip(ref, *streams, strict=True):
            assert [s for s, _ in got] == [got[0][0]] * world
            joined = ep.collate(
                [
                    ep.EpisodeBatch(
                        *(ep.Split(*(a[i] for a in part)) for part in (b.support, b.query))
                    )
                    for _, b in got
                    for i in range(b.support.x.shape[0])
                ]
            )
            assert _equal(joined, want), (actors, world)
        if actors > 1:  # each actor holds only the tasks it owns
            cached = ray.get([a.cached_tasks.remote() for a in pool.actors])
            assert all(cached), "every actor served some slot"
            assert not set(cached[0]) & set(cached[1]) and not set(cached[1]) & set(cached[2])
        val = [pool.val_batch(r, world) for r in range(world)]
        assert sum(v.support.x.shape[0] for v in val) == pool.val_size(world)
        # cluster.episode_actors=0: each rank builds the very batches the pool served it
        local = LocalEpisodes(cfg.data, cfg.cluster, cfg.outer)
        for r in range(world):
            served = pool.stream(r, world, 3, 6)
            for (s1, a), (s2, b) in zip(served, local.stream(r, world, 3, 6), strict=True):
                assert s1 == s2 and _equal(a, b) and a.tasks == b.tasks, (actors, world, r)
            assert _equal(local.val_batch(r, world), val[r])


def test_killed_actor_restarts_and_corrupt_shard_is_named(ray_cluster, smoke_shards, tmp_path):
    import ray

    from pipeline.runtime.episode_actors import EpisodePool

    cfg = _cfg(smoke_shards, 2)
    ref = _reference(cfg, range(0, 6))
    one_step = cfg.cluster.model_copy(update={"episodes_per_request": 1, "prefetch": 1})
    pool = EpisodePool(cfg.data, one_step, cfg.outer)
    stream = pool.stream(0, 1, 0, 6)
    first = ray.get(pool.actors[0].pid.remote())
    _, b0 = next(stream)
    os.kill(first, signal.SIGKILL)  # the actor process dies; Ray restarts it, calls retried
    rest = [b for _, b in stream]
    assert all(_equal(b, r) for b, r in zip([b0, *rest], ref, strict=True))
    assert ray.get(pool.actors[0].pid.remote()) != first

    bad = tmp_path / "bad"
    shutil.copytree(smoke_shards, bad)
    victim = sorted(bad.glob("train-*.parquet"))[0]
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    victim.write_bytes(bytes(raw))
    clear_cache()
    cfg = _cfg(bad, 1)
    with pytest.raises(ShardError, match=victim.name):
        list(EpisodePool(cfg.data, cfg.cluster, cfg.outer).stream(0, 1, 0, 20))
