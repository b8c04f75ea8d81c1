"""The final model as an MLflow model: registered by name, loaded without pickle, same outputs."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from pipeline import config
from pipeline.meta import outer
from pipeline.models import build_model
from pipeline.tracking import make_tracker

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("episode", ["regression", "lm"])
def test_final_model_registers_loads_and_predicts_like_the_module(
    mlflow_server, episode: str, tmp_path: Path
) -> None:
    kind = "mlp" if episode == "regression" else "gru"
    name = f"metaray-{episode}"
    cfg = config.load(
        None,
        [
            f"tracking.uri={mlflow_server.uri}",
            "tracking.experiment=models",
            f"tracking.register_as={name}",
            f"data.episode={episode}",
            f"model.kind={kind}",
            "model.hidden=8",
            "data.max_len=12",
        ],
    )
    model = build_model(cfg.model, cfg.data)
    state = outer.init_state(model, cfg.inner, cfg.outer, seed=3)
    tracker = make_tracker(cfg.tracking)
    tracker.start("model", config.flat_params(cfg))
    # what the trainer hands over: the checkpoint's flat state (params/.., lrs/.., opt/..)
    weights = outer.state_to_tensors(state)
    if episode == "lm":  # the trainer's form: bare params under "params."
        weights = {f"params.{k}": v for k, v in state.params.items()}
    tracker.log_model(weights, config.to_dict(cfg))
    tracker.end()

    client = MlflowClient(mlflow_server.uri)
    (version,) = client.search_model_versions(f"name='{name}'")
    assert version.run_id == tracker.run_id
    mlflow.set_tracking_uri(mlflow_server.uri)
    # dst_path: MLflow's own default is a fresh temp dir that it never removes
    loaded = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}", dst_path=str(tmp_path))

    params = dict(state.params)
    if episode == "regression":
        xs = [-1.0, 0.0, 2.5]
        x = torch.tensor(xs).reshape(1, -1, 1)
        want = model.functional(params, x, torch.ones(1, 3)).reshape(-1)
        got = loaded.predict({"x": xs, "y": [0.0] * 3, "support": [False] * 3})
        assert got["y_pred_meta_init"].tolist() == pytest.approx(want.tolist(), abs=1e-6)
    else:
        got = loaded.predict({"text": ["hello", "zzzzzzzzzz", "a"], "support": [False] * 3})
        # bits per byte of an untrained byte model: near log2(259) = 8.02, and text-dependent
        assert all(7.0 < v < 9.5 for v in got["bits_per_byte_meta_init"])
        assert len({round(float(v), 6) for v in got["bits_per_byte_meta_init"]}) == 3


def test_the_logged_model_adapts_in_a_fresh_process_with_pinned_requirements(
    mlflow_server, tmp_path
) -> None:
    """What a user of the registry gets: a model that loads without metaray installed (its
    code travels with it), takes support rows, adapts, and scores the others lower."""
    import json
    import os
    import subprocess
    import sys

    cfg = config.load(
        None,
        [
            f"tracking.uri={mlflow_server.uri}",
            "tracking.experiment=fresh",
            "data.episode=lm",
            "model.kind=gru",
            "model.hidden=16",
            "data.max_len=12",
            "inner.lr=0.5",
        ],
    )
    model = build_model(cfg.model, cfg.data)
    state = outer.init_state(model, cfg.inner, cfg.outer, seed=3)
    tracker = make_tracker(cfg.tracking)
    tracker.start("fresh", config.flat_params(cfg))
    tracker.log_model(
        {f"params.{k}": v for k, v in state.params.items()}, config.to_dict(cfg), step=7
    )
    tracker.end()
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(tracker.run_id)
    (logged,) = client.search_logged_models([run.info.experiment_id])
    script = f"""
import json, mlflow, pandas as pd
mlflow.set_tracking_uri({mlflow_server.uri!r})
m = mlflow.pyfunc.load_model({logged.model_uri!r}, dst_path=".")
import pipeline
df = pd.DataFrame({{"text": ["abab", "abba", "baba", "abab", "baab"],
                   "support": [True, True, True, False, False]}})
out = m.predict(df, params={{"steps": 5}})
print(json.dumps({{"code": pipeline.__file__, "sig": str(m.metadata.signature.inputs),
                  "after": out["bits_per_byte"].tolist(),
                  "before": out["bits_per_byte_meta_init"].tolist()}}))
"""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    assert "/code/pipeline/" in got["code"]  # the model's own copy of the project's code
    assert "support" in got["sig"] and "text" in got["sig"]
    assert len(got["after"]) == 2  # the two query rows
    assert all(a < b - 0.3 for a, b in zip(got["after"], got["before"], strict=True))
    from mlflow.artifacts import download_artifacts

    path = download_artifacts(
        artifact_uri=f"{logged.artifact_location}/requirements.txt", dst_path=str(tmp_path)
    )
    text = Path(path).read_text()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert lines and all("==" in ln for ln in lines), lines  # every requirement pinned
    assert not any(ln.split("==")[0] == "metaray" for ln in lines)


def test_mlflow_models_serve_answers_one_adapting_request(tmp_path) -> None:
    """`mlflow models serve --env-manager local` on 127.0.0.1: one request with support rows."""
    import json
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = config.load(
        None,
        [
            f"tracking.uri={uri}",
            "tracking.experiment=serve",
            "data.episode=lm",
            "model.kind=gru",
            "model.hidden=8",
            "data.max_len=12",
        ],
    )
    model = build_model(cfg.model, cfg.data)
    state = outer.init_state(model, cfg.inner, cfg.outer, seed=1)
    tracker = make_tracker(cfg.tracking)
    tracker.start("serve", config.flat_params(cfg))
    tracker.log_model({f"params.{k}": v for k, v in state.params.items()}, config.to_dict(cfg))
    tracker.end()
    (logged,) = MlflowClient(uri).search_logged_models([tracker.experiment_id])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bindir = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}", MLFLOW_TRACKING_URI=uri)
    env["TMPDIR"] = str(tmp_path)  # where `serve` downloads the model (and leaves it)
    cmd = [f"{bindir}/mlflow", "models", "serve", "-m", logged.model_uri, "--env-manager"]
    cmd += ["local", "-h", "127.0.0.1", "-p", str(port)]
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        cmd, env=env, cwd=tmp_path, stdout=log, stderr=log, start_new_session=True
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{base}/ping", timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (
                    tmp_path / "serve.log"
                ).read_text()[-3000:]
                time.sleep(0.5)
        body = {
            "dataframe_split": {
                "columns": ["text", "support"],
                "data": [["hello", True], ["help", True], ["hold", False]],
            },
            "params": {"steps": 3},
        }
        req = urllib.request.Request(
            f"{base}/invocations",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        (pred,) = json.loads(urllib.request.urlopen(req, timeout=60).read())["predictions"]
        assert set(pred) == {"bits_per_byte", "bits_per_byte_meta_init"}
        assert 6.0 < pred["bits_per_byte_meta_init"] < 10.0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the CLI and the uvicorn it started
        proc.wait(timeout=30)
        log.close()
