"""PURE episode building: rows of a task -> support/query splits, seeded, batched.

numpy only (torch is imported lazily by `to_torch`). Shapes follow docs/CONTRACTS.md:
- regression: x, y float32 `[T, K, 1]`, mask float32 `[T, K]`
- lm: x int64 `[T, K, L]` (BOS + bytes), y int64 `[T, K, L]` (bytes + EOS), mask `[T, K, L]`
- classify: x int64 `[T, N*K, L]`, y int64 `[T, N*K]` (labels remapped per episode),
  mask `[T, N*K, L]`

Determinism: step t's global meta-batch is a pure function of (seed, t) (`plan_step`) and
slot i's episode a pure function of (seed, t, i) and the rows (`slot_rng`). Worker r of W
takes slots `[r*B/W, (r+1)*B/W)`, so the data never depends on how many workers there are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from pipeline.errors import EpisodeError

if TYPE_CHECKING:  # the slice's type only: building episodes needs numpy alone
    from pipeline.config import DataConfig

BOS, EOS, PAD = 256, 257, 258
VOCAB = 259
UNIFORM_BPB = math.log2(VOCAB)  # a uniform guess over the 259 symbols: 8.02 bits per byte
# Validation episodes use their own seed stream (seed + this), fixed across training steps.
VAL_SEED_OFFSET = 1_000_003
Rows = dict[str, np.ndarray]


class Split(NamedTuple):
    x: Any
    y: Any
    mask: Any


class EpisodeBatch(NamedTuple):
    support: Split
    query: Split
    # Each episode's task keys (one, or the N classes in label order), so that nobody
    # re-derives them from the step plan; () where unknown (hand-built batches).
    tasks: tuple[tuple[str, ...], ...] = ()

    @property
    def keys(self) -> list[str]:
        """One key per episode: the task, or `a+b+c` for an N-way episode."""
        return ["+".join(t) for t in self.tasks]


# ---------------------------------------------------------------- determinism
def slot_rng(seed: int, step: int, slot: int) -> np.random.Generator:
    """The generator of slot `slot` of step `step`: independent of workers and order."""
    return np.random.default_rng([seed, step, slot, 0x5107])


def plan_step(
    train_tasks: Sequence[str], seed: int, step: int, meta_batch: int, n_way: int | None = None
) -> list[tuple[str, ...]]:
    """Tasks of each slot of step `step`'s global meta-batch: 1 task per slot, or `n_way`
    distinct tasks (classify; their order is the label order: labels are remapped per episode)."""
    if not train_tasks:
        raise EpisodeError("plan_step: no tasks to sample from; check the shard set's split")
    rng = np.random.default_rng([seed, step, 0x91A7])
    n = len(train_tasks)
    if n_way is None:
        idx = rng.integers(0, n, size=meta_batch)
        return [(train_tasks[i],) for i in idx]
    if n_way > n:
        raise EpisodeError(f"plan_step: n_way={n_way} but only {n} tasks; lower data.n_way")
    return [
        tuple(train_tasks[i] for i in rng.choice(n, n_way, replace=False))
        for _ in range(meta_batch)
    ]


def worker_slice(slots: Sequence[Any], rank: int, world: int) -> list[Any]:
    """Worker `rank` of `world` takes slots `[rank*B/W, (rank+1)*B/W)`."""
    b = len(slots)
    if b % world:
        raise EpisodeError(f"meta-batch {b} is not divisible by {world} workers")
    per = b // world
    return list(slots[rank * per : (rank + 1) * per])


# ---------------------------------------------------------------- byte encoding
def encode(texts: Sequence[str], max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """UTF-8 bytes -> x (BOS + bytes), y (bytes + EOS), mask; `[n, max_len]`, PAD-filled.
    Words longer than `max_len - 1` bytes are cut there (EOS then marks the cut)."""
    n = len(texts)
    x = np.full((n, max_len), PAD, np.int64)
    y = np.full((n, max_len), PAD, np.int64)
    mask = np.zeros((n, max_len), np.float32)
    for i, t in enumerate(texts):
        b = np.frombuffer(str(t).encode("utf-8")[: max_len - 1], np.uint8).astype(np.int64)
        m = len(b) + 1
        x[i, 0] = BOS
        x[i, 1:m] = b
        y[i, : m - 1] = b
        y[i, m - 1] = EOS
        mask[i, :m] = 1.0
    return x, y, mask


def _choose(rng: np.random.Generator, n_rows: int, need: int, task: str, what: str) -> np.ndarray:
    if n_rows < need:
        raise EpisodeError(
            f"task {task!r} has {n_rows} rows but the episode needs {need} ({what}); "
            "lower data.k_support/data.k_query or rebuild the shards with more rows per task"
        )
    return rng.choice(n_rows, need, replace=False)


def _distinct_text(rows: Rows) -> np.ndarray:
    # Query words must be disjoint from support words: sample among distinct texts.
    return np.unique(np.asarray(rows["text"], dtype=object).astype(str))


# ---------------------------------------------------------------- one episode
def regression_episode(
    rows: Rows, k: int, q: int, rng: np.random.Generator, task: str = "?"
) -> EpisodeBatch:
    idx = _choose(rng, len(rows["x"]), k + q, task, f"{k} support + {q} query points")
    x = np.asarray(rows["x"], np.float32)[idx, None]
    y = np.asarray(rows["y"], np.float32)[idx, None]
    ones = np.ones(k + q, np.float32)
    return EpisodeBatch(Split(x[:k], y[:k], ones[:k]), Split(x[k:], y[k:], ones[k:]))


def lm_episode(
    rows: Rows, k: int, q: int, max_len: int, rng: np.random.Generator, task: str = "?"
) -> EpisodeBatch:
    words = _distinct_text(rows)
    idx = _choose(rng, len(words), k + q, task, f"{k} support + {q} query distinct words")
    x, y, m = encode(list(words[idx]), max_len)
    return EpisodeBatch(Split(x[:k], y[:k], m[:k]), Split(x[k:], y[k:], m[k:]))


def classify_episode(
    rows_per_class: Sequence[Rows],
    k: int,
    q: int,
    max_len: int,
    rng: np.random.Generator,
    tasks: Sequence[str] = (),
) -> EpisodeBatch:
    """N classes (one task each, label = position in the list), K support + Q query each."""
    sx, sy, qx, qy = [], [], [], []
    for label, rows in enumerate(rows_per_class):
        name = tasks[label] if label < len(tasks) else str(label)
        words = _distinct_text(rows)
        idx = _choose(rng, len(words), k + q, name, f"{k} support + {q} query examples")
        sx += list(words[idx[:k]])
        qx += list(words[idx[k:]])
        sy += [label] * k
        qy += [label] * q
    xs, _, ms = encode(sx, max_len)
    xq, _, mq = encode(qx, max_len)
    return EpisodeBatch(
        Split(xs, np.asarray(sy, np.int64), ms), Split(xq, np.asarray(qy, np.int64), mq)
    )


# ---------------------------------------------------------------- batches
def trim(batch: EpisodeBatch) -> EpisodeBatch:
    """Cut sequences to the longest valid length in the batch: padding costs recurrent steps;
    results are unchanged because padding is masked and the classifier reads the last valid
    position. THE one place padding is trimmed (`collate`, the episode actors' joined parts)."""
    s, q = batch.support, batch.query
    if s.mask.ndim != 3:
        return batch
    n = int(max(s.mask.sum(-1).max(), q.mask.sum(-1).max(), 1))
    lm = s.y.ndim == 3
    return EpisodeBatch(
        Split(s.x[..., :n], s.y[..., :n] if lm else s.y, s.mask[..., :n]),
        Split(q.x[..., :n], q.y[..., :n] if lm else q.y, q.mask[..., :n]),
        batch.tasks,
    )


def collate(episodes: Sequence[EpisodeBatch], trim_padding: bool = True) -> EpisodeBatch:
    """Stack episodes into one batch (leading dim T), their task keys in order; with
    `trim_padding`, `trim` it."""
    if not episodes:
        raise EpisodeError("collate: no episodes")

    def stack(part: int) -> Split:
        xs = np.stack([e[part].x for e in episodes])
        ys = np.stack([e[part].y for e in episodes])
        ms = np.stack([e[part].mask for e in episodes])
        return Split(xs, ys, ms)

    out = EpisodeBatch(stack(0), stack(1), tuple(t for e in episodes for t in e.tasks))
    return trim(out) if trim_padding else out


def make_episode(
    kind: str,
    read_task: Callable[[str], Rows],
    slot: tuple[str, ...],
    data_cfg: DataConfig,
    rng: np.random.Generator,
) -> EpisodeBatch:
    """One episode of `slot`'s task(s), carrying the slot as its task keys."""
    k, q = data_cfg.k_support, data_cfg.k_query
    if kind == "regression":
        one = regression_episode(read_task(slot[0]), k, q, rng, slot[0])
    elif kind == "lm":
        one = lm_episode(read_task(slot[0]), k, q, data_cfg.max_len, rng, slot[0])
    elif kind == "classify":
        one = classify_episode([read_task(t) for t in slot], k, q, data_cfg.max_len, rng, slot)
    else:
        raise EpisodeError(f"episode kind {kind!r}: use regression, lm or classify")
    return one._replace(tasks=(tuple(slot),))


def build_step(
    read_task: Callable[[str], Rows],
    train_tasks: Sequence[str],
    data_cfg: DataConfig,
    *,
    seed: int,
    step: int,
    meta_batch: int,
    rank: int = 0,
    world: int = 1,
) -> EpisodeBatch:
    """Worker `rank`'s slice of step `step`'s global meta-batch, as one numpy batch."""
    kind = data_cfg.episode
    slots = plan_step(
        train_tasks, seed, step, meta_batch, data_cfg.n_way if kind == "classify" else None
    )
    mine = worker_slice(list(range(meta_batch)), rank, world)
    eps = [make_episode(kind, read_task, slots[i], data_cfg, slot_rng(seed, step, i)) for i in mine]
    return collate(eps)


def validation_batch(
    read_task: Callable[[str], Rows],
    val_tasks: Sequence[str],
    data_cfg: DataConfig,
    *,
    seed: int,
    n: int,
) -> EpisodeBatch:
    """The fixed validation batch of a run seeded `seed` (`outer.seed`): `n` episodes
    (`outer.val_tasks`) of its own seed stream, the same at every validation. Training
    (single-process and the episode actors' share) and evaluation's baseline selection
    score on it."""
    return build_step(
        read_task, val_tasks, data_cfg, seed=seed + VAL_SEED_OFFSET, step=0, meta_batch=n
    )


def to_torch(batch: EpisodeBatch, device: Any = "cpu") -> EpisodeBatch:
    import torch

    def conv(s: Split) -> Split:
        return Split(*(torch.as_tensor(np.ascontiguousarray(a)).to(device) for a in s))

    return EpisodeBatch(conv(batch.support), conv(batch.query), batch.tasks)
