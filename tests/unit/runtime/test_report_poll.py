"""Steps never wait on Ray Train's 2 s report poll, on any cluster: the driver sets the poll
interval that Train V2 hands to its controller (embedded, submitted job, launcher, KubeRay)."""

import os

from pipeline.runtime import launch


def test_driver_sets_a_fast_report_poll_unless_the_user_chose_one(monkeypatch):
    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    launch.fast_report_poll()
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.5"
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "3")
    launch.fast_report_poll()
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "3"


def test_train_v2_propagates_the_variable_to_its_controller():
    # the mechanism the fix relies on: Train V2 copies these from the driver at fit()
    from ray.train.v2._internal.constants import ENV_VARS_TO_PROPAGATE

    assert "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S" in ENV_VARS_TO_PROPAGATE


def test_the_process_that_builds_the_trainer_sets_it_too(monkeypatch, tmp_path):
    # a Tune trial builds and fits its trainer in a trial actor on the cluster, a process that
    # never ran `connect` and whose node was started without the variable
    from pipeline import config

    monkeypatch.delenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", raising=False)
    cfg = config.load(
        "configs/smoke.yaml",
        [
            "cluster.episode_actors=0",  # no actor: no Ray needed to build the trainer
            f"data.uri={tmp_path / 'shards'}",
            f"checkpoint.storage={tmp_path / 'runs'}",
        ],
    )
    launch.build_trainer(cfg)
    assert os.environ["RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"] == "0.5"
