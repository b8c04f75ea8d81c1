"""Checkpoints on S3 (a real moto server on 127.0.0.1): the finder reads a temporary local copy
and leaves nothing behind, the corrupt candidates it skips included."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from pipeline import checkpoint
from pipeline.meta.outer import MetaState

pytestmark = pytest.mark.integration


def _upload(s3_server, local: Path, bucket: str, prefix: str) -> None:
    client = s3_server.client()
    for f in local.rglob("*"):
        if f.is_file():
            client.upload_file(str(f), bucket, f"{prefix}/{f.relative_to(local)}")


def _state(step: int) -> MetaState:
    params = {"w": torch.full((4, 3), float(step))}
    return MetaState(params, {"w": torch.tensor(0.01)}, {}, step)


def test_s3_checkpoint_copies_are_removed_after_use_skipped_ones_too(
    s3_server, tmp_path, monkeypatch
):
    run = tmp_path / "run"
    for s in (2, 4):
        checkpoint.save(run / f"checkpoint_2026-12-01_00-00-0{s}", _state(s), config={})
    newest = run / "checkpoint_2026-12-01_00-00-04" / checkpoint.TENSORS
    newest.write_bytes(newest.read_bytes()[:-8] + b"XXXXXXXX")  # fails its sha256
    bucket = s3_server.bucket()
    _upload(s3_server, run, bucket, "runs/r")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the copies go

    with checkpoint.located(f"s3://{bucket}/runs/r", s3_endpoint=s3_server.endpoint) as found:
        assert found.copied and Path(found.path).parent == scratch
        assert found.why == "latest intact (step 2)" and len(found.skipped) == 1
        assert checkpoint.load(found.path).state.params["w"][0, 0].item() == 2.0
        assert list(scratch.iterdir()) == [Path(found.path)]  # the skipped copy is gone already
    assert list(scratch.iterdir()) == []
    # a local run is read in place: nothing copied, nothing removed
    with checkpoint.located(str(run)) as found:
        assert not found.copied and Path(found.path).parent == run
    assert Path(found.path).is_dir()
