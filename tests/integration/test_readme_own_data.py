"""The README's "Your own data, end to end" runs as written: a Parquet corpus -> shards ->
a copied config -> train -> evaluate -> adapt -> train with the bank -> adapt from the bank.

The commands are read from the README (a renamed flag or a wrong path fails here, not for a
user), run in-process on the module's local Ray (a `ray.init` per command would cost ~20 s
each) from a fresh working directory, with only size overrides appended. The corpus is real
text: wordfreq's word lists (shipped with the package), one language per task, under the task
names the README uses for its held-out tasks (xx, yy, zz, ww) and a few real codes.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

# task name in the corpus -> wordfreq language: the README's held-out names are real languages
CORPUS = {"en": "en", "fr": "fr", "de": "de", "es": "es", "pt": "pt", "sv": "sv"}
CORPUS |= {"xx": "it", "yy": "nl", "zz": "pl", "ww": "fi"}
WORDS_PER_TASK = 80

# appended to each command: seconds, not the recipe's minutes; tracking is
# tests/integration/test_tracking_training.py's subject, and a fresh SQLite store costs seconds
SMALL = {
    "train": [
        "outer.steps=4",
        "outer.val_every=2",
        "checkpoint.every=2",
        "bank.write_every=2",
        "tracking.enabled=false",
    ],
    "evaluate": ["--steps", "0,1", "--episodes", "2", "--lr-grid", "0.1,0.3"],
}


def _readme_commands() -> list[str]:
    """The section's shell lines, continuation lines joined, comments dropped."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Your own data, end to end", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, re.S)
    lines = [ln.split(" # ", 1)[0].strip() for ln in block.replace("\\\n", " ").splitlines()]
    return [ln for ln in lines if ln]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The user's directory: the README's relative paths (`data/mine`, `runs/mine`,
    `bank/mine`) are resolved there, as a user's shell would."""
    work = tmp_path_factory.mktemp("own-data")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)
        yield work


def _write_corpus(path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import wordfreq

    rows = [
        (task, word)
        for task, lang in CORPUS.items()
        for word in wordfreq.top_n_list(lang, WORDS_PER_TASK)
    ]
    pq.write_table(pa.table({"lang": [t for t, _ in rows], "text": [w for _, w in rows]}), path)


def _run(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    """One README line as written (+ the size overrides); its stdout."""
    from pipeline.cli import main

    capsys.readouterr()
    if not command.startswith("$M "):  # the `printf` line: plain shell
        subprocess.run(["bash", "-c", command], check=True)
        return ""
    argv = shlex.split(command.removeprefix("$M "))
    rc = main([*argv, *SMALL.get(argv[0], [])])
    out = capsys.readouterr().out
    assert rc == 0, f"{command}: exit {rc}\n{out}"
    return out


def test_the_readme_own_data_chain_runs_as_written(
    workdir: Path, ray_cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    import torch
    from safetensors import safe_open

    from pipeline import checkpoint, config
    from pipeline.models import build_model

    commands = _readme_commands()
    assert [c.split()[:3] for c in commands if c.startswith("$M ")] == [
        ["$M", "shards", "build"],
        ["$M", "shards", "inspect"],
        ["$M", "config", "cp"],
        ["$M", "train", "--config"],
        ["$M", "evaluate", "--checkpoint"],
        ["$M", "adapt", "--checkpoint"],
        ["$M", "train", "--config"],
        ["$M", "adapt", "--checkpoint"],
    ]
    _write_corpus(workdir / "corpus.parquet")
    outs = [_run(c, capsys) for c in commands]
    build, inspect, _cp, train, evaluate, _printf, adapt, train_bank, adapt_bank = outs

    # shards: the held-out tasks the command named, every file verified
    assert "built text shard set: 10 tasks, 800 rows" in build
    assert re.search(r"^val\s+2\s+160\b", inspect, re.M)
    assert re.search(r"^test\s+2\s+160\b", inspect, re.M)
    assert "verify     ok" in inspect

    # train: a checkpoint of the last step, trained on the user's shards
    for run, out in (("mine", train), ("mine-bank", train_bank)):
        found = checkpoint.find(str(workdir / "runs" / run), select="last")
        loaded = checkpoint.load(found.path)
        assert loaded.state.step == 4, out
        cfg = config.from_dict(loaded.config, run)
        assert cfg.data.uri == str(workdir / "data" / "mine")

    # evaluate: the results hold the two held-out test tasks, with finite bits per byte
    rep = json.loads((workdir / "runs" / "mine-eval" / "eval.json").read_text())
    assert sorted(rep["test_tasks"]) == ["ww", "zz"]
    assert rep["metric"] == "bits per byte" and "meta-init" in rep["methods"]
    after = rep["results"][str(rep["shots"][0])]["meta-init"]["1"]["overall"]["mean"]
    assert math.isfinite(after) and 0 < after < 16, evaluate

    # adapt: the adapted parameters load with the model's parameter names and shapes
    assert (workdir / "support.txt").read_text() == "first example\nsecond example\n"
    model = build_model(cfg.model, cfg.data)
    shapes = {k: tuple(v.shape) for k, v in model.named_parameters()}
    with safe_open(str(workdir / "mine-adapted.safetensors"), "pt") as f:
        names = f.keys()
        assert {k: tuple(f.get_slice(k).get_shape()) for k in names} == shapes
        meta = f.metadata()
    assert meta["start"] == "meta-init" and meta["support_examples"] == "2"
    assert float(meta["support_loss_adapted_nats"]) < float(meta["support_loss_meta_init_nats"])
    assert "start: meta-init" in adapt

    # the bank run kept its adapted tasks at bank/mine; adapt started from one of them (the
    # English task: the support is English), and says so on the console and in the file
    assert any((workdir / "bank" / "mine").iterdir())
    start = re.search(r"^start: (\S+) \(best similarity (\S+)\)$", adapt_bank, re.M)
    assert start, adapt_bank
    assert start.group(1).startswith("bank:") and 0 < float(start.group(2)) <= 1, adapt_bank
    with safe_open(str(workdir / "a.safetensors"), "pt") as f:
        names = f.keys()
        assert set(names) == set(shapes)
        warm = f.metadata()
        assert all(torch.isfinite(f.get_tensor(k)).all() for k in names)
    assert warm["start"] == start.group(1)
    assert float(warm["support_loss_adapted_nats"]) < float(warm["support_loss_meta_init_nats"])
    assert not os.path.exists(ROOT / "bank" / "mine")  # nothing landed in the checkout
