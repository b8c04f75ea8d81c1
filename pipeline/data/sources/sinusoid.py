"""The MAML sinusoid regression benchmark (Finn et al., 2017).

Each task: amplitude A ~ U[0.1, 5], phase p ~ U[0, pi]; each row one point x ~ U[-5, 5],
y = A sin(x - p). Task `i` of a split is drawn from its own generator seeded by
`(seed, split, i)`, so it does not change when other splits grow or shrink.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from pipeline.data.sources import Prepared, SourceTask
from pipeline.errors import ShardError

FAMILY = "sinusoid"
AMPLITUDE = (0.1, 5.0)
PHASE = (0.0, float(np.pi))
X_RANGE = (-5.0, 5.0)
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def make_task(seed: int, split: str, index: int, points: int) -> SourceTask:
    rng = np.random.default_rng([seed, _SPLIT_IDS[split], index])
    amplitude = float(rng.uniform(*AMPLITUDE))
    phase = float(rng.uniform(*PHASE))
    x = rng.uniform(*X_RANGE, size=points).astype(np.float32)
    y = (amplitude * np.sin(x.astype(np.float64) - phase)).astype(np.float32)
    table = pa.Table.from_arrays([pa.array(x), pa.array(y)], names=["x", "y"])  # fast path
    return SourceTask(
        f"{split}-{index:06d}", split, table, {"amplitude": amplitude, "phase": phase}
    )


def _tasks(counts: dict[str, int], points: int, seed: int) -> Iterator[SourceTask]:
    for split, n in counts.items():
        for i in range(n):
            yield make_task(seed, split, i, points)


def prepare(
    *,
    train_tasks: int = 1000,
    val_tasks: int = 100,
    test_tasks: int = 100,
    points: int = 50,
    seed: int = 0,
) -> Prepared:
    counts = {"train": train_tasks, "val": val_tasks, "test": test_tasks}
    for split, n in counts.items():
        if not isinstance(n, int) or n < 1:
            raise ShardError(
                f"sinusoid: --{split}-tasks={n} leaves no {split} tasks: every shard set needs "
                f"train, val and test tasks; pass --{split}-tasks N with N >= 1"
            )
    if not isinstance(points, int) or points < 2:
        raise ShardError(
            f"sinusoid: --points={points}: a task needs at least 2 points (support and query); "
            "pass e.g. --points 50"
        )
    params = {**counts, "points": points, "seed": seed}
    build = {"source": "sinusoid", "params": params, "seed": seed, "versions": {}}
    hint = "pass --train-tasks/--val-tasks/--test-tasks N with N >= 1"
    return Prepared(FAMILY, _tasks(counts, points, seed), build, hint)
