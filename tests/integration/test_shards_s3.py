"""Shard sets on S3, through a real S3-compatible HTTP server (moto) on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline.cli import main as cli
from pipeline.data.build import write_shard_set
from pipeline.data.shards import clear_cache, open_shard_set
from pipeline.data.sources import sinusoid, text, wordlang
from pipeline.errors import ShardError

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


def small_sin(**kw):
    return sinusoid.prepare(
        **{"train_tasks": 6, "val_tasks": 2, "test_tasks": 2, "points": 12, **kw}
    )


def build(p, uri, **kw):
    return write_shard_set(uri, p.family, p.tasks, build=p.build, split_hint=p.split_hint, **kw)


def test_s3_round_trip_matches_a_local_build(s3_server, tmp_path):
    bucket = s3_server.bucket()
    uri = f"s3://{bucket}/sets/sin"
    res = build(small_sin(), uri, rows_per_file=30)
    build(small_sin(), str(tmp_path / "local"), rows_per_file=30)
    remote, local = open_shard_set(uri), open_shard_set(str(tmp_path / "local"))
    assert remote.tasks("train") == local.tasks("train")
    for key in remote.tasks("train") + remote.tasks("test"):
        for col in ("x", "y"):
            np.testing.assert_array_equal(remote.read_task(key)[col], local.read_task(key)[col])
    assert remote.task_meta("val-000001") == local.task_meta("val-000001")
    # exactly the manifest and its files under the prefix: no temporary names left
    keys = [k for k in s3_server.keys(bucket, "sets/sin/") if not k.endswith("/")]
    assert sorted(keys) == sorted(f"sets/sin/{n}" for n in ["manifest.json", *res.manifest.files])
    assert not remote.verify()


def test_wordlang_and_text_through_s3(s3_server, tmp_path):
    bucket = s3_server.bucket()
    p = wordlang.prepare(languages="en,ru,ko", top_n=20, val_languages="ru", test_languages="ko")
    build(p, f"s3://{bucket}/wl")
    ss = open_shard_set(f"s3://{bucket}/wl")
    assert list(ss.read_task("en")["text"][:2]) == ["the", "to"]
    # a text corpus read from S3, written to S3
    client = s3_server.client()
    for name in ("a", "b", "c"):
        client.put_object(Bucket=bucket, Key=f"corpus/{name}.txt", Body=f"{name}1\n{name}2\n")
    p = text.prepare(f"s3://{bucket}/corpus", val_keys="b", test_keys="c")
    build(p, f"s3://{bucket}/txt")
    assert list(open_shard_set(f"s3://{bucket}/txt").read_task("a")["text"]) == ["a1", "a2"]


def test_endpoint_from_config_when_env_has_none(s3_server, monkeypatch):
    bucket = s3_server.bucket()
    build(small_sin(), f"s3://{bucket}/s")
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    from pipeline.config import load

    cfg = load(None, [f"data.uri=s3://{bucket}/s", f"data.s3_endpoint={s3_server.endpoint}"])
    ss = open_shard_set(cfg.data.uri, s3_endpoint=cfg.data.s3_endpoint)
    assert len(ss.tasks("train")) == 6


def test_cli_build_and_inspect_on_s3(s3_server, capsys):
    bucket = s3_server.bucket()
    uri = f"s3://{bucket}/cli/sin"
    args = ["--train-tasks", "5", "--val-tasks", "2", "--test-tasks", "2", "--points", "8"]
    assert (
        cli(
            [
                "shards",
                "build",
                "sinusoid",
                "--out",
                uri,
                *args,
                "--s3-endpoint",
                s3_server.endpoint,
            ]
        )
        == 0
    )
    assert "built sinusoid shard set: 9 tasks, 72 rows" in capsys.readouterr().out
    assert cli(["shards", "inspect", uri]) == 0
    out = capsys.readouterr().out
    assert "train          5          40" in out and "verify     ok" in out


def test_missing_bucket_is_named_with_the_fix(s3_server):
    with pytest.raises(ShardError) as err:
        open_shard_set("s3://no-such-bucket-here/sets/x")
    msg = str(err.value)
    assert "bucket 'no-such-bucket-here' does not exist" in msg
    assert s3_server.endpoint in msg and "aws s3 mb s3://no-such-bucket-here" in msg
    with pytest.raises(ShardError, match="bucket 'no-such-bucket-2' does not exist"):
        build(small_sin(), "s3://no-such-bucket-2/x")


def test_refused_credentials_are_reported_with_what_to_check(s3_strict_server, s3_server):
    with pytest.raises(ShardError) as err:
        open_shard_set("s3://some-bucket/sets/x", s3_endpoint=s3_strict_server)
    msg = str(err.value)
    assert "s3://some-bucket/sets/x" in msg and "refused the credentials" in msg
    assert "AWS_ACCESS_KEY_ID" in msg and "ACCESS_DENIED" in msg
    with pytest.raises(ShardError, match="refused the credentials"):
        build(small_sin(), "s3://some-bucket/y", s3_endpoint=s3_strict_server)


def test_unreachable_endpoint(s3_server):
    with pytest.raises(ShardError, match="could not reach S3 at http://127.0.0.1:9 .*AWS_ENDPOINT"):
        open_shard_set("s3://abc/x", s3_endpoint="http://127.0.0.1:9")


def test_checksum_mismatch_on_s3_names_the_object(s3_server):
    bucket = s3_server.bucket()
    res = build(small_sin(), f"s3://{bucket}/s")
    name = next(n for n in res.manifest.files if n.startswith("train"))
    client = s3_server.client()
    body = bytearray(client.get_object(Bucket=bucket, Key=f"s/{name}")["Body"].read())
    body[40] ^= 0xFF
    client.put_object(Bucket=bucket, Key=f"s/{name}", Body=bytes(body))
    with pytest.raises(ShardError, match=f"s3://{bucket}/s/{name}: checksum mismatch"):
        open_shard_set(f"s3://{bucket}/s").read_task("train-000000")


CRASH = textwrap.dedent(
    """
    import os, sys
    from pipeline.data.build import write_shard_set
    from pipeline.data.sources import sinusoid

    p = sinusoid.prepare(train_tasks=30, val_tasks=3, test_tasks=3, points=10)

    def crash_midway(tasks):
        for i, t in enumerate(tasks):
            if i == 25:
                os._exit(9)
            yield t

    write_shard_set(sys.argv[1], p.family, crash_midway(p.tasks), build=p.build,
                    rows_per_file=40)
    """
)


def test_s3_build_killed_halfway_leaves_no_manifest_and_rerun_succeeds(s3_server):
    bucket = s3_server.bucket()
    uri = f"s3://{bucket}/crash"
    env = {**os.environ, **s3_server.env}
    proc = subprocess.run([sys.executable, "-c", CRASH, uri], cwd=REPO, env=env)
    assert proc.returncode == 9
    keys = [k for k in s3_server.keys(bucket, "crash/") if not k.endswith("/")]
    assert keys and "crash/manifest.json" not in keys
    with pytest.raises(ShardError, match="but no manifest.json.*interrupted"):
        open_shard_set(uri)
    res = build(sinusoid.prepare(train_tasks=30, val_tasks=3, test_tasks=3, points=10), uri)
    assert set(res.removed) == {k.removeprefix("crash/") for k in keys}
    left = [k for k in s3_server.keys(bucket, "crash/") if not k.endswith("/")]
    assert sorted(left) == sorted(f"crash/{n}" for n in ["manifest.json", *res.manifest.files])
    assert len(open_shard_set(uri).tasks("train")) == 30


def test_a_process_that_used_s3_exits_cleanly(s3_server):
    """pyarrow's S3 client is finalized at exit (registered by pipeline.data.storage)."""
    bucket = s3_server.bucket()
    build(small_sin(), f"s3://{bucket}/s")
    code = (
        "from pipeline.data.shards import open_shard_set\n"
        f"ss = open_shard_set('s3://{bucket}/s')\n"
        "print(ss.read_task('train-000001')['y'].shape)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, **s3_server.env},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "(12,)" in proc.stdout and "terminate called" not in proc.stderr
