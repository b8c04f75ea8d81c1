"""Bank snapshots and WAL on S3 (a real moto server on loopback): restore, damage, fallback."""

import numpy as np
import pytest

from pipeline.bank.service import BankService
from pipeline.bank.store import BankStore
from pipeline.config import BankConfig
from pipeline.errors import BankError
from tests.unit.bank.test_store import assert_within_delta_rounding

pytestmark = pytest.mark.integration


BASE = np.random.default_rng(999).standard_normal(32).astype(np.float32)  # the meta-init


def _batch(start: int, n: int) -> dict:
    rng = np.random.default_rng(start)
    return {
        "keys": [f"lang-{i}" for i in range(start, start + n)],
        "descriptor": rng.standard_normal((n, 8)).astype(np.float32),
        "params": BASE + 0.05 * rng.standard_normal((n, 32)).astype(np.float32),
        "base": BASE,
        "loss": rng.random(n).astype(np.float32),
    }


def test_s3_snapshots_and_wal_restore_every_acknowledged_entry(s3_server):
    uri = f"s3://{s3_server.bucket()}/banks/main"
    cfg = BankConfig(snapshot_uri=uri, snapshot_every=2)
    bank = BankService(cfg)
    batches = [_batch(5 * i, 5) for i in range(5)]  # 2 snapshots + 1 WAL record
    for b in batches:
        bank.put(b)
    bucket, prefix = uri[5:].split("/", 1)
    keys = s3_server.keys(bucket, prefix)
    assert any(k.endswith("meta.parquet") for k in keys)
    assert any(k.endswith("params.safetensors") for k in keys)
    back = BankService(cfg)
    assert len(back.index) == 25 and back.restored["wal_records"] == 1
    for b in batches:
        got = back.get(b["keys"][2])  # read from the S3 snapshot / WAL object on the hit
        assert_within_delta_rounding(got["params"], b["params"][2], BASE)
    assert back.params.stats()["where"] == "disk" and any(
        s.path.endswith("params.safetensors") for s in back.params.sources[1:]
    )


def test_s3_truncated_snapshot_is_named_and_the_previous_one_still_restores(s3_server):
    bucket = s3_server.bucket()
    uri = f"s3://{bucket}/bank"
    cfg = BankConfig(snapshot_uri=uri, snapshot_every=2)
    bank = BankService(cfg)
    for i in range(4):
        bank.put(_batch(5 * i, 5))
    key = "bank/snapshots/snap-000000000001/params.safetensors"
    client = s3_server.client()
    body = client.get_object(Bucket=bucket, Key=key)["Body"].read()
    client.put_object(Bucket=bucket, Key=key, Body=body[: len(body) // 3])
    with pytest.raises(BankError, match=rf"{uri}/snapshots/snap-000000000001/params"):
        BankStore(uri).load_snapshot(1)
    back = BankService(cfg)
    assert len(back.index) == 20
    assert "truncated or corrupt" in back.stats()["warnings"][0]
