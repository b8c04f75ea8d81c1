"""Bad inputs of `metaray train` / `metaray tune` answered before Ray starts, each a message
naming the file or key and the fix (the CLI as a user runs it; no Ray is started)."""

from __future__ import annotations

import pytest

from pipeline.cli import main


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("pre")
    sin = root / "sin"
    assert (
        main(
            ["shards", "build", "sinusoid", "--out", str(sin), "--train-tasks", "6"]
            + ["--val-tasks", "2", "--test-tasks", "2", "--points", "8"]
        )
        == 0
    )
    texts = root / "texts"
    texts.mkdir()
    for i in range(6):
        (texts / f"t{i}.txt").write_text("\n".join(f"line {i} {j}" for j in range(30)))
    txt = root / "txt"
    assert (
        main(
            ["shards", "build", "text", "--input", str(texts), "--out", str(txt)]
            + ["--val-keys", "t4", "--test-keys", "t5"]
        )
        == 0
    )
    return {"sin": sin, "txt": txt, "root": root}


@pytest.fixture(autouse=True)
def _ray_tmp(tmp_path, monkeypatch):
    """Where a Ray start would leave its session: it must stay empty."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray"))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    yield
    assert not (tmp_path / "ray").exists(), "Ray was started before the input was checked"


def _train(capsys, *overrides: str, cmd: str = "train", cfg: str = "configs/smoke.yaml") -> str:
    assert main([cmd, "--config", cfg, *overrides]) != 0
    return capsys.readouterr().err


def test_missing_data_uri(shards, capsys, tmp_path):
    err = _train(capsys, f"data.uri={tmp_path / 'nope'}")
    assert f"{tmp_path / 'nope'} does not exist: build it with `metaray shards build" in err


def test_shard_family_against_episode(shards, capsys):
    err = _train(capsys, f"data.uri={shards['txt']}", f"checkpoint.storage={shards['root']}")
    assert "is a text shard set, but data.episode='regression' needs sinusoid shards" in err
    err = _train(
        capsys,
        f"data.uri={shards['txt']}",
        f"tune.storage={shards['root'] / 'tune'}",
        cmd="tune",
        cfg="configs/tune_smoke.yaml",
    )
    assert "is a text shard set, but data.episode='regression'" in err


def test_tasks_with_too_few_rows(shards, capsys):
    err = _train(capsys, f"data.uri={shards['sin']}", "data.k_support=5", "data.k_query=5")
    assert "have fewer than the 10 rows an episode (k_support + k_query = 10) needs" in err
    assert "data.k_support + data.k_query" in err


def test_init_from_that_does_not_exist(shards, capsys, tmp_path):
    err = _train(
        capsys,
        f"data.uri={shards['sin']}",
        "data.k_support=3",
        "data.k_query=3",
        f"checkpoint.init_from={tmp_path / 'gone'}",
    )
    assert f"checkpoint.init_from: no checkpoint found: {tmp_path / 'gone'} does not exist" in err
