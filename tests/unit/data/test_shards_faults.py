"""`metaray shards build` never deletes or mixes into a user's files, keeps `--rows-per-file` a
maximum, answers Ctrl+C with a sentence (exit 130, nothing written), and reports every
unreadable text file of a corpus in one run. The CLI as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.cli import main

REPO = Path(__file__).resolve().parents[3]
SMALL = ["--train-tasks", "6", "--val-tasks", "2", "--test-tasks", "2", "--points", "10"]


def _build(out, *extra: str) -> int:
    return main(["shards", "build", "sinusoid", "--out", str(out), *SMALL, *extra])


def test_a_folder_of_the_users_is_refused_and_never_cleaned(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "train-00000-deadbeef.parquet").write_bytes(b"my own file")
    (out / "notes.txt").write_text("keep me")
    assert _build(out) == 1
    err = capsys.readouterr().err
    assert "is not empty and holds no metaray shard set (2 file(s)" in err and "--overwrite" in err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "train-00000-deadbeef.parquet"]
    # --overwrite builds into it; the look-alike file was never recorded by a build: it stays
    assert _build(out, "--overwrite") == 0
    assert (out / "train-00000-deadbeef.parquet").read_bytes() == b"my own file"
    assert (out / "notes.txt").read_text() == "keep me"
    # and a later rebuild over the set still leaves it alone
    assert _build(out, "--force") == 0
    assert (out / "train-00000-deadbeef.parquet").read_bytes() == b"my own file"


def test_a_rebuild_with_other_parameters_asks_for_overwrite(tmp_path, capsys):
    out = tmp_path / "s"
    assert _build(out) == 0
    assert main(["shards", "build", "sinusoid", "--out", str(out), *SMALL[:-1], "12"]) == 1
    err = capsys.readouterr().err
    assert "built with other parameters (points: 10 -> 12)" in err and "--overwrite" in err
    assert (
        main(
            ["shards", "build", "sinusoid", "--out", str(out), *SMALL[:-1], "12"] + ["--overwrite"]
        )
        == 0
    )


def test_rows_per_file_is_a_maximum(tmp_path):
    out = tmp_path / "s"
    assert (
        main(
            ["shards", "build", "sinusoid", "--out", str(out), "--train-tasks", "9"]
            + ["--val-tasks", "2", "--test-tasks", "2", "--points", "40"]
            + ["--rows-per-file", "100"]
        )
        == 0
    )
    rows = [pq.ParquetFile(p).metadata.num_rows for p in out.glob("*.parquet")]
    assert rows and max(rows) <= 100 and sum(rows) == 13 * 40


def test_ctrl_c_during_a_build_says_nothing_was_written(tmp_path):
    out = tmp_path / "big"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [str(Path(sys.executable).parent / "metaray"), "shards", "build", "sinusoid"]
    # 48 s of writing when left alone (80M rows; measured quiet): even a
    # loaded CI machine, where this test's poll may wait seconds, signals mid-build.
    cmd += ["--out", str(out), "--train-tasks", "400000", "--points", "200"]
    cmd += ["--rows-per-file", "20000"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not (out.is_dir() and any(p.suffix == ".parquet" for p in out.iterdir())):
        # a shard file is being written: the build is under way, not still starting up
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err.decode()
    assert b"interrupted: nothing was written to" in err and b"Traceback" not in err
    assert list(out.iterdir()) == []


def test_every_non_utf8_text_file_is_reported_in_one_run(tmp_path, capsys):
    src = tmp_path / "corpus"
    src.mkdir()
    for name in ("a", "b", "c", "d"):
        (src / f"{name}.txt").write_text("\n".join(f"{name} {i}" for i in range(5)))
    (src / "b.txt").write_bytes(b"fine\ncaf\xe9\n")
    (src / "d.txt").write_bytes(b"ok\nok\n\xff\xfe\n")
    argv = ["shards", "build", "text", "--input", str(src), "--out", str(tmp_path / "o")]
    assert main([*argv, "--val-keys", "a", "--test-keys", "c"]) == 1
    err = capsys.readouterr().err
    assert "2 of 4 files cannot be used" in err
    assert "b.txt: line 2 is not valid UTF-8" in err and "d.txt: line 3 is not valid UTF-8" in err
    assert not (tmp_path / "o" / "manifest.json").exists()
