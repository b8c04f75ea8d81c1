"""Episodes: shapes and masks, disjoint support/query, labels per episode, seeded plans."""

import numpy as np
import pytest
import torch

from pipeline.config import DataConfig
from pipeline.data import episodes as ep
from pipeline.errors import EpisodeError

WORDS = [f"w{i}" for i in range(40)] + ["naïve", "x" * 50]


def _rows(words=WORDS):
    return {"text": np.array(words, dtype=object), "freq": np.ones(len(words), np.float32)}


def _sine(n=30, seed=0):
    x = np.random.default_rng(seed).uniform(-5, 5, n).astype(np.float32)
    return {"x": x, "y": np.sin(x).astype(np.float32)}


def test_encode_bos_eos_pad_mask_and_cut():
    x, y, m = ep.encode(["ab", "é", "abcdefgh"], max_len=5)
    assert x[0].tolist() == [ep.BOS, 97, 98, ep.PAD, ep.PAD]
    assert y[0].tolist() == [97, 98, ep.EOS, ep.PAD, ep.PAD]
    assert m[0].tolist() == [1, 1, 1, 0, 0]
    assert x[1, 1:3].tolist() == list("é".encode())  # UTF-8 bytes, 2 of them
    assert x[2].tolist() == [ep.BOS, 97, 98, 99, 100] and m[2].sum() == 5  # cut at max_len


def test_lm_episode_support_and_query_words_are_disjoint():
    rng = np.random.default_rng(0)
    e = ep.lm_episode(_rows(), 8, 6, 16, rng, "en")
    assert e.support.x.shape == (8, 16) and e.query.y.shape == (6, 16)
    dec = {
        bytes(r[1 : int(m.sum())].astype(np.uint8)).decode()
        for r, m in zip(e.support.x, e.support.mask, strict=True)
    }
    decq = {
        bytes(r[1 : int(m.sum())].astype(np.uint8)).decode()
        for r, m in zip(e.query.x, e.query.mask, strict=True)
    }
    assert len(dec) == 8 and len(decq) == 6 and not dec & decq


def test_classify_labels_follow_the_episode_order():
    rng = np.random.default_rng(0)
    a = _rows([f"a{i}" for i in range(10)])
    b = _rows([f"bb{i}" for i in range(10)])
    e = ep.classify_episode([b, a], 3, 2, 8, rng, ("b", "a"))
    assert e.support.y.tolist() == [0, 0, 0, 1, 1, 1] and e.query.y.tolist() == [0, 0, 1, 1]
    assert all(chr(r[1]) == "b" for r in e.support.x[:3])  # label 0 is the first class given


def test_too_few_rows_names_the_task():
    with pytest.raises(EpisodeError, match="'tiny-task' has 5 rows"):
        ep.regression_episode(_sine(5), 5, 5, np.random.default_rng(0), "tiny-task")


def test_plan_is_a_function_of_seed_and_step_and_workers_take_slices():
    tasks = [f"t{i}" for i in range(50)]
    assert ep.plan_step(tasks, 3, 7, 8) == ep.plan_step(tasks, 3, 7, 8)
    assert ep.plan_step(tasks, 3, 7, 8) != ep.plan_step(tasks, 3, 8, 8)
    rows = {t: _sine(30, i) for i, t in enumerate(tasks)}
    cfg = DataConfig(episode="regression", k_support=5, k_query=5)
    whole = ep.build_step(rows.__getitem__, tasks, cfg, seed=1, step=4, meta_batch=8)
    parts = [
        ep.build_step(rows.__getitem__, tasks, cfg, seed=1, step=4, meta_batch=8, rank=r, world=2)
        for r in range(2)
    ]
    for a, b in zip(
        whole.query,
        (np.concatenate(x) for x in zip(*(p.query for p in parts), strict=True)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)
    assert whole.support.x.shape == (8, 5, 1) and whole.support.mask.shape == (8, 5)


def test_collate_trims_padding_and_to_torch_keeps_dtypes():
    rng = np.random.default_rng(0)
    eps = [ep.lm_episode(_rows(WORDS[:40]), 4, 4, 32, rng) for _ in range(3)]
    b = ep.collate(eps)
    assert b.support.x.shape == (3, 4, 4)  # "wNN" + BOS = 4 bytes: padding to 32 trimmed
    t = ep.to_torch(b)
    assert t.support.x.dtype == torch.int64 and t.query.mask.dtype == torch.float32
    cls = ep.collate([ep.classify_episode([_rows(), _rows()], 2, 2, 8, rng)])
    assert cls.support.y.shape == (1, 4) and cls.support.x.shape[:2] == (1, 4)


def test_a_batch_carries_its_task_keys_in_slot_order():
    # The memory bank keys its entries by these: they must be this rank's slots of the plan.
    rows = {t: _rows() for t in ("aa", "bb", "cc", "dd", "ee")}
    tasks = sorted(rows)
    for kind, n_way in (("lm", None), ("classify", 3)):
        cfg = DataConfig(episode=kind, k_support=2, k_query=2, max_len=8, n_way=n_way or 5)
        b = ep.build_step(
            rows.__getitem__, tasks, cfg, seed=3, step=7, meta_batch=4, rank=1, world=2
        )
        plan = ep.plan_step(tasks, 3, 7, 4, n_way)
        assert b.tasks == tuple(ep.worker_slice(plan, 1, 2))
        assert b.keys == ["+".join(s) for s in ep.worker_slice(plan, 1, 2)]
        assert ep.to_torch(b).tasks == b.tasks and ep.trim(b).tasks == b.tasks
