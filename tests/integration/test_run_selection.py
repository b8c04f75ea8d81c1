"""Which checkpoint a real Ray Train run (local cluster, 1 worker, smoke config) resumes from and
which one is its model. Fits shared by the tests:

- `stop`: outer.lr=0.3 makes validation bounce; `outer.early_stop_patience=2` stops it at step
  12 of 20, its best on validation (step 8) kept as `best-step00000008`, the model named.
- `init`: a new run with `checkpoint.init_from=<stop's run dir>` and a vanishing outer lr:
  it starts from (and so ends at) stop's best parameters.
- `cut` (6 steps) then its newest checkpoint corrupted and the run extended to 8 steps: it
  resumes from the intact step-4 one (saying which it skipped) and ends bit-identical to
  `whole`, the same 8 steps undisturbed. Then the newest folder (step 8) deleted (Ray itself
  would refuse the run directory) and the run extended to 10 steps: it resumes from step 8's
  best-on-validation copy, the newest intact state left.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from pipeline import checkpoint as ckpt
from pipeline import config

pytestmark = pytest.mark.integration


def _cfg(shards, storage, name: str, *extra: str) -> config.RunConfig:
    return config.load(
        "configs/smoke.yaml",
        [
            f"data.uri={shards}",
            f"checkpoint.storage={storage}",
            f"checkpoint.run_name={name}",
            "cluster.num_workers=1",
            "cluster.episode_actors=1",
            "checkpoint.every=2",
            *extra,
        ],
    )


def _newest(run) -> object:
    def step(p) -> int:
        try:
            return int(ckpt.verify(p)["step"])
        except ckpt.CheckpointError:  # the one corrupted above, if Ray has not removed it
            return -1

    return max(run.glob("checkpoint_*"), key=step)


@pytest.fixture(scope="module")
def fits(ray_cluster, smoke_shards, tmp_path_factory):
    from pipeline.runtime.launch import run_training

    storage = tmp_path_factory.mktemp("runs")
    out = {"storage": storage}
    bouncy = ["outer.steps=20", "outer.val_every=2", "outer.lr=0.3"]
    out["stop"] = run_training(
        _cfg(smoke_shards, storage, "stop", *bouncy, "outer.early_stop_patience=2"), quiet=True
    )
    out["init"] = run_training(
        _cfg(
            smoke_shards,
            storage,
            "init",
            "outer.steps=2",
            "outer.lr=1e-12",
            "checkpoint.select=last",
            f"checkpoint.init_from={storage / 'stop'}",
        ),
        quiet=True,
    )
    out["whole"] = run_training(_cfg(smoke_shards, storage, "whole", "outer.steps=8"), quiet=True)
    run_training(_cfg(smoke_shards, storage, "cut", "outer.steps=6"), quiet=True)
    corrupt = _newest(storage / "cut") / "state.safetensors"
    corrupt.write_bytes(corrupt.read_bytes()[:-8] + b"XXXXXXXX")
    out["corrupt"] = corrupt
    out["resumed"] = run_training(_cfg(smoke_shards, storage, "cut", "outer.steps=8"), quiet=True)
    with out["resumed"].result.checkpoint.as_directory() as d:
        out["resumed_params"] = _params(d)  # read now: its folder is deleted next
    shutil.rmtree(_newest(storage / "cut"))
    out["healed"] = run_training(_cfg(smoke_shards, storage, "cut", "outer.steps=10"), quiet=True)
    return out


def _params(path) -> dict[str, torch.Tensor]:
    return ckpt.load(path).state.params


def test_early_stop_keeps_the_best_on_validation_and_names_it(fits):
    stop = fits["stop"]
    assert stop.stopped_early and stop.steps == 12  # of 20
    vals = {int(h["step"]): h["val_loss_post"] for h in stop.history if "val_loss_post" in h}
    best_step = min(vals, key=vals.get)
    run = fits["storage"] / "stop"
    assert [p.name for p in run.glob("best-*")] == [f"best-step{best_step:08d}"]
    assert stop.model.startswith(f"best on validation (step {best_step}, val_loss_post ")
    # every command's finder (evaluate, adapt, init_from) picks that one from the run dir
    found = ckpt.find(str(run))
    assert ckpt.load(found.path).state.step == best_step
    assert ckpt.load(found.path).extra["best_val"]["loss"] == pytest.approx(vals[best_step])


def test_init_from_starts_from_the_other_runs_best(fits):
    best = _params(ckpt.find(str(fits["storage"] / "stop")).path)
    with fits["init"].result.checkpoint.as_directory() as d:
        got = _params(d)
    assert fits["init"].steps == 2
    for k in best:
        torch.testing.assert_close(got[k], best[k], rtol=0, atol=1e-6)


def test_corrupt_newest_checkpoint_resumes_from_the_one_before(fits):
    resumed, whole = fits["resumed"], fits["whole"]
    assert resumed.steps == 8
    assert [int(h["step"]) for h in resumed.history] == list(range(1, 9))
    pa = fits["resumed_params"]
    with whole.result.checkpoint.as_directory() as b:
        pb = _params(b)
    for k in pb:
        assert torch.equal(pa[k], pb[k]), k


def test_deleted_checkpoint_folder_is_no_dead_end(fits):
    healed = fits["healed"]
    assert healed.steps == 10
    assert [int(h["step"]) for h in healed.history] == list(range(1, 11))
    run = fits["storage"] / "cut"
    assert list(run.glob("checkpoint_manager_snapshot.json.stale-*"))
    # step 8's folder is gone, but its best-on-validation copy holds the same state: the run
    # resumes there, and only what Ray tracks of this run (step 10) is left besides the best
    steps = sorted(ckpt.verify(p)["step"] for p in run.glob("checkpoint_*") if p.is_dir())
    assert steps == [10]
    assert [p.name for p in run.glob("best-*")] == ["best-step00000010"]
