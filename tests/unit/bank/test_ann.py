"""The bank's HNSW path (from `ann_min_entries` on) finds what exact search finds and stays
consistent through overwrites, evictions, removals and a snapshot restore."""

import numpy as np

from pipeline.bank.index import BankIndex


def _data(n, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((20, dim))
    desc = centres[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, dim))
    return [f"t{i}" for i in range(n)], desc.astype(np.float32), rng.standard_normal((n, 3))


def _recall(bank, queries, k=5):
    a = bank.search(queries, k, touch=False)
    e = bank.search(queries, k, touch=False, exact=True)
    return np.mean([len(set(x) & set(y)) / k for x, y in zip(a.keys, e.keys, strict=True)])


def test_hnsw_matches_exact_and_tracks_writes():
    keys, desc, params = _data(600)
    bank = BankIndex(500, ann_min_entries=200)
    bank.upsert(keys[:150], desc[:150], params[:150])
    assert bank._ann is None  # small: exact search
    bank.upsert(keys[150:500], desc[150:500], params[150:500])
    assert bank._ann is not None
    queries = _data(50, seed=1)[1]
    assert _recall(bank, queries) >= 0.95
    # overwrite one entry with a new descriptor: the HNSW path finds it at the new place
    bank.upsert(["t7"], desc[550:551], params[550:551])
    hit = bank.search(desc[550:551], 1, touch=False)
    assert hit.keys == [["t7"]] and hit.sims[0, 0] > 0.999
    np.testing.assert_allclose(bank.params_of(hit.slots[0]), params[550:551], rtol=1e-6)
    # past capacity (LRU eviction moves rows) and removals: never a stale key
    bank.upsert(keys[500:], desc[500:], params[500:])
    assert bank.remove("t300") and "t300" not in bank
    live = set(bank.keys())
    found = bank.search(desc, 5, touch=False)
    assert all(set(row) <= live for row in found.keys)
    for row, slots in zip(found.keys, found.slots, strict=True):  # slots point at those keys
        assert [bank.keys()[s] for s in slots] == row
    assert _recall(bank, queries) >= 0.95


def test_restore_rebuilds_the_hnsw_index():
    keys, desc, params = _data(300)
    bank = BankIndex(1000, ann_min_entries=100)
    bank.upsert(keys, desc, params)
    cols = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in bank.columns().items()}
    again = BankIndex(1000, ann_min_entries=100)
    again.load_columns(cols)
    assert again._ann is not None
    q = _data(20, seed=2)[1]
    assert again.search(q, 3, touch=False).keys == bank.search(q, 3, touch=False).keys


def test_a_small_graph_is_the_same_every_build():
    # Below ann.SERIAL_BELOW entries the graph is built on one thread: builds of the same entries
    # answer the same (what the restore test above relies on). Concurrent builds of these 300
    # entries differed now and then (the restore test failed 23 times in 300 under load).
    keys, desc, params = _data(300)
    q = _data(50, seed=3)[1]
    answers = set()
    for _ in range(12):
        bank = BankIndex(1000, ann_min_entries=100)
        bank.upsert(keys, desc, params)
        answers.add(str(bank.search(q, 5, touch=False).keys))
    assert len(answers) == 1
