"""Relative local paths in a run's config are made absolute on the driver: the Ray workers run
in their own working directory, where `runs/quickstart-pretrain` would name nothing."""

from __future__ import annotations

from pathlib import Path

from pipeline import config
from pipeline.runtime.launch import absolute


def test_local_relative_paths_become_absolute_and_uris_stay(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = config.load(
        None,
        [
            "data.uri=data/lang",
            "checkpoint.storage=runs",
            "checkpoint.init_from=runs/pretrain",
            "checkpoint.resume_from=s3://bucket/runs/old",
            "bank.snapshot_uri=bank/mine",
        ],
    )
    got = absolute(cfg)
    assert got.data.uri == str(tmp_path / "data/lang")
    assert got.checkpoint.storage == str(tmp_path / "runs")
    assert got.checkpoint.init_from == str(tmp_path / "runs/pretrain")
    assert got.checkpoint.resume_from == "s3://bucket/runs/old"  # a URI is left as written
    assert Path(got.checkpoint.init_from).is_absolute()
    assert got.bank.snapshot_uri == str(tmp_path / "bank/mine")  # the bank actor's cwd is Ray's


def test_unset_init_from_stays_unset() -> None:
    got = absolute(config.load(None, []))
    assert got.checkpoint.init_from is None and got.bank.snapshot_uri is None
