"""The single-process loop over a shard-set-like source (rows built in memory)."""

import numpy as np
import pytest

from pipeline import config
from pipeline.errors import EpisodeError
from pipeline.local_train import slices, train

ONE_THREAD = ["cluster.threads_per_worker=1"]  # tiny tensors; shared 2-core machine


class MemorySource:
    """Same two methods as pipeline.data.shards.ShardSet."""

    def __init__(self, rows: dict[str, dict[str, np.ndarray]], splits: dict[str, list[str]]):
        self._rows, self._splits = rows, splits

    def tasks(self, split):
        return sorted(self._splits[split])

    def read_task(self, task):
        return self._rows[task]


def sine_source(n_train=200, n_val=20, points=40):
    rows, splits = {}, {"train": [], "val": [], "test": []}
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            rng = np.random.default_rng([7, len(split), i])
            a, p = rng.uniform(0.1, 5), rng.uniform(0, np.pi)
            x = rng.uniform(-5, 5, points).astype(np.float32)
            rows[f"{split}-{i}"] = {"x": x, "y": (a * np.sin(x - p)).astype(np.float32)}
            splits[split].append(f"{split}-{i}")
    return MemorySource(rows, splits)


def word_source():
    rng = np.random.default_rng(0)
    rows, splits = {}, {"train": [], "val": [], "test": []}
    for i, split in enumerate(["train"] * 4 + ["val"] * 2):
        letters = "abcdefgh"[i : i + 3]
        words = {"".join(rng.choice(list(letters), rng.integers(2, 7))) for _ in range(200)}
        rows[f"lang{i}"] = {
            "text": np.array(sorted(words), dtype=object),
            "freq": np.ones(len(words), np.float32),
        }
        splits[split].append(f"lang{i}")
    return MemorySource(rows, splits)


def test_sinusoid_loop_lowers_validation_loss_and_is_deterministic():
    cfg = config.load(
        None,
        ONE_THREAD
        + [
            "model.kind=mlp",
            "model.hidden=40",
            "model.layers=2",
            "data.episode=regression",
            "data.k_support=10",
            "data.k_query=10",
            "outer.meta_batch=10",
            "outer.val_every=150",
            "outer.val_tasks=50",
        ],
    )
    res = train(**slices(cfg), source=sine_source(), steps=300)
    first, last = res.val[0], res.val[-1]
    assert last["val_loss_1"] < last["val_loss_0"]
    assert res.history[-1]["step"] == 299 and res.tasks_per_s > 0
    again = train(**slices(cfg), source=sine_source(), steps=3)
    assert [h["loss_post"] for h in again.history] == [h["loss_post"] for h in res.history[:3]]
    assert first["step"] == 150


def test_byte_lm_loop_runs_on_words_and_improves():
    cfg = config.load(
        None,
        ONE_THREAD
        + [
            "model.hidden=16",
            "model.embed=8",
            "inner.lr=0.5",
            "outer.lr=0.01",
            "outer.meta_batch=4",
            "data.k_support=8",
            "data.k_query=8",
            "outer.val_every=40",
            "outer.val_tasks=4",
        ],
    )
    res = train(**slices(cfg), source=word_source(), steps=40, eval_steps=(0, 1))
    assert res.val[-1]["val_loss_1"] < np.log(259)  # better than uniform over bytes


def test_too_few_rows_is_an_episode_error():
    cfg = config.load(
        None, ["model.kind=mlp", "data.episode=regression", "data.k_support=30", "data.k_query=30"]
    )
    with pytest.raises(EpisodeError, match="has 40 rows but the episode needs 60"):
        train(**slices(cfg), source=sine_source(points=40), steps=1)
