"""What a user reads: progress lines, units, the noise filter, the closing advice."""

from __future__ import annotations

import io
import json
import math

from pipeline.runtime import console
from pipeline.runtime.train_summary import validation_note
from pipeline.tracking.describe import dataset_input, where_to_look


def test_progress_without_a_terminal_prints_plain_lines_with_rate_and_eta() -> None:
    out = io.StringIO()  # not a TTY: no bar, no control characters
    with console.Progress("train", total=100, stream=out, every_s=0.0) as p:
        p.update(50, loss_bpb=3.21)
        p.update(100, loss_bpb=2.5)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[metaray] train: 50/100 steps (50%), ")
    assert "elapsed" in lines[0] and "steps/s" in lines[0] and "ETA" in lines[0]
    assert lines[0].endswith("| loss_bpb 3.21")
    assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()


def test_plain_progress_is_periodic_not_per_update() -> None:
    out = io.StringIO()
    p = console.Progress("baseline", total=1000, stream=out, every_s=3600)
    for i in range(1, 1000):
        p.update(i)
    assert out.getvalue() == ""  # nothing until the interval passed or the end
    p.update(1000)
    assert out.getvalue().count("\n") == 1


def test_language_model_losses_are_bits_per_byte_under_grouped_names() -> None:
    m = {"step": 10, "loss": 2.0, "loss_pre": 2.0 * math.log(2), "loss_post": math.log(2)}
    m |= {"val_loss_post": 3 * math.log(2), "episodes_per_s": 40.0, "peak_rss_mb": 512.0}
    got = console.display_metrics(m, "lm")
    assert got == {
        "train/loss_pre_bpb": 2.0,
        "train/loss_post_bpb": 1.0,
        "val/loss_post_bpb": 3.0,
        "system/episodes_per_s": 40.0,
        "system/peak_rss_mb": 512.0,
    }
    assert console.display_metrics({"loss_post": 0.5}, "regression") == {"train/loss_post_mse": 0.5}


def test_the_driver_drops_library_noise_and_strips_ray_prefixes(capsys) -> None:
    printed: list[list[str]] = []
    f = console._Follower(lambda data: printed.append(data["lines"]))
    event = console.step_event({"step": 20, "loss_post": math.log(2)}, 100, 0, "lm")
    f(
        {
            "pid": 1,
            "lines": [
                "Reporting training result 1: TrainingReport(checkpoint=None, metrics={})",
                "[2026-12-01 19:56:49,043 E 14897 14968] core_worker.cc:2465: Actor with class "
                "name: 'PreemptionWatcher' and ID: 'f2' has constructor arguments in the object "
                "store and max_restarts > 0. If the arguments ...",
                "2026/12/01 19:56:56 INFO mlflow.store.db.utils: Creating initial MLflow tables",
                "Failed to query Ray Train Controller actor state. State API may be temporarily "
                "unavailable. Continuing to monitor.",
                "[metaray] q: starting, 300 steps, 2 worker(s)",
                console.EVENT + json.dumps(event),
                console.EVENT + json.dumps({"kind": "run", "run_id": "r1", "experiment_id": "3"}),
                "a real warning from a worker",
            ],
        }
    )
    f.close()
    assert printed == [["a real warning from a worker"]]  # kept, as Ray prints it
    assert capsys.readouterr().out == "[metaray] q: starting, 300 steps, 2 worker(s)\n"
    assert f.run == {"run_id": "r1", "experiment_id": "3"}
    assert event["show"] == {"loss_bpb": 1.0}


def _history(train: list[float], val: dict[int, float]) -> list[dict[str, float]]:
    rows = [{"step": i + 1, "loss_post": v} for i, v in enumerate(train)]
    for step, v in val.items():
        rows[step - 1]["val_loss_post"] = v
    return rows


def test_a_flat_validation_under_a_falling_training_loss_is_called_out() -> None:
    falling = [4.0 - 0.01 * i for i in range(100)]
    note = validation_note(_history(falling, {50: 3.5, 100: 3.6}), "lm")
    assert note is not None and "has not improved" in note and "bpb" in note
    assert "best 5.049 bpb at step 50" in note  # 3.5 nats = 5.049 bits
    assert validation_note(_history(falling, {50: 3.5, 100: 3.0}), "lm") is None
    assert validation_note(_history([3.0] * 100, {50: 3.5, 100: 3.6}), "lm") is None


def test_the_next_step_names_the_ui_command_and_the_run_page() -> None:
    line = where_to_look("sqlite:////tmp/x/mlflow.db", "3", "abc")
    assert "mlflow ui --backend-store-uri sqlite:////tmp/x/mlflow.db --host 127.0.0.1" in line
    assert "http://127.0.0.1:5000/#/experiments/3/runs/abc" in line
    assert "Model training" in line
    web = where_to_look("https://user:pw@mlflow.example:5000", "3", "abc")
    assert "pw" not in web and "mlflow.example:5000/#/experiments/3/runs/abc" in web


def test_a_shard_set_is_one_dataset_digest() -> None:
    a = dataset_input(b'{"a": 1}', "data/quickstart-wordlang", "wordlang", {"train": {}})
    b = dataset_input(b'{"a": 1}', "/elsewhere/quickstart-wordlang/", "wordlang", {})
    assert a["digest"] == b["digest"] and len(a["digest"]) == 32
    assert a["name"] == "quickstart-wordlang" and a["source_type"] == "local"
    assert dataset_input(b'{"a": 2}', "s3://b/p", "text", {})["digest"] != a["digest"]
