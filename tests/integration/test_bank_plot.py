"""`metaray bank inspect --plot` logs the descriptor map to a real `mlflow server`."""

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import main
from tests.unit.test_descriptor_map import seed_language_bank

pytestmark = pytest.mark.integration


def test_inspect_plot_logs_the_png_to_mlflow(mlflow_server, tmp_path, capsys):
    uri, png = str(tmp_path / "bank"), tmp_path / "bank-map.png"
    seed_language_bank(uri)
    args = ["bank", "inspect", "--uri", uri, "--plot", str(png), "--json"]
    assert main(args + [f"tracking.uri={mlflow_server.uri}", "tracking.experiment=bank-it"]) == 0
    run_id = json.loads(capsys.readouterr().out)["plot"]["run_id"]
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.params["bank.entries"] == "6"
    assert [a.path for a in client.list_artifacts(run_id, "bank")] == ["bank/bank-map.png"]
    got = client.download_artifacts(run_id, "bank/bank-map.png", str(tmp_path / "dl"))
    assert Path(got).read_bytes() == png.read_bytes()
