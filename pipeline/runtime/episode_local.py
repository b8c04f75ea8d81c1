"""SHELL: in-worker episodes (`cluster.episode_actors=0`): each Train worker builds its own
slices from the shards with the pure `episodes.build_step`, as `local_train` does, instead of
asking episode actors.

Same interface as `EpisodePool` where the trainer uses it (`train_tasks`, `val_tasks`,
`val_size`, `val_batch`, `stream`, `actors`), and the same batches: which tasks fill a step
and each slot's episode are pure functions of (seed, step, slot) and the rows
(docs/CONTRACTS.md, determinism), so a run's losses do not depend on where episodes are built.
No actor process is started, which is what a short run or a sweep trial on a small machine
pays for most; the price is that building a step's episodes is no longer overlapped with
training (the stream's `wait_s` is the time spent building them). No Ray here.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from typing import Any

from pipeline.config import ClusterConfig, DataConfig, OuterConfig
from pipeline.data import episodes as ep

TASK_CACHE = 4096  # tasks whose rows a rank keeps at hand


TASK_CACHE = 4096  # tasks whose rows a rank keeps at hand


def val_size(val_tasks: int, world: int) -> int:
    """`outer.val_tasks` rounded down to a multiple of `world` (equal shares per rank)."""
    return max(world, val_tasks - val_tasks % world)


class EpisodePlan:
    """What every episode source knows: the configs, the seed and batch sizes, the shard set
    and its train and validation tasks (the pure plan `ep.build_step` follows)."""

    def __init__(
        self, data_cfg: DataConfig, cluster_cfg: ClusterConfig, outer_cfg: OuterConfig
    ) -> None:
        from pipeline.data.shards import open_shard_set

        self.data_cfg, self.cluster_cfg = data_cfg, cluster_cfg
        self.seed, self.meta_batch, self.val_tasks_n = (
            outer_cfg.seed,
            outer_cfg.meta_batch,
            outer_cfg.val_tasks,
        )
        self._set = open_shard_set(data_cfg.uri, s3_endpoint=data_cfg.s3_endpoint)
        self.train_tasks = self._set.tasks("train")
        self.val_tasks = self._set.tasks("val")


class LocalEpisodes(EpisodePlan):
    """This process's episodes, read from the shard set at `data.uri` (files cached by
    `pipeline.data.shards`, verified on first read)."""

    def __init__(
        self, data_cfg: DataConfig, cluster_cfg: ClusterConfig, outer_cfg: OuterConfig
    ) -> None:
        super().__init__(data_cfg, cluster_cfg, outer_cfg)
        # read_task's views of the cached files, per task: a hit skips the manifest and cache
        # look-ups (~12% of a small step's build time); bounded like local_train's reader.
        self._read = functools.lru_cache(maxsize=TASK_CACHE)(self._set.read_task)

    @property
    def actors(self) -> list[Any]:
        """None: nothing to hand to the workers or to release."""
        return []

    def batch(
        self, tasks: list[str], step: int, batch: int, rank: int, world: int, seed: int
    ) -> ep.EpisodeBatch:
        """Rank `rank`'s slice of step `step` (what `EpisodePool.request` + `assemble` give)."""
        return ep.build_step(
            self._read,
            tasks,
            self.data_cfg,
            seed=seed,
            step=step,
            meta_batch=batch,
            rank=rank,
            world=world,
        )

    def stream(self, rank: int, world: int, start: int, stop: int) -> LocalStream:
        return LocalStream(self, rank, world, start, stop)

    def val_size(self, world: int) -> int:
        return val_size(self.val_tasks_n, world)

    def val_batch(self, rank: int, world: int) -> ep.EpisodeBatch:
        """Rank `rank`'s share of the fixed validation batch (`EpisodePool.val_batch`'s)."""
        n, seed = self.val_size(world), self.seed + ep.VAL_SEED_OFFSET
        return self.batch(self.val_tasks, 0, n, rank, world, seed)


class LocalStream:
    """Rank `rank`'s batches for steps `start..stop-1`, built when asked for; `wait_s`
    accumulates the building time (all of it stalls training: nothing runs ahead)."""

    def __init__(self, source: LocalEpisodes, rank: int, world: int, start: int, stop: int):
        self._source, self._rank, self._world = source, rank, world
        self._next, self._stop = start, stop
        self.wait_s = 0.0

    def __iter__(self) -> Iterator[tuple[int, ep.EpisodeBatch]]:
        return self

    def __next__(self) -> tuple[int, ep.EpisodeBatch]:
        if self._next >= self._stop:
            raise StopIteration
        step, s = self._next, self._source
        t0 = time.perf_counter()
        batch = s.batch(s.train_tasks, step, s.meta_batch, self._rank, self._world, s.seed)
        self.wait_s += time.perf_counter() - t0
        self._next += 1
        return step, batch
