"""SHELL: a pool of Ray actors that turn Arrow shards into episodes for the trainers.

- Partition: every task key of the shard set (all splits, sorted) has one owner actor,
  `index % n_actors`. An actor reads only the files its tasks live in, copies its own tasks'
  rows and drops the file cache, so it holds only its part. (A classify slot mixes N tasks;
  the slot goes to its first task's owner, which also caches the other N-1 tasks it reads.)
- Determinism: which tasks fill step t's meta-batch (`episodes.plan_step`) and each slot's
  episode (`episodes.slot_rng(seed, t, slot)`) are pure functions of (seed, t, slot) and the
  rows, so the batch is the same for any number of actors, workers or restarts.
- Flow: a trainer rank's `EpisodeStream` keeps `prefetch` steps requested ahead of the one it
  trains on. Each request is one actor call per owner involved; the episodes come back as
  ObjectRefs through the object store (numpy arrays, zero-copy reads), never via a queue actor.
- Faults: actors restart (`max_restarts`) and their calls are retried (`max_task_retries`);
  a restarted actor re-reads its tasks. A corrupt or missing shard file raises `ShardError`
  naming the file: application errors are not retried, so the run stops with that message.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import ray

from pipeline.config import ClusterConfig, DataConfig, OuterConfig
from pipeline.data import episodes as ep

ACTOR_MAX_RESTARTS = 4
ACTOR_MAX_TASK_RETRIES = 4


class EpisodeActor:
    """Owns a subset of tasks; builds the episodes of the slots it is asked for."""

    def __init__(self, uri: str, data_cfg: dict[str, Any], owned: Sequence[str]) -> None:
        self._cfg = DataConfig.model_validate(data_cfg)
        self._uri = uri
        self._owned = set(owned)
        self._rows: dict[str, dict[str, np.ndarray]] = {}
        self._set: Any = None

    def _shards(self) -> Any:
        if self._set is None:
            from pipeline.data.shards import open_shard_set

            self._set = open_shard_set(self._uri, s3_endpoint=self._cfg.s3_endpoint)
        return self._set

    def _read(self, task: str) -> dict[str, np.ndarray]:
        rows = self._rows.get(task)
        if rows is not None:
            return rows
        from pipeline.data import shards

        ss = self._shards()
        tasks = ss.manifest.tasks
        ss.rows(task)  # raises ShardError naming the set when it has no such task
        file = tasks[task].file
        # Load every owned task of this file at once, keep private copies, drop the file.
        wanted = {task} | {t for t in self._owned if t in tasks and tasks[t].file == file}
        for t in sorted(wanted - set(self._rows)):
            self._rows[t] = {k: np.array(v) for k, v in ss.read_task(t).items()}
        shards.clear_cache()
        return self._rows[task]

    def episodes(
        self, seed: int, step: int, slots: list[tuple[int, tuple[str, ...]]]
    ) -> list[ep.EpisodeBatch]:
        kind = self._cfg.episode
        return [
            ep.make_episode(kind, self._read, tasks, self._cfg, ep.slot_rng(seed, step, i))
            for i, tasks in slots
        ]

    def cached_tasks(self) -> list[str]:
        return sorted(self._rows)

    def pid(self) -> int:
        import os

        return os.getpid()


class EpisodePool:
    """The actors plus the pure plan of which slot goes where. Cheap to rebuild on a worker
    from the actor handles (`EpisodePool(..., actors=handles)`): only the manifest is read."""

    def __init__(
        self,
        data_cfg: DataConfig,
        cluster_cfg: ClusterConfig,
        outer_cfg: OuterConfig,
        *,
        actors: list[Any] | None = None,
    ) -> None:
        from pipeline.data.shards import open_shard_set

        self.data_cfg, self.cluster_cfg = data_cfg, cluster_cfg
        self.seed, self.meta_batch, self.val_tasks_n = (
            outer_cfg.seed,
            outer_cfg.meta_batch,
            outer_cfg.val_tasks,
        )
        ss = open_shard_set(data_cfg.uri, s3_endpoint=data_cfg.s3_endpoint)
        self.train_tasks = ss.tasks("train")
        self.val_tasks = ss.tasks("val")
        keys = sorted(ss.manifest.tasks)
        n = len(actors) if actors is not None else cluster_cfg.episode_actors
        self._owner = {k: i % n for i, k in enumerate(keys)}
        if actors is None:
            remote = ray.remote(EpisodeActor).options(
                num_cpus=cluster_cfg.episode_actor_cpus,
                max_restarts=ACTOR_MAX_RESTARTS,
                max_task_retries=ACTOR_MAX_TASK_RETRIES,
            )
            data = data_cfg.model_dump(mode="json")
            actors = [
                remote.remote(data_cfg.uri, data, [k for k in keys if self._owner[k] == a])
                for a in range(n)
            ]
        self.actors = actors

    def _n_way(self) -> int | None:
        return self.data_cfg.n_way if self.data_cfg.episode == "classify" else None

    def request(
        self,
        tasks: Sequence[str],
        step: int,
        batch: int,
        rank: int,
        world: int,
        seed: int | None = None,
    ) -> list[tuple[list[int], Any]]:
        """Ask the owners for rank `rank`'s slots of step `step`; returns (slots, ObjectRef)s."""
        seed = self.seed if seed is None else seed
        plan = ep.plan_step(tasks, seed, step, batch, self._n_way())
        mine = ep.worker_slice(list(range(batch)), rank, world)
        by_actor: dict[int, list[tuple[int, tuple[str, ...]]]] = {}
        for i in mine:
            by_actor.setdefault(self._owner[plan[i][0]], []).append((i, plan[i]))
        return [
            ([i for i, _ in slots], self.actors[a].episodes.remote(seed, step, slots))
            for a, slots in sorted(by_actor.items())
        ]

    @staticmethod
    def assemble(parts: list[tuple[list[int], Any]], got: list[list[ep.EpisodeBatch]]) -> Any:
        """Episodes back in slot order, collated into one numpy batch."""
        order: dict[int, ep.EpisodeBatch] = {}
        for (slots, _), episodes in zip(parts, got, strict=True):
            order.update(zip(slots, episodes, strict=True))
        return ep.collate([order[i] for i in sorted(order)])

    def stream(self, rank: int, world: int, start: int, stop: int) -> EpisodeStream:
        return EpisodeStream(self, rank, world, start, stop)

    def val_size(self, world: int) -> int:
        """`outer.val_tasks` rounded down to a multiple of `world` (equal shares per rank)."""
        return max(world, self.val_tasks_n - self.val_tasks_n % world)

    def val_batch(self, rank: int, world: int) -> Any:
        """Rank `rank`'s share of the fixed validation batch (the same at every validation,
        and the same episodes as `pipeline.local_train.validation_batch`)."""
        from pipeline.local_train import VAL_SEED_OFFSET

        n, seed = self.val_size(world), self.seed + VAL_SEED_OFFSET
        parts = self.request(self.val_tasks, 0, n, rank, world, seed=seed)
        return self.assemble(parts, ray.get([ref for _, ref in parts]))


class EpisodeStream:
    """Rank `rank`'s batches for steps `start..stop-1`, `prefetch` steps requested ahead.

    `wait_s` accumulates the time `next()` spent blocked on episodes (the data stall)."""

    def __init__(self, pool: EpisodePool, rank: int, world: int, start: int, stop: int) -> None:
        self._pool, self._rank, self._world = pool, rank, world
        self._next, self._stop = start, stop
        self._pending: deque[tuple[int, list[tuple[list[int], Any]]]] = deque()
        self.wait_s = 0.0

    def _fill(self) -> None:
        while len(self._pending) < self._pool.cluster_cfg.prefetch and self._next < self._stop:
            parts = self._pool.request(
                self._pool.train_tasks, self._next, self._pool.meta_batch, self._rank, self._world
            )
            self._pending.append((self._next, parts))
            self._next += 1

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        return self

    def __next__(self) -> tuple[int, Any]:
        self._fill()
        if not self._pending:
            raise StopIteration
        step, parts = self._pending.popleft()
        self._fill()  # keep `prefetch` requests in flight while this step trains
        t0 = time.perf_counter()
        got = ray.get([ref for _, ref in parts])
        self.wait_s += time.perf_counter() - t0
        return step, EpisodePool.assemble(parts, got)
