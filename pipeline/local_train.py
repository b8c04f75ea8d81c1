"""Single-process meta-training (no Ray) over a shard set.

Used by tests and as the baseline that measures Ray's overhead: it builds each step's
batch with the same `episodes.build_step` (same seed -> same tasks) and calls the same
`outer.train_step` the Ray Train worker calls, with `world=1`.

    .venv/bin/python -m pipeline.local_train [config.yaml] [section.key=value ...]
"""

from __future__ import annotations

import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from torch import nn

from pipeline.data import episodes as ep
from pipeline.meta import outer
from pipeline.models import build_model
from pipeline.runtime.heap import reuse_freed_memory

if TYPE_CHECKING:  # typed slices; importing the core needs no pydantic
    from pipeline.config import DataConfig, InnerConfig, ModelConfig, OuterConfig, RunConfig


class TaskSource(Protocol):
    """What the loop needs from a shard set (`pipeline.data.shards.ShardSet` fits)."""

    def tasks(self, split: str) -> list[str]: ...
    def read_task(self, task: str) -> dict[str, np.ndarray]: ...


@dataclass
class LocalResult:
    state: outer.MetaState
    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)  # one row per meta-step
    val: list[dict[str, float]] = field(default_factory=list)  # one row per validation
    seconds: float = 0.0

    @property
    def tasks_per_s(self) -> float:
        steps = len(self.history)
        return steps * self.history[0]["tasks"] / self.seconds if steps and self.seconds else 0.0


def cached_reader(source: TaskSource, max_tasks: int = 4096) -> Callable[[str], dict]:
    """`read_task` with a small LRU, so hot tasks are not re-sliced every step."""
    cache: OrderedDict[str, dict] = OrderedDict()

    def read(task: str) -> dict:
        rows = cache.get(task)
        if rows is None:
            rows = source.read_task(task)
            cache[task] = rows
            if len(cache) > max_tasks:
                cache.popitem(last=False)
        else:
            cache.move_to_end(task)
        return rows

    return read


def train(
    data: DataConfig,
    model_cfg: ModelConfig,
    inner: InnerConfig,
    outer_cfg: OuterConfig,
    *,
    threads: int | None = None,
    malloc_reuse_mb: int = 0,
    source: TaskSource | None = None,
    steps: int | None = None,
    log: Callable[[str], None] | None = None,
    eval_steps: tuple[int, ...] = (0, 1),
) -> LocalResult:
    """Meta-train for `steps` (default `outer_cfg.steps`) meta-steps; `threads`: torch threads
    (a run's `cluster.threads_per_worker`); `malloc_reuse_mb`: `cluster.malloc_reuse_mb` (0:
    glibc's defaults); `source`: default the shard set at `data.uri`."""
    if threads:
        torch.set_num_threads(threads)
    reuse_freed_memory(malloc_reuse_mb)  # as a Train worker does
    if source is None:
        from pipeline.data.shards import open_shard_set

        source = open_shard_set(data.uri, s3_endpoint=data.s3_endpoint)
    read = cached_reader(source)
    train_tasks, val_tasks = source.tasks("train"), source.tasks("val")
    model = build_model(model_cfg, data)
    state = outer.init_state(model, inner, outer_cfg, seed=outer_cfg.seed)
    val = None
    if val_tasks:
        val = ep.to_torch(
            ep.validation_batch(read, val_tasks, data, seed=outer_cfg.seed, n=outer_cfg.val_tasks)
        )
    result = LocalResult(state, model)
    total = outer_cfg.steps if steps is None else steps
    start = time.perf_counter()
    for step in range(total):
        batch = ep.build_step(
            read, train_tasks, data, seed=outer_cfg.seed, step=step, meta_batch=outer_cfg.meta_batch
        )
        state, metrics = outer.train_step(
            state, ep.to_torch(batch), model=model, inner_cfg=inner, outer_cfg=outer_cfg
        )
        result.history.append({"step": step, "tasks": outer_cfg.meta_batch, **metrics})
        if val is not None and ((step + 1) % outer_cfg.val_every == 0 or step + 1 == total):
            losses = outer.evaluate(
                state,
                val,
                model=model,
                inner_cfg=inner,
                steps=list(eval_steps),
                chunk=outer_cfg.chunk,
                support_floor=outer_cfg.val_support_floor,
            )
            row = {"step": step + 1, **{f"val_loss_{k}": v for k, v in losses.items()}}
            result.val.append(row)
            if log:
                log(" ".join(f"{k}={v:.4g}" for k, v in row.items()))
    result.seconds = time.perf_counter() - start
    result.state = state
    return result


def slices(cfg: RunConfig) -> dict[str, Any]:
    """A run config's slices as `train`'s arguments: `train(**slices(cfg), steps=...)`."""
    return {
        "data": cfg.data,
        "model_cfg": cfg.model,
        "inner": cfg.inner,
        "outer_cfg": cfg.outer,
        "threads": cfg.cluster.threads_per_worker,
        "malloc_reuse_mb": cfg.cluster.malloc_reuse_mb,
    }


def main(argv: list[str] | None = None) -> int:
    from pipeline import config
    from pipeline.errors import MetarayError

    args = list(sys.argv[1:] if argv is None else argv)
    path = args.pop(0) if args and "=" not in args[0] else None
    try:
        cfg = config.load(path, args)
        res = train(**slices(cfg), log=print)
    except config.ConfigError as exc:  # the message names the file and the fix: no traceback
        print(f"local_train: config error: {exc}", file=sys.stderr)
        return 2
    except MetarayError as exc:
        print(f"local_train: {exc}", file=sys.stderr)
        return 1
    print(f"{len(res.history)} meta-steps in {res.seconds:.1f} s ({res.tasks_per_s:.0f} tasks/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
