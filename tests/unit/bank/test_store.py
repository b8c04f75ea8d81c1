"""Bank persistence without Ray: WAL recovery, snapshot integrity, export/import, clear."""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from pipeline.bank.service import BankService
from pipeline.bank.store import BankStore
from pipeline.config import BankConfig
from pipeline.errors import BankError


def _base(p: int = 16) -> np.ndarray:
    """The meta-init every test batch was "adapted" from."""
    return np.random.default_rng(999).standard_normal(p).astype(np.float32)


def _batch(start: int, n: int, dim: int = 8, p: int = 16) -> dict:
    rng = np.random.default_rng(start)
    return {
        "keys": [f"task-{i}" for i in range(start, start + n)],
        "descriptor": rng.standard_normal((n, dim)).astype(np.float32),
        "params": _base(p) + 0.05 * rng.standard_normal((n, p)).astype(np.float32),
        "base": _base(p),
        "step": np.full(n, 3),
        "support": np.full(n, 16),
        "loss": rng.random(n).astype(np.float32),
    }


def assert_within_delta_rounding(got, want, base) -> None:
    """`got` equals `want` up to the float16 rounding of the delta `want - base` (relative
    2**-11; 2**-25 absolute below float16's normal range) and float32's rounding of the sum."""
    got, want, base = (np.asarray(a, np.float64) for a in (got, want, base))
    bound = np.abs(want - base) * 2.0**-11 + 2.0**-25 + np.abs(want) * 2.0**-23
    err = np.abs(got - want)
    assert (err <= bound).all(), float((err - bound).max())


def _cfg(tmp_path, **kw) -> BankConfig:
    return BankConfig(snapshot_uri=str(tmp_path / "bank"), **kw)


def _assert_has(bank: BankService, batch: dict) -> None:
    for i, key in enumerate(batch["keys"]):
        e = bank.get(key)
        assert_within_delta_rounding(e["params"], batch["params"][i], batch["base"])
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
    files = ["base.safetensors", "manifest.json", "meta.parquet", "params.safetensors"]
    assert sorted(os.listdir(d)) == files
    table = pq.read_table(os.path.join(d, "meta.parquet"))
    assert table.column("key").to_pylist() == [f"task-{i}" for i in range(5)]
    with open(os.path.join(d, "manifest.json")) as f:
        m = json.load(f)
    assert m["count"] == 5 and m["dtype"] == "float16" and len(m["files"]) == 3
    assert m["params"] == "delta" and m["base_sha256"] == bank.params.digest


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
    assert_within_delta_rounding(out["params"][0, 0], b["params"][1], b["base"])
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


# ---- WAL group commit (issue 14 s.3) ---------------------------------------------------------
def _segments(cfg) -> list[str]:
    wal = os.path.join(cfg.snapshot_uri, "wal")
    return sorted(n for n in os.listdir(wal) if n.endswith(".wal"))


def test_put_many_is_one_group_in_one_segment_and_restores(tmp_path):
    cfg = _cfg(tmp_path, snapshot_every=1000)
    bank = BankService(cfg)
    batches = [_batch(10 * i, 3) for i in range(8)]
    res = bank.put_many(batches)
    assert [r["stored"] for r in res] == [3] * 8 and res[-1]["entries"] == 24
    bank.put(_batch(100, 2))  # a group of one appends to the same open segment
    assert _segments(cfg) == ["000000000000.wal"]
    records, torn = BankStore(cfg.snapshot_uri).read_wal_file("000000000000.wal")
    assert [s for s, _ in records] == list(range(9)) and torn is None
    back = BankService(cfg)
    assert back.restored["wal_records"] == 9 and not back.warnings
    for b in batches:
        _assert_has(back, b)


def test_group_acknowledged_before_sigkill_survives(tmp_path):
    """A real crash: a child process acknowledges a put_many group, then SIGKILLs itself
    (no destructor, no flush, no close runs); a new process restores every batch."""
    import subprocess
    import sys
    import textwrap

    cfg = _cfg(tmp_path, snapshot_every=1000)
    code = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.insert(0, {os.getcwd()!r})
        from tests.unit.bank.test_store import _batch, _cfg
        from pipeline.bank.service import BankService
        from pathlib import Path
        bank = BankService(_cfg(Path({str(tmp_path)!r}), snapshot_every=1000))
        bank.put(_batch(0, 4))
        bank.put_many([_batch(10 * i, 4) for i in range(1, 6)])
        print("acked", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == -9 and proc.stdout.strip() == "acked", proc.stderr
    back = BankService(cfg)
    assert len(back.index) == 24 and back.restored["wal_records"] == 6
    for i in range(6):
        _assert_has(back, _batch(10 * i, 4))


def test_torn_last_record_is_dropped_and_earlier_records_kept(tmp_path):
    from pipeline.bank.store import encode_group

    cfg = _cfg(tmp_path, snapshot_every=1000)
    bank = BankService(cfg)
    kept = [_batch(10 * i, 3) for i in range(4)]
    bank.put_many(kept)
    seg = os.path.join(cfg.snapshot_uri, "wal", _segments(cfg)[0])
    whole = os.path.getsize(seg)
    frame = encode_group(4, [bank._normalised(_batch(90, 3))])
    with open(seg, "ab") as f:  # the bytes a crash mid-append leaves: half of the next frame
        f.write(frame[: len(frame) // 2])
    back = BankService(cfg)
    assert len(back.index) == 12 and "task-90" not in back.index
    for b in kept:
        _assert_has(back, b)
    assert "torn record" in back.warnings[0] and "kept the 4 before it" in back.warnings[0]
    assert os.path.getsize(seg) == whole  # the owner cut the torn tail off durably
    back.put(_batch(50, 2))  # seq 4 again, now in a new segment
    again = BankService(cfg)
    assert not again.warnings and len(again.index) == 14 and again.wal_seq == 4


def test_torn_first_frame_of_a_fresh_segment_frees_its_name(tmp_path):
    """A crash during the first group after a snapshot: the new segment holds the header and
    a few bytes of a frame header only."""
    from pipeline.bank.store import WAL_MAGIC

    cfg = _cfg(tmp_path, snapshot_every=1000)
    bank = BankService(cfg)
    bank.put_many([_batch(0, 3), _batch(10, 3)])
    bank.snapshot()
    torn = os.path.join(cfg.snapshot_uri, "wal", "000000000002.wal")
    with open(torn, "wb") as f:
        f.write(WAL_MAGIC + b"\x07\x00\x00")
    back = BankService(cfg)
    assert len(back.index) == 6 and "torn record" in back.warnings[0]
    assert not os.path.exists(torn)
    back.put(_batch(20, 1))
    assert len(BankService(cfg).index) == 7


def test_damaged_middle_record_and_unknown_format_are_named(tmp_path):
    cfg = _cfg(tmp_path, snapshot_every=1000)
    bank = BankService(cfg)
    for i in range(3):  # three groups of one: three frames
        bank.put(_batch(10 * i, 3))
    seg = os.path.join(cfg.snapshot_uri, "wal", "000000000000.wal")
    good = Path(seg).read_bytes()
    raw = bytearray(good)
    raw[40] ^= 0xFF  # inside the first frame, with two whole frames after it
    Path(seg).write_bytes(bytes(raw))
    with pytest.raises(BankError, match=r"000000000000.wal has a corrupt record \(seq 0"):
        BankService(cfg)
    Path(seg).write_bytes(good[:6] + b"\x09\x00" + good[8:])
    with pytest.raises(BankError, match="has format 9; this metaray reads formats 1, 2 and 3"):
        BankService(cfg)


def test_format_1_records_from_before_group_commit_still_restore(tmp_path):
    from pipeline.bank.wal_frames import encode_record

    cfg = _cfg(tmp_path, snapshot_every=1000)
    store = BankStore(cfg.snapshot_uri)
    old = [_batch(0, 3), _batch(10, 3)]
    for seq, b in enumerate(old):  # exactly what format 1 wrote (one file per batch)
        store.files.write(f"{store.root}/wal/{seq:012d}.safetensors", encode_record(b))
    bank = BankService(cfg)
    assert bank.restored["wal_records"] == 2
    bank.put(_batch(20, 3))  # seq 2 goes to a format-2 segment beside them
    back = BankService(cfg)
    assert len(back.index) == 9 and back.wal_seq == 2
    for b in (*old, _batch(20, 3)):
        _assert_has(back, b)


def test_put_many_rejects_the_whole_group_before_the_wal(tmp_path):
    cfg = _cfg(tmp_path, snapshot_every=1000)
    bank = BankService(cfg)
    with pytest.raises(BankError, match="in one put_many"):
        bank.put_many([_batch(0, 2), _batch(10, 2, dim=4)])
    with pytest.raises(BankError, match="duplicate task keys"):
        bank.put_many([_batch(0, 2), {**_batch(10, 2), "keys": ["x", "x"]}])
    assert len(bank.index) == 0 and BankStore(cfg.snapshot_uri).wal_seqs() == []
    assert len(BankService(cfg).index) == 0


def test_snapshot_rolls_the_segment_and_old_segments_are_collected(tmp_path):
    cfg = _cfg(tmp_path, snapshot_every=4)
    bank = BankService(cfg)
    for i in range(13):  # snapshots after puts 4, 8, 12: each rolls to a new segment
        bank.put(_batch(10 * i, 2))
    # kept back to the previous snapshot's wal_upto (7): segments 0 and 4 are collected
    assert _segments(cfg) == ["000000000008.wal", "000000000012.wal"]
    back = BankService(cfg)
    assert len(back.index) == 26 and back.restored["wal_records"] == 1


@pytest.mark.parametrize("eviction", ["lru", "worst_loss"])
def test_put_many_leaves_the_bank_as_puts_one_by_one_and_as_its_replay(tmp_path, eviction):
    """put_many applies runs of distinct keys as one upsert: the index must end exactly as
    with one put per batch, and as a restore (which replays batch by batch) rebuilds it."""
    batches = [_batch(0, 3), _batch(3, 3), _batch(1, 2), _batch(6, 4), _batch(20, 3)]
    for i, b in enumerate(batches):
        b["loss"] = np.linspace(0.1, 0.9, len(b["keys"]), dtype=np.float32)[::-1] + i / 10
    cfg = _cfg(tmp_path, capacity=6, eviction=eviction, snapshot_every=1000)
    grouped = BankService(cfg)
    res = grouped.put_many(batches)
    one_by_one = BankService(BankConfig(capacity=6, eviction=eviction))
    want = [one_by_one.put(b) for b in batches]
    assert [r["stored"] for r in res] == [w["stored"] for w in want]
    assert [r["rejected"] for r in res] == [w["rejected"] for w in want]
    assert sum(len(r["evicted"]) for r in res) == sum(len(w["evicted"]) for w in want)
    replayed = BankService(cfg)
    for other in (one_by_one, replayed):
        a, b = grouped.index.columns(), other.index.columns()
        assert a["keys"] == b["keys"]
        for col in ("descriptor", "step", "loss", "last_used"):
            np.testing.assert_array_equal(a[col], b[col])
        for key in a["keys"]:  # the same stored rows (one bank on disk, one in memory)
            np.testing.assert_array_equal(grouped.get(key)["params"], other.get(key)["params"])
