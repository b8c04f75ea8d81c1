"""A sweep's Tune state is resumed only when metaray can prove it wrote it (HMAC digests keyed
outside the storage): a planted `tuner.pkl` never runs, a changed or added file is refused by
name, and state metaray signed verifies."""

from __future__ import annotations

import pickle
import stat

import pytest

from pipeline.cli import main
from pipeline.runtime import tune_state


class _Payload:
    """Unpickling this creates a file: the proof that the payload ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(autouse=True)
def _own_key(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv(tune_state.TRUST_ENV, raising=False)


def test_planted_tuner_pkl_is_refused_before_anything_runs(tmp_path, smoke_like, capsys):
    marker = tmp_path / "payload-ran"
    sweep_dir = tmp_path / "tune" / "planted"
    sweep_dir.mkdir(parents=True)
    (sweep_dir / "tuner.pkl").write_bytes(pickle.dumps(_Payload(str(marker))))
    argv = ["tune", "--config", "configs/tune_smoke.yaml", f"data.uri={smoke_like}"]
    argv += [f"tune.storage={tmp_path / 'tune'}", "tune.name=planted", "tracking.enabled=false"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "without metaray's digests" in err and "not resumed" in err and "delete" in err
    assert not marker.exists()


def test_signed_state_verifies_and_any_change_is_named(tmp_path):
    d = tmp_path / "sweep"
    (d / "trial_0").mkdir(parents=True)
    (d / "tuner.pkl").write_bytes(b"state")
    (d / "trial_0" / "params.pkl").write_bytes(b"params")
    (d / "trials").mkdir()
    (d / "trials" / "meta.json").write_text("{}")  # metaray's own checkpoints: not covered
    assert tune_state.sign(str(d)) == 2
    tune_state.verify(str(d))
    assert stat.S_IMODE(tune_state.key_path().stat().st_mode) == 0o600
    (d / "trials" / "meta.json").write_text('{"x": 1}')
    (d / "best_config.yaml").write_text("outer: {lr: 0.1}\n")  # written after the digests
    tune_state.verify(str(d))
    (d / "trial_0" / "params.pkl").write_bytes(b"evil")
    with pytest.raises(tune_state.TuneStateError, match=r"trial_0/params.pkl does not match"):
        tune_state.verify(str(d))
    tune_state.sign(str(d))
    (d / "searcher-state.pkl").write_bytes(b"new")
    with pytest.raises(tune_state.TuneStateError, match=r"searcher-state.pkl is not in"):
        tune_state.verify(str(d))
    # another key (another user, or a forged digest file) proves nothing
    tune_state.sign(str(d))
    tune_state.key_path().write_text("00" * 32)
    with pytest.raises(tune_state.TuneStateError, match="does not match"):
        tune_state.verify(str(d))


@pytest.fixture
def smoke_like(tmp_path):
    rc = main(
        ["shards", "build", "sinusoid", "--out", str(tmp_path / "s"), "--train-tasks", "4"]
        + ["--val-tasks", "2", "--test-tasks", "2", "--points", "20"]
    )
    assert rc == 0
    return tmp_path / "s"
