"""Bank persistence without Ray: WAL recovery, snapshot integrity, export/import, clear."""

import json
import os

import numpy as np
import pytest

from pipeline.bank.service import BankService
from pipeline.bank.store import BankStore
from pipeline.config import BankConfig
from pipeline.errors import BankError


def _batch(start: int, n: int, dim: int = 8, p: int = 16) -> dict:
    rng = np.random.default_rng(start)
    return {
        "keys": [f"task-{i}" for i in range(start, start + n)],
        "descriptor": rng.standard_normal((n, dim)).astype(np.float32),
        "params": rng.standard_normal((n, p)).astype(np.float32),
        "step": np.full(n, 3),
        "support": np.full(n, 16),
        "loss": rng.random(n).astype(np.float32),
    }


def _cfg(tmp_path, **kw) -> BankConfig:
    return BankConfig(snapshot_uri=str(tmp_path / "bank"), **kw)


def _assert_has(bank: BankService, batch: dict) -> None:
    for i, key in enumerate(batch["keys"]):
        e = bank.get(key)
        np.testing.assert_array_equal(e["params"], batch["params"][i])
        assert e["loss"] == pytest.approx(float(batch["loss"][i]))


def test_acknowledged_puts_survive_a_crash_through_snapshot_and_wal(tmp_path):
    cfg = _cfg(tmp_path, snapshot_every=3)
    bank = BankService(cfg)
    batches = [_batch(10 * i, 10) for i in range(7)]  # 2 snapshots + 1 WAL record after them
    for b in batches:
        bank.put(b)
    del bank  # the process dies: no shutdown hook runs
    back = BankService(cfg)
    assert len(back.index) == 70
    for b in batches:
        _assert_has(back, b)
    assert back.restored["wal_records"] == 1
    assert back.restored["snapshot"].endswith("snap-000000000001")


def test_corrupt_latest_snapshot_is_named_and_previous_snapshot_plus_wal_restores_all(tmp_path):
    cfg = _cfg(tmp_path, snapshot_every=2)
    bank = BankService(cfg)
    batches = [_batch(10 * i, 10) for i in range(4)]
    for b in batches:
        bank.put(b)
    store = BankStore(cfg.snapshot_uri)
    latest = store.snapshot_seqs()[-1]
    params_file = os.path.join(
        cfg.snapshot_uri, "snapshots", f"snap-{latest:012d}", "params.safetensors"
    )
    with open(params_file, "r+b") as f:  # truncate: a half-written copy of the file
        f.truncate(os.path.getsize(params_file) // 2)
    with pytest.raises(BankError, match=r"snap-000000000001/params.safetensors is truncated"):
        store.load_snapshot(latest)
    cols, _ = store.load_snapshot(latest - 1)  # the previous snapshot is still usable
    assert len(cols["keys"]) == 20
    back = BankService(cfg)
    assert len(back.index) == 40 and "params.safetensors" in back.stats()["warnings"][0]
    for b in batches:
        _assert_has(back, b)


def test_unreadable_manifest_is_a_clear_error(tmp_path):
    cfg = _cfg(tmp_path)
    bank = BankService(cfg)
    bank.put(_batch(0, 3))
    name = bank.snapshot()
    path = os.path.join(cfg.snapshot_uri, "snapshots", name.rsplit("/", 1)[1], "manifest.json")
    with open(path, "w") as f:
        f.write("{not json")
    with pytest.raises(BankError, match="manifest.json is unreadable"):
        BankStore(cfg.snapshot_uri).load_snapshot(0)


def test_snapshot_is_parquet_and_safetensors_with_checksums(tmp_path):
    import pyarrow.parquet as pq

    cfg = _cfg(tmp_path, dtype="float16")
    bank = BankService(cfg)
    bank.put(_batch(0, 5))
    name = bank.snapshot()
    d = os.path.join(cfg.snapshot_uri, "snapshots", name.rsplit("/", 1)[1])
    assert sorted(os.listdir(d)) == ["manifest.json", "meta.parquet", "params.safetensors"]
    table = pq.read_table(os.path.join(d, "meta.parquet"))
    assert table.column("key").to_pylist() == [f"task-{i}" for i in range(5)]
    with open(os.path.join(d, "manifest.json")) as f:
        m = json.load(f)
    assert m["count"] == 5 and m["dtype"] == "float16" and len(m["files"]) == 2


def test_without_wal_the_loss_is_bounded_by_snapshot_every(tmp_path):
    cfg = _cfg(tmp_path, wal=False, snapshot_every=2)
    bank = BankService(cfg)
    for i in range(5):
        bank.put(_batch(10 * i, 10))
    back = BankService(cfg)
    assert len(back.index) == 40  # the 5th batch came after the last snapshot


def test_export_import_and_clear(tmp_path):
    bank = BankService(_cfg(tmp_path))
    b = _batch(0, 6)
    bank.put(b)
    exported = bank.snapshot(str(tmp_path / "export"))
    assert exported.startswith(str(tmp_path / "export"))
    assert bank.clear() == 6
    assert len(BankService(_cfg(tmp_path)).index) == 0  # the clear is durable
    other = BankService(BankConfig(snapshot_uri=str(tmp_path / "other")))
    assert other.import_snapshot(str(tmp_path / "export")) == 6
    _assert_has(other, b)


def test_query_reports_hits_against_threshold_and_returns_params(tmp_path):
    bank = BankService(BankConfig(threshold=0.99, top_k=2))
    b = _batch(0, 4)
    bank.put(b)
    out = bank.query(np.stack([b["descriptor"][1], -b["descriptor"][1]]))
    assert out["keys"][0][0] == "task-1" and out["hit"].tolist() == [True, False]
    np.testing.assert_array_equal(out["params"][0, 0], b["params"][1])
    assert bank.stats()["hit_rate"] == 0.5


def test_a_rejected_batch_never_reaches_the_wal(tmp_path):
    cfg = _cfg(tmp_path)
    bank = BankService(cfg)
    bank.put(_batch(0, 2))
    bad = _batch(5, 2, dim=4)
    with pytest.raises(BankError, match="descriptor dim 4"):
        bank.put(bad)
    assert len(BankService(cfg).index) == 2


def test_query_on_an_empty_bank_is_a_miss_not_an_error():
    out = BankService(BankConfig()).query(np.ones((2, 8), np.float32))
    assert out["keys"] == [[], []] and out["hit"].tolist() == [False, False]
    assert out["params"].shape == (2, 0, 0)
