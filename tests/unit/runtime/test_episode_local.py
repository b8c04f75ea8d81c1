"""In-worker episodes (`cluster.episode_actors=0`) serve each rank the slice `build_step` builds
and the validation share the pool would, without Ray (the pool side is compared bit for bit in
tests/integration/test_episode_pool.py)."""

from __future__ import annotations

import numpy as np

from pipeline import config
from pipeline.cli import main as cli
from pipeline.data import episodes as ep
from pipeline.data.shards import open_shard_set
from pipeline.runtime.episode_local import LocalEpisodes


def _equal(a: ep.EpisodeBatch, b: ep.EpisodeBatch) -> bool:
    pairs = zip(a.support + a.query, b.support + b.query, strict=True)
    return a.tasks == b.tasks and all(np.array_equal(x, y) for x, y in pairs)


def test_local_source_serves_build_steps_slices_and_the_validation_shares(tmp_path):
    shards = tmp_path / "s"
    build = ["shards", "build", "sinusoid", "--out", str(shards), "--train-tasks", "6"]
    assert cli([*build, "--val-tasks", "5", "--test-tasks", "1", "--points", "20"]) == 0
    cfg = config.load(
        "configs/smoke.yaml",
        [f"data.uri={shards}", "cluster.episode_actors=0", "outer.meta_batch=4"],
    )
    ss, src = open_shard_set(str(shards)), LocalEpisodes(cfg.data, cfg.cluster, cfg.outer)
    assert src.actors == [] and src.train_tasks == ss.tasks("train")
    for world in (1, 2):
        for rank in range(world):
            got = list(src.stream(rank, world, 2, 5))
            assert [s for s, _ in got] == [2, 3, 4]
            for step, batch in got:
                want = ep.build_step(
                    ss.read_task,
                    ss.tasks("train"),
                    cfg.data,
                    seed=cfg.outer.seed,
                    step=step,
                    meta_batch=4,
                    rank=rank,
                    world=world,
                )
                assert _equal(batch, want), (world, rank, step)
        shares = [src.val_batch(r, world) for r in range(world)]
        assert sum(v.support.x.shape[0] for v in shares) == src.val_size(world) == 4
    whole = ep.validation_batch(ss.read_task, ss.tasks("val"), cfg.data, seed=0, n=4)
    assert _equal(src.val_batch(0, 1), whole)
