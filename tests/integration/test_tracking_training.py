"""`metaray train` runs tracked in a real `mlflow server`, on a real local Ray cluster.

A smoke run's params (secrets redacted), metric history, plots and final model read back
through `MlflowClient`; a server killed mid-run does not stop training, and what it missed
is replayed from the spilled buffer once it is back.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import pytest

from pipeline import config
from pipeline.runtime.launch import run_training
from tests.fixtures.mlflow_server import start_mlflow_server

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SECRET = "Sup3rS3cretPw"
STEPS = 300


def _cfg(shards: Path, tmp: Path, uri: str, experiment: str, *extra: str) -> config.RunConfig:
    return config.load(
        ROOT / "configs/smoke.yaml",
        [
            f"data.uri={shards}",
            f"checkpoint.storage={tmp / 'runs'}",
            "tracking.enabled=true",
            f"tracking.uri={uri}",
            f"tracking.experiment={experiment}",
            f"bank.snapshot_uri=http://bank:{SECRET}@127.0.0.1:1/snapshots",
            *extra,
        ],
    )


def _only_run(client, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    (run,) = client.search_runs([exp.experiment_id])
    return run


def test_smoke_run_reads_back_params_metrics_plots_and_model(
    ray_cluster, smoke_shards: Path, mlflow_server, tmp_path: Path, monkeypatch
) -> None:
    import mlflow
    from mlflow import MlflowClient

    cfg = _cfg(smoke_shards, tmp_path, mlflow_server.uri, "train-it")
    # the driver's command line as `metaray train` sees it (the model is logged on a Ray
    # worker, whose own argv is Ray's worker script)
    command = ["metaray", "train", "--config", "configs/smoke.yaml"]
    monkeypatch.setattr(sys, "argv", [str(Path(sys.executable).parent / "metaray"), *command[1:]])
    result = run_training(cfg, quiet=True)
    assert result.steps == cfg.outer.steps == 6

    client = MlflowClient(mlflow_server.uri)
    run = _only_run(client, "train-it")
    assert run.info.status == "FINISHED" and run.info.run_name == "smoke"
    params = run.data.params
    assert params["inner.lr"] == str(cfg.inner.lr) and params["outer.meta_batch"] == "4"
    assert params["bank.snapshot_uri"] == "http://***@127.0.0.1:1/snapshots"
    assert SECRET not in repr(params)

    # grouped names, the unit in the name, nothing logged twice
    names = set(run.data.metrics)
    assert {"train/loss_post_mse", "train/loss_pre_mse", "val/loss_post_mse"} <= names
    assert {"system/episodes_per_s", "system/peak_rss_mb", "system/data_wait_frac"} <= names
    assert not names & {"loss", "loss_post", "val_loss_post", "val_loss_inner_0"}
    tags = run.data.tags
    assert tags["metaray.kind"] == "train" and tags["mlflow.source.type"] == "LOCAL"
    assert "metaray.command" in tags and "smoke" in tags["mlflow.note.content"]
    assert tags["mlflow.source.name"] == "metaray" and tags["metaray.command"] == " ".join(command)
    (dataset,) = run.inputs.dataset_inputs
    assert dataset.dataset.name == smoke_shards.name and len(dataset.dataset.digest) == 32
    assert {t.key: t.value for t in dataset.tags} == {"mlflow.data.context": "training"}
    hist = client.get_metric_history(run.info.run_id, "train/loss_post_mse")
    loss = {m.step: m.value for m in hist}
    assert sorted(loss) == [1, 2, 3, 4, 5, 6]
    assert [loss[s] for s in sorted(loss)] == pytest.approx(
        [h["loss_post"] for h in result.history]
    )
    val = client.get_metric_history(run.info.run_id, "val/loss_post_mse")
    assert sorted(m.step for m in val) == [3, 6]  # outer.val_every=3
    assert val[-1].value == pytest.approx(result.metrics["val_loss_post"])
    assert client.get_metric_history(run.info.run_id, "system/episodes_per_s")[0].value > 0

    paths = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "plots", "checkpoint"} <= paths
    # what MLflow keeps whole (config, final checkpoint) carries no credentials either
    ckpt_dir = client.download_artifacts(run.info.run_id, "checkpoint", str(tmp_path))
    ckpt_meta = (Path(ckpt_dir) / "meta.json").read_text()
    assert SECRET not in ckpt_meta and '"step": 6' in ckpt_meta
    plots = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == {"plots/learning_curves.png", "plots/inner_steps.png"}
    yaml_path = client.download_artifacts(run.info.run_id, "config.yaml", str(tmp_path))
    assert SECRET not in Path(yaml_path).read_text()
    logged = config.read_yaml(yaml_path)
    assert logged["inner"] == config.to_dict(cfg)["inner"]

    # the logged model is the trained one: it predicts like the final checkpoint's params
    import torch

    from pipeline import checkpoint as ckpt
    from pipeline.models import build_model

    with result.result.checkpoint.as_directory() as d:
        params_final = ckpt.load(d).state.params
    model = build_model(cfg.model, cfg.data)
    xs = [-2.0, 0.5, 3.0]
    want = model.functional(params_final, torch.tensor(xs).reshape(1, 3, 1), torch.ones(1, 3))
    mlflow.set_tracking_uri(mlflow_server.uri)
    (logged_model,) = client.search_logged_models([run.info.experiment_id])
    # the model names the metaray command it came from, not the Ray worker that logged it
    assert logged_model.source_run_id == run.info.run_id
    model_tags = client.get_logged_model(logged_model.model_id).tags
    for key in ("mlflow.source.name", "mlflow.source.type", "mlflow.user", "metaray.command"):
        assert model_tags[key] == tags[key], key
    if "mlflow.source.git.commit" in tags:
        assert model_tags["mlflow.source.git.commit"] == tags["mlflow.source.git.commit"]
    assert "worker" not in repr(model_tags)
    got = mlflow.pyfunc.load_model(logged_model.model_uri, dst_path=str(tmp_path)).predict(
        {"x": xs, "y": [0.0] * 3, "support": [False] * 3}
    )
    assert got["y_pred_meta_init"].tolist() == pytest.approx(want.reshape(-1).tolist(), abs=1e-5)

    # `metaray evaluate` of that run: its own run, nested under the training run, opened
    # before the work (its duration is the evaluation's), results as a table, CIs as metrics
    from pipeline.eval import run as eval_run
    from pipeline.eval.methods import EvalSpec

    spec = EvalSpec(steps=(0, 1), shots=(5,), k_query=5, episodes=2)
    opts = eval_run.Options(
        checkpoint=str(tmp_path / "runs" / "smoke"),
        shards=str(smoke_shards),
        out_dir=str(tmp_path / "eval"),
        spec=spec,
        baseline_steps=2,
        lr_grid=(0.01,),
        tracking=True,
    )
    eval_command = ["metaray", "evaluate", "--checkpoint", "runs/smoke"]
    monkeypatch.setattr(
        sys, "argv", [str(Path(sys.executable).parent / "metaray"), *eval_command[1:]]
    )
    eval_run.run(opts, log=lambda _: None)
    (ev,) = client.search_runs(
        [run.info.experiment_id], "tags.`metaray.kind` = 'evaluate'", max_results=5
    )
    assert ev.data.tags["mlflow.parentRunId"] == run.info.run_id
    assert ev.data.tags["metaray.training_run_id"] == run.info.run_id
    assert ev.info.status == "FINISHED"
    # the same source, user and commit as the training run's (the run page's header)
    assert ev.data.tags["metaray.command"] == " ".join(eval_command)
    for key in ("mlflow.source.name", "mlflow.user", "mlflow.source.git.commit"):
        assert ev.data.tags.get(key) == tags.get(key), key
    # the shard set it evaluated on, as the training run's input: the same manifest digest
    (ev_input,) = ev.inputs.dataset_inputs
    assert ev_input.dataset.digest == dataset.dataset.digest
    assert ev_input.dataset.name == smoke_shards.name
    assert {t.key: t.value for t in ev_input.tags} == {"mlflow.data.context": "evaluation"}
    profile = json.loads(ev_input.dataset.profile)
    assert profile["family"] == "sinusoid" and profile["test"]["tasks"] == 4
    written_ms = (tmp_path / "eval" / "eval.json").stat().st_mtime * 1000
    assert ev.info.start_time < written_ms  # opened before the results existed, not after
    names = set(ev.data.metrics)
    assert {"eval/k5/meta_init", "eval/k5/meta_init/ci_lo", "eval/k5/meta_init/ci_hi"} <= names
    assert "eval/k5/meta_init_minus_random_init" in names
    table = client.load_table(
        run.info.experiment_id, "evaluation/results.json", run_ids=[ev.info.run_id]
    )
    assert {"meta-init", "random init"} <= set(table["method"])
    plots = {a.path for a in client.list_artifacts(ev.info.run_id, "evaluation")}
    assert "evaluation/eval_k5.png" in plots
    assert not client.list_artifacts(ev.info.run_id, "plots")  # no meta-step curves here


def test_tracking_server_killed_mid_run_training_completes(
    ray_cluster, smoke_shards: Path, tmp_path: Path, monkeypatch
) -> None:
    from mlflow import MlflowClient

    from pipeline.tracking import replay

    server = start_mlflow_server(tmp_path / "srv")
    work = tmp_path / "work"  # where the user started metaray: the default buffer location
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("METARAY_TRACKING_BUFFER_DIR", raising=False)
    buffer = work / "mlflow-buffer"
    try:
        # long enough (a few seconds) that the server dies while steps are still running
        cfg = _cfg(
            smoke_shards,
            tmp_path,
            server.uri,
            "outage",
            f"outer.steps={STEPS}",
            "outer.val_every=100",
            "checkpoint.every=100",
            "tracking.flush_timeout_s=2",
        )
        client = MlflowClient(server.uri)

        def kill_once_steps_are_logged() -> None:  # the server goes away mid-run
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                exp = client.get_experiment_by_name("outage")
                runs = client.search_runs([exp.experiment_id]) if exp else []
                if runs and client.get_metric_history(runs[0].info.run_id, "train/loss_post_mse"):
                    break
                time.sleep(0.1)
            server.stop()

        killer = threading.Thread(target=kill_once_steps_are_logged, daemon=True)
        killer.start()
        result = run_training(cfg, quiet=True)
        killer.join(timeout=5)
        assert result.steps == STEPS  # training finished although the server was gone
        (spilled,) = buffer.glob("*.jsonl")  # what the server missed, kept on disk
        assert result.spilled == [str(spilled)]  # and the summary gives the replay command
        from pipeline.runtime.launch import summary

        assert f"python -m pipeline.tracking replay {spilled}" in summary(cfg, result)
        artifacts = [json.loads(ln).get("path") for ln in spilled.read_text().splitlines()]
        assert all(p.startswith(str(buffer)) for p in artifacts if p)  # not in $TMPDIR

        server.start()  # back on the same port and database
        run_id = replay(spilled)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        steps = {m.step for m in client.get_metric_history(run_id, "train/loss_post_mse")}
        assert sorted(steps) == list(range(1, STEPS + 1))
        assert "plots" in {a.path for a in client.list_artifacts(run_id)}
        assert client.search_logged_models([run.info.experiment_id])  # the final model too
    finally:
        server.stop()
