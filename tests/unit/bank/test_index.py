"""The pure bank index: search equals brute force, upsert, eviction, float16, memory per entry."""

import numpy as np
import pytest

from pipeline.bank.index import BankIndex, normalise
from pipeline.errors import BankError


def _fill(idx: BankIndex, n: int, dim: int = 16, p: int = 8, seed: int = 0, **meta):
    rng = np.random.default_rng(seed)
    keys = [f"t{i}" for i in range(n)]
    desc = rng.standard_normal((n, dim)).astype(np.float32)
    params = rng.standard_normal((n, p)).astype(np.float32)
    idx.upsert(keys, desc, params, **meta)
    return keys, desc, params


def test_search_matches_brute_force_top_k():
    idx = BankIndex(capacity=1000)
    keys, desc, _ = _fill(idx, 600, dim=32)
    q = np.random.default_rng(1).standard_normal((7, 32)).astype(np.float32)
    hits = idx.search(q, k=5)
    brute = normalise(q) @ normalise(desc).T
    for b in range(7):
        want = np.argsort(-brute[b])[:5]
        assert hits.keys[b] == [keys[i] for i in want]
        np.testing.assert_allclose(hits.sims[b], brute[b, want], rtol=1e-5, atol=1e-6)


def test_stored_entry_is_its_own_nearest_neighbour_with_similarity_one():
    idx = BankIndex(capacity=100)
    keys, desc, params = _fill(idx, 50)
    hits = idx.search(desc[17] * 3.0, k=1)  # scale does not matter: cosine
    assert hits.keys[0] == ["t17"]
    assert hits.sims[0, 0] == pytest.approx(1.0, abs=1e-6)
    np.testing.assert_array_equal(idx.params_of(hits.slots[0])[0], params[17])


def test_upsert_overwrites_by_key_without_growing():
    idx = BankIndex(capacity=10)
    _fill(idx, 5, p=4)
    new = np.full((1, 4), 7.0, np.float32)
    res = idx.upsert(["t2"], np.ones((1, 16)), new, steps=9, loss=0.5)
    assert (res.inserted, res.updated, len(idx)) == (0, 1, 5)
    got = idx.get("t2")
    np.testing.assert_array_equal(got["params"], new[0])
    assert (got["step"], got["loss"]) == (9, 0.5)


def test_lru_evicts_least_recently_used_and_queries_count_as_use():
    idx = BankIndex(capacity=3, eviction="lru")
    _, desc, _ = _fill(idx, 3)  # t0, t1, t2 in that order
    idx.search(desc[0], k=1)  # t0 is now the most recently used
    res = idx.upsert(["new"], np.ones((1, 16)), np.zeros((1, 8)))
    assert res.evicted == ["t1"]
    assert sorted(idx.keys()) == ["new", "t0", "t2"]


def test_worst_loss_evicts_highest_loss_and_rejects_a_worse_newcomer():
    idx = BankIndex(capacity=3, eviction="worst_loss")
    _fill(idx, 3, loss=[1.0, 3.0, 2.0])
    res = idx.upsert(["good"], np.ones((1, 16)), np.zeros((1, 8)), loss=0.5)
    assert res.evicted == ["t1"]
    res = idx.upsert(["bad"], np.ones((1, 16)), np.zeros((1, 8)), loss=9.0)
    assert res.rejected == ["bad"] and "bad" not in idx
    assert sorted(idx.keys()) == ["good", "t0", "t2"]


def test_eviction_keeps_rows_dense_and_search_correct():
    idx = BankIndex(capacity=50, eviction="lru")
    rng = np.random.default_rng(3)
    for step in range(10):
        keys = [f"s{step}-{i}" for i in range(20)]
        idx.upsert(keys, rng.standard_normal((20, 16)), rng.standard_normal((20, 8)))
    assert len(idx) == 50
    cols = idx.columns()
    for i, k in enumerate(cols["keys"]):
        e = idx.get(k)
        np.testing.assert_array_equal(e["descriptor"], cols["descriptor"][i])
    # the most recent 50 (the last 2.5 batches) survive
    assert set(idx.keys()) == {f"s{s}-{i}" for s in (8, 9) for i in range(20)} | {
        f"s7-{i}" for i in range(10, 20)
    }


def test_float16_storage_round_trips_within_half_precision():
    idx = BankIndex(capacity=10, dtype="float16")
    _, _, params = _fill(idx, 4, p=100)
    got = idx.get("t3")["params"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, params[3], rtol=1e-3, atol=1e-3)


def test_memory_per_entry_is_params_plus_descriptor_plus_small_constant():
    dim, p, n = 128, 4096, 2048
    for dtype, width in (("float32", 4), ("float16", 2)):
        idx = BankIndex(capacity=n, dtype=dtype)
        _fill(idx, n, dim=dim, p=p)
        per_entry = idx.nbytes() / n
        floor = p * width + dim * 4
        assert floor <= per_entry <= floor + 256, (dtype, per_entry, floor)


def test_growth_is_bounded_by_capacity():
    idx = BankIndex(capacity=300)
    _fill(idx, 300)
    assert idx._rows == 300


def test_shape_mismatch_and_bad_descriptors_are_clear_errors():
    idx = BankIndex(capacity=10)
    _fill(idx, 2, dim=16, p=8)
    with pytest.raises(BankError, match="descriptor dim 4 / 8 params"):
        idx.upsert(["x"], np.ones((1, 4)), np.ones((1, 8)))
    with pytest.raises(BankError, match="all zeros"):
        idx.upsert(["x"], np.zeros((1, 16)), np.ones((1, 8)))
    with pytest.raises(BankError, match="no entry for task key 'nope'"):
        idx.get("nope")


def test_columns_round_trip_restores_identical_search():
    idx = BankIndex(capacity=100)
    _, desc, _ = _fill(idx, 40, loss=np.linspace(0, 1, 40))
    cols = {k: (v.copy() if hasattr(v, "copy") else v) for k, v in idx.columns().items()}
    back = BankIndex(capacity=100)
    back.load_columns(cols)
    a, b = idx.search(desc[:5], k=3, touch=False), back.search(desc[:5], k=3, touch=False)
    assert a.keys == b.keys
    assert back.get("t39")["loss"] == pytest.approx(1.0)


def test_empty_bank_answers_no_hits():
    idx = BankIndex(capacity=5)
    hits = idx.search(np.ones(8), k=3)
    assert hits.keys == [[]] and hits.sims.shape == (1, 0)
    assert idx.params_of(hits.slots.ravel()).shape == (0, 0)
