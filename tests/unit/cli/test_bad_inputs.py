"""Bad files handed to the commands: each a message naming the file and the fix, no traceback
(`metaray evaluate`/`adapt` with a broken checkpoint or support file, `pipeline.local_train` on
a corrupt shard)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import checkpoint, config
from pipeline.cli import main
from pipeline.meta import outer
from pipeline.models import build_model

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def ckpt(tmp_path):
    cfg = config.load(None, ["model.hidden=8", "model.embed=4", "data.max_len=8"])
    state = outer.init_state(build_model(cfg.model, cfg.data), cfg.inner, cfg.outer, seed=0)
    return checkpoint.save(tmp_path / "ck", state, config=config.to_dict(cfg))


def _evaluate(capsys, path) -> str:
    assert main(["evaluate", "--checkpoint", str(path), "--shards", str(path)]) == 1
    return capsys.readouterr().err


def test_checkpoint_given_a_file(ckpt, capsys):
    err = _evaluate(capsys, ckpt / "state.safetensors")
    assert "state.safetensors is a file: give a checkpoint directory" in err


def test_binary_meta_json(ckpt, capsys):
    (ckpt / "meta.json").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    err = _evaluate(capsys, ckpt)
    assert "meta.json: not readable JSON" in err and "Traceback" not in err


def test_state_that_is_not_safetensors(ckpt, capsys):
    (ckpt / "state.safetensors").write_text("not a tensor file")
    err = _evaluate(capsys, ckpt)
    assert "state.safetensors is missing or does not match the sha256" in err


def test_support_file_that_is_not_utf8(ckpt, tmp_path, capsys):
    support = tmp_path / "s.txt"
    support.write_bytes(b"the\ncaf\xe9\n")
    argv = ["adapt", "--checkpoint", str(ckpt), "--support", str(support)]
    assert main([*argv, "--out", str(tmp_path / "a.safetensors")]) == 1
    err = capsys.readouterr().err
    assert f"support file {support}: line 2 is not valid UTF-8 (byte 0xe9 at column 4)" in err


def test_local_train_on_a_corrupt_shard(tmp_path):
    shards = tmp_path / "s"
    assert (
        main(
            ["shards", "build", "sinusoid", "--out", str(shards), "--train-tasks", "4"]
            + ["--val-tasks", "2", "--test-tasks", "2", "--points", "12"]
        )
        == 0
    )
    for f in shards.glob("train-*.parquet"):
        raw = bytearray(f.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        f.write_bytes(bytes(raw))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "pipeline.local_train", str(REPO / "configs/smoke.yaml")]
    cmd += [f"data.uri={shards}", "outer.steps=2", "data.k_support=3", "data.k_query=3"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "checksum mismatch" in done.stderr and "Traceback" not in done.stderr
