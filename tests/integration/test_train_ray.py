"""Ray Train on a real local cluster (2 CPUs), smoke config. Three fits shared by the tests
(worker start-up costs ~13 s each, so every assertion reuses them):

- `killed`: 2 workers; rank 1's process is SIGKILLed at step 3 (after the step-2 checkpoint);
  FailureConfig replaces the worker group, which resumes from the checkpoint.
- `single`: 1 worker, undisturbed, same seed.
- `extended`: `killed`'s run name and storage again with more steps: resumes where it ended.
- `in_worker`: as `single` with `cluster.episode_actors=0` (the worker builds its episodes).
"""

from __future__ import annotations

import pytest
import torch

from pipeline import checkpoint as ckpt
from pipeline import config

pytestmark = pytest.mark.integration

STEPS = 6


def _cfg(
    shards, storage, name: str, workers: int, steps: int = STEPS, *extra: str
) -> config.RunConfig:
    return config.load(
        "configs/smoke.yaml",
        [
            f"data.uri={shards}",
            f"checkpoint.storage={storage}",
            f"checkpoint.run_name={name}",
            f"cluster.num_workers={workers}",
            f"outer.steps={steps}",
            "checkpoint.every=2",
            *extra,
        ],
    )


@pytest.fixture(scope="module")
def runs(ray_cluster, smoke_shards, tmp_path_factory):
    from pipeline.runtime.launch import run_training
    from pipeline.runtime.train_loop import FAULT_ENV

    storage = tmp_path_factory.mktemp("runs")
    marker = storage / "killed-once"
    out = {"marker": marker}
    fault = {FAULT_ENV: f"3:1:{marker}"}
    out["killed"] = run_training(_cfg(smoke_shards, storage, "k", 2), worker_env=fault)
    out["single"] = run_training(_cfg(smoke_shards, storage, "s", 1))
    out["extended"] = run_training(_cfg(smoke_shards, storage, "k", 2, steps=STEPS + 2))
    in_worker = _cfg(smoke_shards, storage, "w", 1, STEPS, "cluster.episode_actors=0")
    out["in_worker"] = run_training(in_worker)
    return out


def _params(result) -> dict[str, torch.Tensor]:
    with result.result.checkpoint.as_directory() as d:
        return ckpt.load(d).state.params


def _losses(result, key: str) -> list[float]:
    return [h[key] for h in result.history]


def test_killed_worker_is_replaced_and_run_matches_undisturbed(runs):
    killed, single = runs["killed"], runs["single"]
    assert runs["marker"].exists(), "the planted failure fired"
    assert killed.steps == STEPS and [h["step"] for h in killed.history] == list(range(1, 7))
    a, b = _params(killed), _params(single)
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_one_and_two_workers_follow_the_same_loss_trajectory(runs):
    two, one = runs["killed"], runs["single"]
    for key in ("loss_pre", "loss_post"):
        assert _losses(two, key) == pytest.approx(_losses(one, key), rel=1e-4)
    assert two.metrics["val_loss_post"] == pytest.approx(one.metrics["val_loss_post"], rel=1e-4)
    # Something was learned: validation loss improves with one inner step.
    assert one.metrics["val_loss_post"] < one.metrics["val_loss_pre"]


def test_in_worker_episodes_give_the_episode_actors_losses(runs):
    """`cluster.episode_actors=0` builds the same batches in the worker: the same run."""
    actors, in_worker = runs["single"], runs["in_worker"]  # smoke.yaml: 2 episode actors
    assert in_worker.steps == STEPS
    for key in ("loss_pre", "loss_post", "val_loss_post"):
        got = [h.get(key) for h in in_worker.history]
        assert got == [h.get(key) for h in actors.history], key  # bit for bit
    assert 0 <= in_worker.metrics["data_wait_frac"] < 1


def test_same_name_and_storage_resumes_with_its_checkpointed_config(runs, smoke_shards):
    killed, ext = runs["killed"], runs["extended"]
    assert ext.steps == STEPS + 2
    assert [h["step"] for h in ext.history] == list(range(1, STEPS + 3))
    assert ext.history[:STEPS] == killed.history  # the first 6 steps came from the checkpoint
    with ext.result.checkpoint.as_directory() as d:
        loaded = ckpt.load(d)
        files = sorted(p.name for p in __import__("pathlib").Path(d).iterdir())
    assert files == ["meta.json", "state.safetensors"]
    assert loaded.state.step == STEPS + 2
    assert config.from_dict(loaded.config).outer.steps == STEPS + 2
    assert loaded.config["data"]["uri"] == str(smoke_shards)


def test_corrupt_shard_stops_the_run_naming_the_file(ray_cluster, smoke_shards, tmp_path):
    import shutil

    from pipeline.data.shards import clear_cache
    from pipeline.errors import ShardError
    from pipeline.runtime.launch import run_training

    bad = tmp_path / "bad"
    shutil.copytree(smoke_shards, bad)
    for victim in bad.glob("train-*.parquet"):  # every train file: the first step hits one
        raw = bytearray(victim.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        victim.write_bytes(bytes(raw))
    clear_cache()
    cfg = config.load(
        "configs/smoke.yaml",
        [
            f"data.uri={bad}",
            f"checkpoint.storage={tmp_path / 'runs'}",
            "checkpoint.max_failures=0",
            "cluster.num_workers=1",
        ],
    )
    with pytest.raises(ShardError, match=r"train-\S+\.parquet: checksum mismatch") as info:
        run_training(cfg, quiet=True)
    assert "Traceback" not in str(info.value)  # the message alone, not Ray's wrapping
