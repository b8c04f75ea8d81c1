"""Config edge cases a user hits, answered by the CLI with a config error (exit 2) naming the
file, key or value and the fix: an empty file, a key given twice, inf/nan, a directory, an S3
endpoint without a scheme."""

from __future__ import annotations

import pytest

from pipeline.cli import main


def _show(capsys, tmp_path, text: str | None = None, *overrides: str, path=None) -> str:
    if path is None:
        path = tmp_path / "c.yaml"
        path.write_text(text)
    assert main(["config", "show", "--config", str(path), *overrides]) == 2
    return capsys.readouterr().err


def test_empty_yaml_is_not_a_silent_default_run(tmp_path, capsys):
    err = _show(capsys, tmp_path, "# just a comment\n")
    assert "c.yaml is empty (or only comments)" in err and "configs/quickstart.yaml" in err
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 2


def test_duplicate_key_names_both_lines(tmp_path, capsys):
    err = _show(capsys, tmp_path, "outer:\n  lr: 0.1\n  steps: 5\n  lr: 0.2\n")
    assert "line 4: key 'lr' is given twice in the same mapping (first on line 2)" in err


@pytest.mark.parametrize("value", [".inf", "-.inf", ".nan"])
def test_inf_and_nan_are_refused(tmp_path, capsys, value):
    err = _show(capsys, tmp_path, f"inner:\n  lr: {value}\n")
    assert "inner.lr=" in err and "finite number (inf and nan are refused)" in err
    err = _show(capsys, tmp_path, "{}\n", "outer.grad_clip=inf")
    assert "outer.grad_clip='inf'" in err or "outer.grad_clip=inf" in err


def test_config_directory(tmp_path, capsys):
    err = _show(capsys, tmp_path, path=tmp_path)
    assert f"config {tmp_path} is a directory: give a YAML file" in err


def test_s3_endpoint_without_scheme(tmp_path, capsys):
    err = _show(capsys, tmp_path, "data:\n  s3_endpoint: 127.0.0.1:9000\n")
    assert (
        "data.s3_endpoint='127.0.0.1:9000': no scheme: add http:// (e.g. http://127.0.0.1:9000)"
        in err
    )
    err = _show(capsys, tmp_path, "{}\n", "bank.s3_endpoint=minio:9000")
    assert "bank.s3_endpoint='minio:9000': no scheme: add http://" in err


def test_s3_endpoint_flag_without_scheme(tmp_path, capsys):
    argv = ["shards", "build", "sinusoid", "--out", "s3://bucket/x", "--s3-endpoint", "minio:9000"]
    assert main(argv) == 1
    assert "S3 endpoint 'minio:9000' has no scheme: add http:// (e.g. http://minio:9000)" in (
        capsys.readouterr().err
    )
