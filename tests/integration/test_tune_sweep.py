"""A 3-trial ASHA sweep on a real local Ray cluster, tracked in a real `mlflow server`.

One sweep (each trial trains in its own Tune process: `tune.trial_runs=auto`) serves every
assertion: the parent MLflow run has the 3 trials as children with their sampled params, and
records the best one; the best config YAML loads with `pipeline.config.load` and trains as a
Ray Train run with the best trial's very losses; rerunning the sweep resumes it
(`Tuner.restore`) instead of starting new trials.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import checkpoint, config
from pipeline.runtime.launch import run_training
from pipeline.runtime.tune import in_trial, run_sweep
from pipeline.runtime.tune_config import load_sweep

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def test_asha_sweep_parent_children_best_config_and_resume(
    ray_cluster, smoke_shards: Path, mlflow_server, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    base, sweep = load_sweep(
        ROOT / "configs/tune_smoke.yaml",
        [
            f"data.uri={smoke_shards}",
            f"checkpoint.storage={tmp_path / 'runs'}",
            f"tracking.uri={mlflow_server.uri}",
            "tracking.experiment=sweep-it",
            f"tune.storage={tmp_path / 'tune'}",
        ],
    )
    result = run_sweep(base, sweep, quiet=True)
    assert len(result.rows) == 3
    assert result.concurrency == 2  # 2 CPUs, 1 CPU per trial: two side by side
    assert {r.state for r in result.rows} <= {"DONE", "STOPPED"}
    best = result.best
    assert best is not None and best.state == "DONE"
    assert best.best == min(r.best for r in result.rows)
    assert best.checkpoint and Path(best.checkpoint).is_dir()

    # MLflow: one parent, the 3 trials as its children, each with its sampled values
    client = MlflowClient(mlflow_server.uri)
    exp = client.get_experiment_by_name("sweep-it")
    parent = client.get_run(result.parent_run_id)
    assert parent.info.run_name == "tune-smoke" and parent.info.status == "FINISHED"
    children = client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    by_name = {c.info.run_name: c for c in children}
    assert set(by_name) == {r.run_name for r in result.rows}
    for row in result.rows:
        child = by_name[row.run_name]
        assert float(child.data.params["inner.lr"]) == pytest.approx(row.values["inner.lr"])
        assert float(child.data.params["outer.lr"]) == pytest.approx(row.values["outer.lr"])
        assert child.data.tags["tune.state"] == row.state
        # ends with the scheduler's word; a stopped trial keeps the validations it reported
        assert child.info.status == {"DONE": "FINISHED", "STOPPED": "KILLED"}[row.state]
        assert "val/loss_post_mse" in child.data.metrics, (row.state, child.data.metrics)
    assert parent.data.tags["best_trial"] == best.trial_id
    assert parent.data.tags["best_child_run_id"] == by_name[best.run_name].info.run_id
    assert parent.data.metrics["best_val_loss_post"] == pytest.approx(best.best)
    assert {"best_config.yaml", "trials.txt"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }

    # the best config: loads with pipeline.config.load, carries the best values, trains as is
    best_cfg = config.load(result.best_config_path)
    assert best_cfg.inner.lr == pytest.approx(best.values["inner.lr"])
    assert best_cfg.outer.lr == pytest.approx(best.values["outer.lr"])
    assert best_cfg.tracking.parent_run_id is None
    trained = run_training(best_cfg, quiet=True)
    assert trained.steps == best_cfg.outer.steps
    # the trials trained in their own processes (tune.trial_runs=auto: 1 worker, in-worker
    # episodes); the same config as a Ray Train run takes the very same steps
    assert in_trial(base, sweep)
    run_dir = Path(best_cfg.checkpoint.storage) / best_cfg.checkpoint.run_name
    as_train = checkpoint.load(checkpoint.find(str(run_dir), select="last").path).history
    as_trial = checkpoint.load(best.checkpoint).history
    assert [h["loss_post"] for h in as_trial] == [h["loss_post"] for h in as_train]

    # rerun: Tuner.restore finds the finished sweep, no new trials, same parent run
    again = run_sweep(base, sweep, quiet=True)
    assert sorted(r.trial_id for r in again.rows) == sorted(r.trial_id for r in result.rows)
    assert again.parent_run_id == result.parent_run_id
    assert again.best.trial_id == best.trial_id
    assert (
        len(
            client.search_runs(
                [exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
            )
        )
        == 3
    )
