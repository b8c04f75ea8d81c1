"""The `metaray` command as a new user meets it: version, defaults in help, did-you-mean,
every key listed (tune.* too), sweep files shown, shipped configs listed and copied."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.cli import build_parser, main
from pipeline.cli.config_cmd import shipped_dir

ROOT = Path(__file__).resolve().parents[3]


def test_version_and_examples(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("metaray ")
    text = build_parser().format_help()
    assert "examples:" in text and "metaray train --config configs/quickstart.yaml" in text


def test_help_shows_real_defaults_only(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    out = capsys.readouterr().out
    assert "(default: 10)" in out and "(default: 0,1,2,5,10)" in out
    assert "(default: None)" not in out


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["trian"], "did you mean 'train'?"),
        (["train", "--confg", "x.yaml"], "did you mean '--config' (for '--confg')?"),
        (["evaluate", "--chekpoint", "r", "--shards", "s"], "'--checkpoint' (for '--chekpoint')"),
        (["config", "sho"], "did you mean 'show'?"),
    ],
)
def test_mistyped_commands_and_flags_get_a_suggestion(argv, hint, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and hint in capsys.readouterr().err


def test_config_keys_lists_tune_keys_with_types(capsys) -> None:
    assert main(["config", "keys"]) == 0
    out = capsys.readouterr().out
    assert "inner.algorithm" in out and "tune.scheduler" in out and "tune.asha.grace_period" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("tune.scheduler"))
    assert "one of asha|pbt|fifo" in line and "default 'asha'" in line
    line = next(ln for ln in out.splitlines() if ln.startswith("bank.probe_steps"))
    assert "int or list of int" in line  # a list key says so (it read "int or Ellipsis")


def test_config_show_takes_a_sweep_file(capsys) -> None:
    assert main(["config", "show", "--config", str(ROOT / "configs/tune_smoke.yaml")]) == 0
    out = capsys.readouterr().out
    assert "\ntune:\n" in out and "num_samples: 3" in out and "inner:" in out


def test_shipped_configs_list_and_copy(tmp_path: Path, capsys) -> None:
    assert {p.stem for p in shipped_dir().glob("*.yaml")} >= {"quickstart", "sinusoid"}
    assert main(["config", "ls"]) == 0
    assert "quickstart" in capsys.readouterr().out
    assert main(["config", "cp", "quickstart", str(tmp_path)]) == 0
    copied = tmp_path / "quickstart.yaml"
    assert copied.read_text() == (ROOT / "configs/quickstart.yaml").read_text()
    assert main(["config", "cp", "quickstart", str(tmp_path)]) == 1  # exists: --force
    assert main(["config", "cp", "quikstart", str(tmp_path / "q.yaml")]) == 1
    assert "did you mean 'quickstart'?" in capsys.readouterr().err


def test_the_wheel_carries_the_configs() -> None:
    """setup.py maps configs/ to the package data pipeline/configs."""
    text = (ROOT / "setup.py").read_text()
    assert '"pipeline.configs": "configs"' in text and '"pipeline.configs"]' in text


def test_shards_inspect_json_is_one_object_with_the_verification(tmp_path: Path, capsys) -> None:
    import json

    out = tmp_path / "sine"
    build = ["shards", "build", "sinusoid", "--out", str(out), "--train-tasks", "4"]
    assert main([*build, "--val-tasks", "2", "--test-tasks", "2", "--points", "20"]) == 0
    capsys.readouterr()
    assert main(["shards", "inspect", str(out), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["family"] == "sinusoid" and got["verify"] == "ok" and got["problems"] == []
    assert got["splits"]["train"]["tasks"] == 4 and got["splits"]["test"]["max_rows"] == 20
