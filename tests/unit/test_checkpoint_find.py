"""One checkpoint finder for every command (`pipeline.checkpoint.find`): a checkpoint or a run
directory, its best on validation by default, the newest intact one otherwise, corrupt ones
skipped and named; `init_from` parameters; what a restarted run resumes from."""

from __future__ import annotations

import pytest
import torch

from pipeline import checkpoint
from pipeline.errors import CheckpointError
from pipeline.meta.outer import MetaState
from pipeline.runtime import selection


def _state(step: int, fill: float = 0.0) -> MetaState:
    params = {"w": torch.full((4, 3), fill), "b": torch.full((3,), fill)}
    return MetaState(params, {k: torch.tensor(0.01) for k in params}, {}, step)


def _run(tmp_path, steps=(2, 4, 6)):
    run = tmp_path / "runs" / "r"
    for s in steps:
        checkpoint.save(run / f"checkpoint_2026-12-01_00-00-0{s}", _state(s, s), config={})
    return run


def test_run_directory_gives_newest_and_a_file_or_missing_path_is_named(tmp_path):
    run = _run(tmp_path)
    found = checkpoint.find(str(run))
    assert found.why == "latest intact (step 6)" and found.skipped == []
    assert checkpoint.load(found.path).state.step == 6
    with pytest.raises(CheckpointError, match="is a file: give a checkpoint directory"):
        checkpoint.find(str(run / "checkpoint_2026-12-01_00-00-06" / "meta.json"))
    with pytest.raises(CheckpointError, match="no checkpoint found: .* does not exist"):
        checkpoint.find(str(tmp_path / "nope"))


def test_best_on_validation_is_the_default_and_last_on_request(tmp_path):
    run = _run(tmp_path)
    selection.write_best(str(run), _state(2, 2), config={}, history=[], best_val={"loss": 0.5})
    selection.write_best(str(run), _state(4, 4), config={}, history=[], best_val={"loss": 0.25})
    assert sorted(p.name for p in run.glob("best-*")) == ["best-step00000004"]  # old one gone
    found = checkpoint.find(str(run))
    assert found.why == "best on validation (step 4, val_loss_post 0.25)"
    assert float(checkpoint.load(found.path).state.params["w"][0, 0]) == 4.0
    assert checkpoint.find(str(run), select="last").why == "latest intact (step 6)"


def test_a_language_models_best_is_named_in_bits_per_byte(tmp_path):
    # The checkpoint stores nats; the console and MLflow show bits per byte, so the model line
    # must too, or a user reads two different numbers for the same validation loss.
    run = _run(tmp_path, steps=(2,))
    lm = {"data": {"episode": "lm"}}
    selection.write_best(str(run), _state(2, 2), config=lm, history=[], best_val={"loss": 2.0})
    assert checkpoint.find(str(run)).why == "best on validation (step 2, val_loss_post 2.885 bpb)"


def test_a_copied_checkpoint_keeps_the_newest_two_and_resumes(tmp_path):
    run = tmp_path / "runs" / "trial"
    for step in (2, 4, 6):  # as a Tune trial that trains in its own process writes them
        src = checkpoint.save(tmp_path / f"src{step}", _state(step, step), config={})
        where = selection.copy_checkpoint(
            str(run), f"checkpoint_{step:06d}", str(src), prefix="checkpoint_", keep=2
        )
        assert where == str(run / f"checkpoint_{step:06d}")
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint_000004", "checkpoint_000006"]
    loaded, note = selection.resume(str(run))
    assert loaded is not None and loaded.state.step == 6 and "latest intact (step 6)" in note


def test_corrupt_newest_is_skipped_and_named_and_resume_says_so(tmp_path):
    run = _run(tmp_path)
    newest = run / "checkpoint_2026-12-01_00-00-06" / "state.safetensors"
    newest.write_bytes(b"garbage")
    loaded, note = selection.resume(str(run))
    assert loaded is not None and loaded.state.step == 4
    assert "resumed from the run's latest intact (step 4)" in note
    assert "skipped (did not verify)" in note and str(newest) in note
    # an empty run directory is a fresh start; resume_from then applies
    other = _run(tmp_path / "o", steps=(8,))
    loaded, note = selection.resume(str(tmp_path / "fresh"), resume_from=str(other))
    assert loaded.state.step == 8 and "checkpoint.resume_from's" in note
    assert selection.resume(str(tmp_path / "fresh")) == (None, "")


def test_binary_meta_and_non_safetensors_are_messages(tmp_path):
    d = checkpoint.save(tmp_path / "ck", _state(1), config={})
    (d / "meta.json").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(CheckpointError, match="not readable JSON"):
        checkpoint.load(d)
    with pytest.raises(CheckpointError, match="no intact checkpoint"):
        checkpoint.find(str(tmp_path))


def test_init_from_takes_parameters_only_and_checks_shapes(tmp_path):
    run = _run(tmp_path)
    state, where = selection.init_params(_state(0), str(run))
    assert state.step == 0 and float(state.params["w"][0, 0]) == 6.0
    assert "latest intact (step 6)" in where
    from safetensors.torch import save_file

    save_file({"w": torch.ones(4, 3), "b": torch.ones(3)}, str(tmp_path / "mt.safetensors"))
    state, _ = selection.init_params(_state(0), str(tmp_path / "mt.safetensors"))
    assert float(state.params["b"][0]) == 1.0
    save_file({"w": torch.ones(5, 3)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(CheckpointError, match=r"do not fit this model \(differing: b, w\)"):
        selection.init_params(_state(0), str(tmp_path / "bad.safetensors"))
