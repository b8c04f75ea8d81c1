"""SHELL: a pool of Ray actors that turn Arrow shards into episodes for the trainers.

- Partition: every task key of the shard set (all splits, sorted) has one owner actor,
  `index % n_actors`. An actor reads only the files its tasks live in, copies its own tasks'
  rows and drops the file cache, so it holds only its part. (A classify slot mixes N tasks;
  the slot goes to its first task's owner, which also caches the other N-1 tasks it reads.)
- Determinism: which tasks fill step t's meta-batch (`episodes.plan_step`) and each slot's
  episode (`episodes.slot_rng(seed, t, slot)`) are pure functions of (seed, t, slot) and the
  rows, so the batch is the same for any number of actors, workers or restarts.
- Flow: a trainer rank's `EpisodeStream` requests steps in chunks (`episodes_per_request`) and
  keeps `prefetch` chunks in flight ahead of the step it trains on. A chunk is one actor call
  per owner involved; the episodes come back as ObjectRefs through the object store (numpy
  arrays, zero-copy reads), never through a queue actor.
- `cluster.episode_actors=0`: no pool; `episode_source` gives each rank a `LocalEpisodes`
  (`episode_local.py`) that builds the same batches in-process.
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
from pipeline.runtime.episode_local import EpisodePlan, LocalEpisodes, val_size

# One actor call: ([(step, slot indices)], ObjectRef of [EpisodeBatch per step]).
Call = tuple[list[tuple[int, list[int]]], Any]
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
        self, seed: int, jobs: list[tuple[int, list[tuple[int, tuple[str, ...]]]]]
    ) -> list[ep.EpisodeBatch]:
        """For each `(step, slots)`: the slots' episodes stacked in the given order, untrimmed
        (the trainer joins all owners' parts, then trims). A few arrays per step, not per
        episode, and several steps per call: the call overhead is paid once per chunk."""
        kind = self._cfg.episode
        return [
            ep.collate(
                [
                    ep.make_episode(kind, self._read, tasks, self._cfg, ep.slot_rng(seed, step, i))
                    for i, tasks in slots
                ],
                trim_padding=False,
            )
            for step, slots in jobs
        ]

    def cached_tasks(self) -> list[str]:
        return sorted(self._rows)

    def pid(self) -> int:
        import os

        return os.getpid()


class EpisodePool(EpisodePlan):
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
        super().__init__(data_cfg, cluster_cfg, outer_cfg)
        keys = sorted(self._set.manifest.tasks)
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
        steps: Sequence[int],
        batch: int,
        rank: int,
        world: int,
        seed: int | None = None,
    ) -> list[Call]:
        """Ask the owners for rank `rank`'s slots of `steps`: one actor call per owner."""
        seed = self.seed if seed is None else seed
        mine = ep.worker_slice(list(range(batch)), rank, world)
        by_actor: dict[int, dict[int, list[tuple[int, tuple[str, ...]]]]] = {}
        for step in steps:
            plan = ep.plan_step(tasks, seed, step, batch, self._n_way())
            for i in mine:
                owner = by_actor.setdefault(self._owner[plan[i][0]], {})
                owner.setdefault(step, []).append((i, plan[i]))
        calls = []
        for a, per_step in sorted(by_actor.items()):
            jobs = sorted(per_step.items())
            index = [(step, [i for i, _ in slots]) for step, slots in jobs]
            calls.append((index, self.actors[a].episodes.remote(seed, jobs)))
        return calls

    @staticmethod
    def assemble(calls: list[Call], got: list[list[ep.EpisodeBatch]]) -> dict[int, Any]:
        """Step -> that step's batch: the owners' parts joined in slot order, then trimmed."""
        parts: dict[int, list[tuple[list[int], ep.EpisodeBatch]]] = {}
        for (index, _), batches in zip(calls, got, strict=True):
            for (step, slots), b in zip(index, batches, strict=True):
                parts.setdefault(step, []).append((slots, b))
        return {step: _owned(ep.trim(_join(p))) for step, p in sorted(parts.items())}

    def stream(self, rank: int, world: int, start: int, stop: int) -> EpisodeStream:
        return EpisodeStream(self, rank, world, start, stop)

    def val_size(self, world: int) -> int:
        """`outer.val_tasks` rounded down to a multiple of `world` (equal shares per rank)."""
        return val_size(self.val_tasks_n, world)

    def val_batch(self, rank: int, world: int) -> Any:
        """Rank `rank`'s share of the fixed validation batch (the same at every validation,
        and the same episodes as `episodes.validation_batch`)."""
        n, seed = self.val_size(world), self.seed + ep.VAL_SEED_OFFSET
        calls = self.request(self.val_tasks, [0], n, rank, world, seed=seed)
        return self.assemble(calls, ray.get([ref for _, ref in calls]))[0]


def episode_source(
    data_cfg: DataConfig,
    cluster_cfg: ClusterConfig,
    outer_cfg: OuterConfig,
    *,
    actors: list[Any] | None = None,
) -> EpisodePool | LocalEpisodes:
    """Where a trainer rank's episodes come from: `cluster.episode_actors=0` -> built in this
    process (`LocalEpisodes`, no actor); else the pool of `actors` (the handles the driver
    started), or a private pool when none were handed over. Same batches either way."""
    if cluster_cfg.episode_actors == 0:
        return LocalEpisodes(data_cfg, cluster_cfg, outer_cfg)
    return EpisodePool(data_cfg, cluster_cfg, outer_cfg, actors=actors or None)


def _join(parts: list[tuple[list[int], ep.EpisodeBatch]]) -> ep.EpisodeBatch:
    if len(parts) == 1:
        return parts[0][1]
    order = np.argsort([i for slots, _ in parts for i in slots], kind="stable")
    got = [b for _, b in parts]

    def join(split: int) -> ep.Split:
        return ep.Split(
            *(np.concatenate(xs)[order] for xs in zip(*(b[split] for b in got), strict=True))
        )

    tasks = [t for b in got for t in b.tasks]
    return ep.EpisodeBatch(join(0), join(1), tuple(tasks[i] for i in order))


def _owned(b: ep.EpisodeBatch) -> ep.EpisodeBatch:
    """Writable arrays: object-store reads are read-only views, which torch warns about."""

    def own(split: ep.Split) -> ep.Split:
        return ep.Split(*(a if a.flags.writeable else a.copy() for a in split))

    return ep.EpisodeBatch(own(b.support), own(b.query), b.tasks)


class EpisodeStream:
    """Rank `rank`'s batches for steps `start..stop-1`. Steps are requested in chunks of
    about `cluster.episodes_per_request` episodes, `cluster.prefetch` chunks ahead of the step
    being trained, so memory holds at most (prefetch + 1) chunks.

    `wait_s` accumulates the time `next()` spent blocked on episodes (the data stall)."""

    def __init__(self, pool: EpisodePool, rank: int, world: int, start: int, stop: int) -> None:
        self._pool, self._rank, self._world = pool, rank, world
        self._next, self._stop = start, stop
        per_rank = max(1, pool.meta_batch // world)
        self._chunk = max(1, -(-pool.cluster_cfg.episodes_per_request // per_rank))
        self._pending: deque[list[Call]] = deque()
        self._ready: deque[tuple[int, Any]] = deque()
        self.wait_s = 0.0

    def _fill(self) -> None:
        while len(self._pending) < self._pool.cluster_cfg.prefetch and self._next < self._stop:
            steps = range(self._next, min(self._next + self._chunk, self._stop))
            p = self._pool
            self._pending.append(
                p.request(p.train_tasks, steps, p.meta_batch, self._rank, self._world)
            )
            self._next = steps.stop

    def __iter__(self) -> Iterator[tuple[int, Any]]:
        return self

    def __next__(self) -> tuple[int, Any]:
        if not self._ready:
            self._fill()
            if not self._pending:
                raise StopIteration
            calls = self._pending.popleft()
            self._fill()  # keep `prefetch` chunks in flight while these steps train
            t0 = time.perf_counter()
            got = ray.get([ref for _, ref in calls])
            self.wait_s += time.perf_counter() - t0
            self._ready.extend(EpisodePool.assemble(calls, got).items())
        return self._ready.popleft()
