"""Bank parameters off the heap (issue 14 s.3): float16 deltas from the bank's base, on disk,
read through a byte-bounded cache; the base is fixed, named by its digest and checked."""

import os

import numpy as np
import pytest

from pipeline.bank.params import ByteLRU
from pipeline.bank.service import BankService
from pipeline.config import BankConfig
from pipeline.errors import BankError
from tests.unit.bank.test_store import _base, _batch, assert_within_delta_rounding

P = 4_096


def _cfg(tmp_path, name="bank", **kw) -> BankConfig:
    return BankConfig(snapshot_uri=str(tmp_path / name), snapshot_every=1000, **kw)


def test_a_disk_bank_holds_locators_not_rows_and_reads_hits_from_disk(tmp_path):
    bank = BankService(_cfg(tmp_path, param_cache_mb=0))  # no cache: every read is from disk
    batches = [_batch(10 * i, 10, p=P) for i in range(6)]
    bank.put_many(batches)
    per_entry = bank.index.nbytes() / len(bank.index)
    assert per_entry < 1024, per_entry  # locator, descriptor, metadata; a row would be 8 KiB
    assert bank.params.cache.bytes == 0 and not bank.params.memory
    for b in batches:
        for i, key in enumerate(b["keys"]):
            assert_within_delta_rounding(bank.get(key)["params"], b["params"][i], b["base"])
    out = bank.query(batches[2]["descriptor"][3], k=2)
    assert out["keys"][0][0] == "task-23"
    assert_within_delta_rounding(out["params"][0, 0], batches[2]["params"][3], _base(P))
    assert out["support"][0].tolist() == [16, 16]


def test_after_snapshots_entries_read_from_the_snapshot_and_old_files_are_collected(tmp_path):
    cfg = _cfg(tmp_path, param_cache_mb=0.05)  # ~6 rows of 8 KiB
    bank = BankService(cfg)
    batches = [_batch(10 * i, 5, p=P) for i in range(5)]
    for j, b in enumerate(batches):
        bank.put(b)
        bank.snapshot()  # re-points every entry into the new snapshot, collects the old ones
        assert bank.params.cache.bytes <= bank.params.cache.limit
        assert {s.path for s in bank.params.sources[1:]} == {
            os.path.join(cfg.snapshot_uri, "snapshots", f"snap-{j:012d}", "params.safetensors")
        }
    assert len(os.listdir(os.path.join(cfg.snapshot_uri, "snapshots"))) == 2
    for b in batches:  # the live bank, whose WAL segments are gone
        for i, key in enumerate(b["keys"]):
            assert_within_delta_rounding(bank.get(key)["params"], b["params"][i], b["base"])
    back = BankService(cfg)
    assert back.params.digest == bank.params.digest
    for b in batches:
        for i, key in enumerate(b["keys"]):
            assert_within_delta_rounding(back.get(key)["params"], b["params"][i], b["base"])


def test_the_base_is_fixed_at_the_first_put_and_a_foreign_base_is_stored_against_it(tmp_path):
    cfg = _cfg(tmp_path)
    bank = BankService(cfg)
    bank.put(_batch(0, 3))
    other = {**_batch(10, 3), "base": _base() + 1.0}  # adapted from another meta-init
    bank.put(other)
    assert bank.stats()["params"]["entries_put_against_another_base"] == 3
    back = BankService(cfg)
    for i, key in enumerate(other["keys"]):  # delta from the BANK's base, not the batch's
        assert_within_delta_rounding(back.get(key)["params"], other["params"][i], _base())


def test_a_delta_too_large_for_float16_is_refused_naming_the_fix(tmp_path):
    cfg = _cfg(tmp_path)
    bank = BankService(cfg)
    bank.put(_batch(0, 2))
    huge = {**_batch(10, 2), "params": np.full((2, 16), 1e6, np.float32)}
    with pytest.raises(BankError, match="bank.dtype=float32"):
        bank.put(huge)
    assert len(BankService(cfg).index) == 2  # never reached the WAL
    exact = BankService(_cfg(tmp_path, "exact", dtype="float32"))
    exact.put(huge)
    np.testing.assert_array_equal(exact.get("task-10")["params"], huge["params"][0])


def test_a_replaced_base_file_is_named_on_restore(tmp_path):
    from safetensors.numpy import save_file

    cfg = _cfg(tmp_path)
    BankService(cfg).put(_batch(0, 3))
    path = os.path.join(cfg.snapshot_uri, "base.safetensors")
    wrong = _base() + 1
    from pipeline.bank.params import digest

    save_file({"base": wrong}, path, {"sha256": digest(wrong)})
    with pytest.raises(BankError, match="base.safetensors"):
        BankService(cfg)
    save_file({"base": wrong}, path, {"sha256": digest(_base())})  # bytes changed, digest not
    with pytest.raises(BankError, match="does not match its sha256"):
        BankService(cfg)


def test_import_into_a_bank_with_another_base_and_wal_off_rows_until_the_snapshot(tmp_path):
    src = BankService(_cfg(tmp_path, "src"))
    b = _batch(0, 7)
    src.put(b)
    src.snapshot(str(tmp_path / "export"))
    dst = BankService(_cfg(tmp_path, "dst", wal=False))
    dst.put({**_batch(100, 1), "base": _base() - 0.5})  # dst's base: another meta-init
    assert dst.import_snapshot(str(tmp_path / "export")) == 7
    assert len(dst.params.memory) == 8  # no WAL: in memory until the next snapshot
    dst.snapshot()
    assert not dst.params.memory
    back = BankService(_cfg(tmp_path, "dst", wal=False))
    for i, key in enumerate(b["keys"]):  # rounded twice: src's delta, then dst's
        got = back.get(key)["params"]
        np.testing.assert_allclose(got, b["params"][i], rtol=0, atol=2e-3)


def test_byte_lru_is_bounded_and_rekeys_moved_rows():
    lru = ByteLRU(3 * 800)
    for c in range(5):
        lru.put(c, np.full(100, c, np.float64))  # 800 B each
    assert lru.bytes == 2400 and lru.get(0) is None and lru.get(4) is not None
    lru.rekey(np.array([4, 3, 2, 9]), np.array([40, 30, 20, 90]))
    assert lru.get(40)[0] == 4 and lru.get(20)[0] == 2 and lru.get(4) is None


def test_a_snapshot_reads_rows_in_runs_not_one_read_per_row(tmp_path):
    bank = BankService(_cfg(tmp_path, param_cache_mb=0))
    bank.put_many([_batch(10 * i, 10, p=P) for i in range(4)])  # one frame: 40 rows in a run
    calls = []
    read_at = bank.store.read_at
    bank.store.read_at = lambda *a: calls.append(a) or read_at(*a)
    bank.snapshot()
    assert len(calls) == 1 and calls[0][2] == 40 * P * 2
    calls.clear()
    bank.snapshot()  # now from the first snapshot's params file: again one run
    assert len(calls) == 1
