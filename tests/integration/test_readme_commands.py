"""The README's shards, training, sweep and memory-bank commands run as written.

Each command line is looked up in README.md (tests/readme.py), so a renamed flag, config or
path fails here, not for a user. They run from a fresh directory standing in for the
checkout (`configs/` and `.venv/` linked in; `data/`, `runs/`, `bank-export/` land there),
in-process on the module's one local Ray (a `ray.init` per command would cost ~20 s each),
with only size overrides appended: a few steps, one worker, one trial, tiny word lists.
The S3 lines use the README's own bucket, `s3://bucket/...`, on the moto server; the AWS
variables point at it before Ray starts, as a user's shell would set them before
`metaray train` (the bank actor and the trainers inherit them from Ray's processes).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests import readme
from tests.fixtures.s3 import FAKE_ENV

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

# appended to a command (by its subcommand): seconds, not the recipes' minutes. Tracking is
# test_tracking_training.py's subject; a fresh SQLite store would cost seconds per run.
SMALL = {
    "train": [
        "outer.steps=3",
        "outer.val_every=3",
        "checkpoint.every=3",
        "cluster.num_workers=1",
        "cluster.episode_actors=1",
        "bank.write_every=1",  # with bank.enabled: a bank write in each of the 3 steps
        "tracking.enabled=false",
    ],
    "local_train": ["outer.steps=3", "outer.val_every=3"],
    "wordlang": ["--top-n", "40"],  # 42 languages x 40 words, not x 5000
    "tune": [
        "tune.num_samples=1",
        "tune.seed=0",  # one trial, seeded: a random one can diverge (inner.lr up to 0.5)
        "cluster.num_workers=1",
        "outer.steps=2",
        "outer.val_every=1",
        "checkpoint.every=1",
        "tune.asha.grace_period=1",
        "tracking.enabled=false",
    ],
    "evaluate": ["--shots", "8", "--steps", "0,1", "--episodes", "1", "--max-tasks", "2"],
    "evaluate+": ["--baseline-steps", "2", "--lr-grid", "0.3"],
}
SUPPORT = "the\nof\nand\nto\nin\nthat\nit\nwith\n"  # words.txt: a new (English) task


@pytest.fixture(scope="module")
def s3_env(_moto_threaded: str) -> Iterator[str]:
    """The AWS variables on the moto server, and the README's bucket `bucket` there."""
    import boto3

    with pytest.MonkeyPatch.context() as mp:
        for k, v in {**FAKE_ENV, "AWS_ENDPOINT_URL": _moto_threaded}.items():
            mp.setenv(k, v)
        for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
            mp.delenv(k, raising=False)
        s3 = boto3.client("s3", endpoint_url=_moto_threaded, region_name="us-east-1")
        if "bucket" not in {b["Name"] for b in s3.list_buckets()["Buckets"]}:
            s3.create_bucket(Bucket="bucket")
        yield _moto_threaded


@pytest.fixture(scope="module")
def checkout(s3_env: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The user's checkout: the README's relative paths resolve here, as in a shell."""
    work = tmp_path_factory.mktemp("readme")
    (work / "configs").symlink_to(ROOT / "configs")
    (work / ".venv").symlink_to(ROOT / ".venv")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        yield work


@pytest.fixture(scope="module")
def ray_local(s3_env: str, checkout: Path, ray_cluster) -> dict:
    """The module's Ray, started after the S3 environment is set (its workers inherit it)."""
    return ray_cluster


def _small(words: list[str]) -> list[str]:
    if words[0] == ".venv/bin/python":
        return SMALL["local_train"]
    if words[:3] == ["$M", "shards", "build"]:
        return SMALL["wordlang"] if words[3] == "wordlang" else []
    extra = SMALL.get(words[1], [])
    if words[1] == "evaluate" and "--baseline" not in words:
        extra = [*extra, *SMALL["evaluate+"]]
    return extra


def run(command: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """One README line as written (each part of an `a && b` line in turn), with the size
    overrides appended; the stdout of each part."""
    from pipeline.cli import main

    outs = []
    for part in command.split(" && "):
        words = shlex.split(part)
        capsys.readouterr()
        if words[0] == "$M":
            rc = main([*words[1:], *_small(words)])
            out = capsys.readouterr().out
        else:  # `.venv/bin/python -m ...`: its own process, as the README runs it
            done = subprocess.run([*words, *_small(words)], capture_output=True, text=True)
            rc, out = done.returncode, done.stdout + done.stderr
        assert rc == 0, f"{part}: exit {rc}\n{out[-3000:]}"
        outs.append(out)
    return outs


def _last(run_dir: Path):
    from pipeline import checkpoint

    return checkpoint.load(checkpoint.find(str(run_dir), select="last").path)


def test_the_readme_shards_lines_build_what_they_say(
    checkout: Path, s3_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.data.shards import open_shard_set
    from tests.integration.test_readme_own_data import _write_corpus

    (out,) = run(readme.line("$M shards build sinusoid --out data/sinusoid"), capsys)
    sine = open_shard_set(str(checkout / "data" / "sinusoid"))
    assert [len(sine.tasks(s)) for s in ("train", "val", "test")] == [1000, 100, 100], out

    run(readme.line("$M shards build wordlang --out data/wordlang --top-n 5000"), capsys)
    (inspect,) = run(readme.line("$M shards inspect data/wordlang"), capsys)
    assert re.search(r"^train\s+34\s+1360\b", inspect, re.M), inspect  # 34 languages x 40
    assert "verify     ok" in inspect

    corpus = checkout / "my_corpus"  # one UTF-8 file per task, one example per line
    corpus.mkdir()
    for key in "abcdefghij":
        (corpus / f"{key}.txt").write_text(f"{key} one\n{key} two\n{key} three\n")
    run(readme.line("$M shards build text --input my_corpus/"), capsys)
    mine = open_shard_set(str(checkout / "data" / "mine"))
    assert sorted(mine.tasks("test")) == ["a", "b"]
    assert len(mine.tasks("train")) + len(mine.tasks("val")) == 8

    _write_corpus(checkout / "corpus.parquet")
    to_s3 = "$M shards build text --input corpus.parquet --task-column lang --text-column text"
    run(readme.line(f"{to_s3} --out s3://"), capsys)
    remote = open_shard_set("s3://bucket/shards/mine")
    assert sum(len(remote.tasks(s)) for s in ("train", "val", "test")) == 10


def test_the_readme_training_lines_train_what_they_say(
    checkout: Path, ray_local, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline import config

    # `config show` with an override: the resolved config a run would use
    (shown,) = run(readme.line("$M config show --config configs/wordlang.yaml"), capsys)
    tree = yaml.safe_load(shown)
    assert tree["cluster"]["num_workers"] == 4 and tree["data"]["uri"] == "data/wordlang"
    assert tree["inner"]["algorithm"] == "metasgd"
    (keys,) = run(readme.line("$M config keys"), capsys)
    for key in ("inner.lr", "bank.snapshot_uri", "tune.search", "checkpoint.init_from"):
        assert re.search(rf"^\s*{re.escape(key)}\b", keys, re.M), key

    _build, train = run(readme.line("$M shards build sinusoid --out data/sinusoid && "), capsys)
    assert "run 'sinusoid' finished: 3/3 steps" in train
    sine = _last(checkout / "runs" / "sinusoid")
    assert sine.state.step == 3 and len(sine.history) == 3
    assert config.from_dict(sine.config, "sinusoid").data.uri == str(checkout / "data/sinusoid")

    (metasgd,) = run(readme.line("$M train --config configs/sinusoid.yaml inner.algo"), capsys)
    meta = _last(checkout / "runs" / "sine-metasgd")
    cfg = config.from_dict(meta.config, "sine-metasgd")
    assert meta.state.step == 3 and cfg.inner.algorithm == "metasgd" and cfg.outer.lr == 3e-4
    # Meta-SGD: a learned inner learning rate per parameter element, moved off its init
    params, lrs = meta.state.params, meta.state.lrs
    assert set(lrs) == set(params) and all(lrs[k].shape == params[k].shape for k in params)
    assert any(not (lrs[k] == cfg.inner.lr).all() for k in lrs), metasgd

    (local,) = run(readme.line(".venv/bin/python -m pipeline.local_train"), capsys)
    assert "3 meta-steps in" in local, local


def test_the_readme_optuna_sweep_runs_and_writes_a_trainable_best_config(
    checkout: Path, ray_local, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline import config

    if not (checkout / "data" / "sinusoid").exists():  # this test alone
        run(readme.line("$M shards build sinusoid --out data/sinusoid"), capsys)
    # the optuna line: the same file and command as the plain ASHA line above it in the
    # README, and the one search no other integration test runs (test_tune_sweep: random)
    (out,) = run(readme.line("$M tune --config configs/tune_inner_lr.yaml tune.search="), capsys)
    sweep = checkout / "runs" / "tune" / "inner-lr-optuna"
    searcher = re.search(r"Search algorithm\W+(\w+)", out)
    assert searcher and searcher.group(1) != "BasicVariantGenerator", out  # random: this one
    best = config.load(sweep / "best_config.yaml")  # `metaray train` accepts it as is
    row = r"^\S+\s+(\S+)\s+\S+\s+\S+\s+\S+\s+\S+\s+\S+\s+2\s+DONE\s*$"  # one trial, 2 steps
    trial = re.search(row, out, re.M)
    assert trial, out
    assert best.inner.lr == pytest.approx(float(trial.group(1)), rel=1e-3)
    assert Path(best.data.uri).resolve() == (checkout / "data" / "sinusoid").resolve()


def test_the_readme_bank_lines_store_warm_start_export_and_restore(
    checkout: Path, ray_local, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np
    from safetensors import safe_open

    if not (checkout / "data" / "wordlang").exists():  # this test alone
        run(readme.line("$M shards build wordlang --out data/wordlang --top-n 5000"), capsys)
    bank_run = (
        "$M train --config configs/wordlang.yaml checkpoint.init_from=null checkpoint.run_name"
    )
    (train,) = run(readme.line(f"{bank_run}=wordlang-bank bank.enabled=true"), capsys)
    assert "run 'wordlang-bank' finished: 3/3 steps" in train, train
    (stats,) = run("$M bank inspect --json", capsys)  # the running actor the run filled
    stored = json.loads(stats)["stats"]["entries"]
    assert stored > 0 and json.loads(stats)["stats"]["snapshot_uri"] == "s3://bucket/bank"

    (checkout / "words.txt").write_text(SUPPORT)
    adapt = "$M adapt --checkpoint runs/wordlang-bank --support words.txt --out adapted.safetensors"
    (cold,) = run(readme.line(adapt), capsys)
    assert "start: meta-init" in cold
    with safe_open(str(checkout / "adapted.safetensors"), "pt") as f:
        meta = f.metadata()
    assert float(meta["support_loss_adapted_nats"]) < float(meta["support_loss_meta_init_nats"])

    # the S3 form stores the result under my-task; the same support again starts from it:
    # the entry alone or, where the probe scores it lower, its blend with the next hits
    # (similarity-ordered, so my-task leads the label)
    warm = readme.line(f"{adapt} --bank-uri")
    run(warm, capsys)
    (again,) = run(warm, capsys)
    start = re.search(r"^start: (\S+) \(best similarity (\S+)\)$", again, re.M)
    assert start and start.group(1).split(",")[0] == "bank:my-task", again
    assert float(start.group(2)) == pytest.approx(1.0, abs=1e-3)
    (listed,) = run("$M bank inspect --uri s3://bucket/bank --list 1000 --json", capsys)
    assert "my-task" in {e["key"] for e in json.loads(listed)["entries"]}

    # export the running bank, clear it, import the export: the same entries come back
    def entries() -> dict:
        (out,) = run(f"$M bank inspect --list {stored + 10} --json", capsys)
        return {e["key"]: e["step"] for e in json.loads(out)["entries"]}

    before = entries()
    sketch = readme.line("$M bank export DEST | import SRC | clear --yes")
    assert sketch.split(" | ") == ["$M bank export DEST", "import SRC", "clear --yes"]
    run("$M bank export bank-export", capsys)
    (cleared,) = run("$M bank clear --yes", capsys)
    assert f"cleared {stored} entries" in cleared and entries() == {}
    (imported,) = run("$M bank import bank-export", capsys)
    assert f"imported {stored} entries" in imported
    assert entries() == before

    plot = readme.line("$M bank inspect --uri DIR --plot map.png").replace("DIR", "bank-export")
    (drawn,) = run(plot, capsys)
    png = (checkout / "map.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000, drawn

    (ev,) = run(readme.line("$M evaluate --checkpoint runs/wordlang-bank --shards"), capsys)
    rep = json.loads((checkout / "eval" / "eval.json").read_text())
    assert "bank warm start" in rep["methods"], ev
    res = rep["results"]["8"]["bank warm start"]["1"]["overall"]
    assert np.isfinite(res["mean"]) and 0 < res["mean"] < 16


def test_the_quickstart_script_runs_as_written(
    checkout: Path, ray_local, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's first command: scripts/quickstart.sh's metaray lines in order (setup.sh is
    what CI runs first), with the size overrides appended and no extra `"$@"` arguments."""
    from pipeline.checkpoint import BEST_PREFIX
    from pipeline.eval.report import BASELINE, REFERENCE

    lines = [ln for ln in readme.script_lines(ROOT / "scripts" / "quickstart.sh") if "$M " in ln]
    assert [ln.split()[1] for ln in lines] == ["shards", "shards", "train", "train", "evaluate"]
    build, inspect, pretrain, meta, evaluate = (ln.replace(' "$@"', "") for ln in lines)
    # the README shows stage 2 and the evaluation as lines of their own: the script's
    assert meta == readme.line("$M train --config configs/quickstart.yaml")
    assert evaluate.startswith(readme.line("$M evaluate --checkpoint runs/quickstart --shards"))
    run(build, capsys)
    (shown,) = run(inspect, capsys)
    assert re.search(r"^val\s+4\s", shown, re.M) and re.search(r"^test\s+10\s", shown, re.M), shown
    (stage1,) = run(pretrain, capsys)
    assert "run 'quickstart-pretrain' finished: 3/3 steps" in stage1, stage1
    (stage2,) = run(meta, capsys)  # stage 2 starts from stage 1's best-on-validation model
    pretrained = checkout / "runs" / "quickstart-pretrain"
    assert f"parameters from {pretrained}/{BEST_PREFIX}" in stage2, stage2
    assert "run 'quickstart' finished: 3/3 steps" in stage2, stage2
    (ev,) = run(evaluate, capsys)
    rep = json.loads((checkout / "runs" / "quickstart-eval" / "eval.json").read_text())
    assert {REFERENCE, BASELINE, "random init"} <= set(rep["methods"]), rep["methods"]
    assert "Verdict (paired 95% CIs over held-out tasks" in ev and "8.02 = a uniform" in ev, ev
