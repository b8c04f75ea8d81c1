"""`metaray evaluate` end to end (`pipeline/eval/run.py`) on real shard sets (sinusoid, text,
classification), with the memory bank's warm start."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from pipeline.errors import MetarayError
from pipeline.eval import inputs as eval_inputs
from pipeline.eval import methods as ev
from pipeline.eval import run as eval_run
from pipeline.models import build_model
from tests.unit.eval.cases import checkpoint_of


def test_metaray_evaluate_on_sinusoid_shards_writes_table_json_and_plots(sine_run, capsys):
    from pipeline.cli import main

    tmp, shards = sine_run
    out = tmp / "eval"
    argv = [
        "evaluate",
        "--checkpoint",
        str(tmp / "run"),
        "--shards",
        str(shards),
        "--out",
        str(out),
        "--json",
        str(out / "r.json"),
        "--episodes",
        "3",
        "--steps",
        "0,1,5",
        "--baseline-steps",
        "40",
        "--lr-grid",
        "0.003,0.01,0.03",
        "--no-tracking",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for name in ("random init", "multitask", "meta-init", "Δ meta-init - multitask"):
        assert name in printed
    rep = json.loads((out / "r.json").read_text())
    assert rep["metric"] == "MSE" and rep["steps"] == [0, 1, 5] and rep["shots"] == [10]
    assert (out / "eval_k10.png").stat().st_size > 1000
    assert (out / "baseline.safetensors").is_file()  # reused by the next evaluation
    # which of the baseline's steps was kept, so that a reader can set it beside the run's own
    note = re.fullmatch(
        r"trained: 40 outer steps, best on validation at step (\d+)", rep["notes"]["multitask"]
    )
    assert note and 1 <= int(note[1]) <= 40
    assert f"multitask baseline: best on validation at step {note[1]} of 40" in printed
    res = rep["results"]["10"]
    for method in res.values():
        for stat in method.values():
            o = stat["overall"]
            assert o["n_tasks"] == 10 and o["n_episodes"] == 30 and o["lo"] <= o["mean"] <= o["hi"]
    assert res["meta-init"]["1"]["overall"]["mean"] < res["random init"]["1"]["overall"]["mean"]


def test_bank_warm_start_starts_a_recurring_task_at_its_stored_quality(sine_run):
    from pipeline import config
    from pipeline.bank.service import BankService
    from pipeline.bank.warm_start import flatten_batched
    from pipeline.data import episodes as ep
    from pipeline.data.shards import open_shard_set
    from pipeline.meta.descriptor import describe
    from pipeline.meta.inner import adapt

    tmp, shards = sine_run
    loaded = eval_inputs.load_checkpoint(str(tmp / "run"))
    cfg = config.from_dict(loaded.config)
    model = build_model(cfg.model, cfg.data)
    sset = open_shard_set(str(shards))
    task = sset.tasks("test")[0]
    rows = sset.read_task(task)  # all 40 points: a well-adapted copy of this task
    sup = ep.to_torch(ep.collate([ep.regression_episode(rows, 39, 1, np.random.default_rng(0))]))
    adapted = adapt(
        loaded.state.params, sup.support, model=model, steps=100, lrs=0.01, first_order=True
    )
    bank = tmp / "bank"
    service = BankService(cfg.bank.model_copy(update={"snapshot_uri": str(bank)}))
    desc = describe(model, loaded.state.params, sup.support, kind=cfg.bank.descriptor)
    flat = flatten_batched(adapted, list(loaded.state.params))
    service.put({"keys": [task], "params": flat, "descriptor": desc})
    service.snapshot()

    opts = eval_run.Options(
        checkpoint=str(tmp / "run"),
        shards=str(shards),
        bank=str(bank),
        out_dir=str(tmp / "eval-bank"),
        baseline=str(tmp / "eval" / "x"),
        baseline_steps=5,
        lr_grid=(0.01,),
        max_tasks=3,
        tracking=False,
        spec=ev.EvalSpec(steps=(0, 1), episodes=3),
    )
    rep = eval_run.run(opts, log=lambda _: None)
    res = rep["results"]["10"]
    warm0 = res["bank warm start"]["0"]["tasks"][task]["mean"]
    meta0 = res["meta-init"]["0"]["tasks"][task]["mean"]
    assert warm0 < 0.25 * meta0, (warm0, meta0)  # the stored task starts far ahead
    gap = rep["paired"]["10"]["meta-init - bank warm start"]["0"]["tasks"][task]
    assert gap["lo"] > 0  # the whole CI says the meta-init starts worse on this task
    # where the starts came from: the stored task's own episodes at least, from its entry
    note = rep["notes"]["bank warm start"]
    got = re.match(
        r"(\d+) of 9 task-episodes started from the bank \(0 from a blend\), (\d+) ", note
    )
    assert got and int(got[1]) + int(got[2]) == 9 and int(got[1]) >= 3, note
    assert f"entries used most: {task} {got[1]}" in note, note
    # bank.fallback (the default): the stored task fits its own support better than the
    # meta-init does, so its warm start is kept; the note counts the warm starts that fell back
    fell = re.search(r"after 1 steps (\d+) of the (\d+) warm starts continued", note)
    assert fell and int(fell[2]) == int(got[1]) and int(fell[1]) < int(fell[2]), note
    png = tmp / "eval-bank" / "bank_descriptor_map.png"  # the bank's entries and the queries
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # bank.* from the command line: without the fallback, the same start, and no such count
    from dataclasses import replace

    off = replace(opts, out_dir=str(tmp / "eval-fb"), bank_overrides=("bank.fallback=false",))
    rep2 = eval_run.run(off, log=lambda _: None)
    assert rep2["bank_overrides"] == ["bank.fallback=false"]
    res2 = rep2["results"]["10"]["bank warm start"]["0"]["tasks"][task]["mean"]
    assert res2 == pytest.approx(warm0)
    assert rep2["notes"]["bank warm start"].endswith(f"entries used most: {task} {got[1]}")
    with pytest.raises(MetarayError, match="bank.\\* overrides only"):
        eval_run.run(replace(opts, bank_overrides=("inner.lr=0.5",)), log=lambda _: None)


def test_metaray_evaluate_on_a_users_text_shard_set(tmp_path, capsys):
    from pipeline.cli import main

    src = tmp_path / "corpus"
    src.mkdir()
    rng = np.random.default_rng(0)
    for name, letters in {
        "aa": "ab",
        "bb": "bc",
        "cc": "cd",
        "dd": "de",
        "ee": "ef",
        "ff": "fg",
        "gg": "gh",
    }.items():
        sizes = rng.integers(2, 7, size=200)
        lines = {"".join(rng.choice(list(letters), size=int(n))) for n in sizes}
        (src / f"{name}.txt").write_text("\n".join(sorted(lines)) + "\n", encoding="utf-8")
    shards = tmp_path / "text"
    assert (
        main(
            [
                "shards",
                "build",
                "text",
                "--input",
                str(src),
                "--out",
                str(shards),
                "--val-keys",
                "ee",
                "--test-keys",
                "ff,gg",
            ]
        )
        == 0
    )
    checkpoint_of(
        tmp_path,
        [
            f"data.uri={shards}",
            "model.hidden=8",
            "model.embed=4",
            "data.k_support=4",
            "data.k_query=4",
            "data.max_len=8",
            "outer.meta_batch=2",
            "inner.lr=0.1",
            "outer.val_every=1000",
        ],
        steps=2,
    )
    out = tmp_path / "eval"
    argv = [
        "evaluate",
        "--checkpoint",
        str(tmp_path / "run"),
        "--shards",
        str(shards),
        "--out",
        str(out),
        "--episodes",
        "2",
        "--steps",
        "0,1",
        "--shots",
        "4,8",
        "--baseline-steps",
        "2",
        "--lr-grid",
        "0.1",
        "--no-tracking",
    ]
    assert main(argv) == 0
    rep = json.loads((out / "eval.json").read_text())
    assert rep["metric"] == "bits per byte" and rep["shots"] == [4, 8]
    assert rep["test_tasks"] == ["ff", "gg"]
    # An (almost) untrained byte model is near uniform over 259 symbols at step 0.
    rand0 = rep["results"]["4"]["random init"]["0"]["overall"]["mean"]
    assert rand0 == pytest.approx(math.log2(259), abs=0.3)
    assert "K=8 shots" in capsys.readouterr().out
    assert rep["support_floor"] is True  # the default: scored under the support-fitted floor
    # --no-support-floor: the plain softmax, recorded in the report; random init, a little
    # worse than a uniform guess at step 0 here, is what the floor pulls toward uniform
    plain_out = tmp_path / "eval-plain"
    argv[argv.index(str(out))] = str(plain_out)
    assert main([*argv, "--no-support-floor"]) == 0
    plain = json.loads((plain_out / "eval.json").read_text())
    assert plain["support_floor"] is False
    rand0_plain = plain["results"]["4"]["random init"]["0"]["overall"]["mean"]
    assert math.log2(259) - 0.1 < rand0 < rand0_plain


def test_evaluate_names_a_missing_checkpoint(tmp_path, capsys):
    from pipeline.cli import main

    argv = ["evaluate", "--checkpoint", str(tmp_path / "nope"), "--shards", str(tmp_path)]
    assert main(argv) == 1
    assert "no checkpoint found" in capsys.readouterr().err


def test_metaray_evaluate_n_way_k_shot_classification_reports_accuracy(tmp_path, capsys):
    from pipeline.cli import main

    src = tmp_path / "corpus"
    src.mkdir()
    rng = np.random.default_rng(1)
    alphabet = "abcdefghijkl"
    for i in range(11):  # task "aa" writes a/b words, "bb" b/c words, ...
        name, letters = alphabet[i] * 2, alphabet[i : i + 2]
        sizes = rng.integers(2, 7, size=200)
        lines = {"".join(rng.choice(list(letters), size=int(n))) for n in sizes}
        (src / f"{name}.txt").write_text("\n".join(sorted(lines)) + "\n", encoding="utf-8")
    shards = tmp_path / "text"
    assert (
        main(
            [
                "shards",
                "build",
                "text",
                "--input",
                str(src),
                "--out",
                str(shards),
                "--val-keys",
                "ii,jj,kk",
                "--test-keys",
                "ff,gg,hh",
            ]
        )
        == 0
    )
    checkpoint_of(
        tmp_path,
        [
            f"data.uri={shards}",
            "data.episode=classify",
            "data.n_way=3",
            "model.hidden=8",
            "model.embed=4",
            "data.k_support=2",
            "data.k_query=3",
            "data.max_len=8",
            "outer.meta_batch=2",
            "inner.lr=0.1",
            "outer.val_every=1000",
        ],
        steps=2,
    )
    out = tmp_path / "eval"
    argv = [
        "evaluate",
        "--checkpoint",
        str(tmp_path / "run"),
        "--shards",
        str(shards),
        "--out",
        str(out),
        "--episodes",
        "4",
        "--steps",
        "0,1",
        "--baseline-steps",
        "2",
        "--lr-grid",
        "0.1",
        "--no-tracking",
    ]
    assert main(argv) == 0
    rep = json.loads((out / "eval.json").read_text())
    assert rep["metric"] == "accuracy" and rep["higher_is_better"] is True
    assert rep["shots"] == [1, 5]  # 3-way 1-shot and 5-shot by default
    for k in ("1", "5"):
        for method in rep["results"][k].values():
            for stat in method.values():
                assert set(stat["tasks"]) == {"ff", "gg", "hh"}  # accuracy per language
                assert 0.0 <= stat["overall"]["mean"] <= 1.0
    assert "accuracy (higher is better)" in capsys.readouterr().out


def test_evaluate_refuses_a_shard_set_of_the_wrong_family(sine_run, tmp_path, capsys):
    from pipeline.cli import main

    tmp, _ = sine_run
    src = tmp_path / "corpus"
    src.mkdir()
    for name in ("aa", "bb", "cc"):
        (src / f"{name}.txt").write_text("\n".join(f"{name}{i}" for i in range(30)) + "\n")
    text = tmp_path / "text"
    assert (
        main(
            [
                "shards",
                "build",
                "text",
                "--input",
                str(src),
                "--out",
                str(text),
                "--val-keys",
                "bb",
                "--test-keys",
                "cc",
            ]
        )
        == 0
    )
    argv = ["evaluate", "--checkpoint", str(tmp / "run"), "--shards", str(text), "--no-tracking"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "is a text shard set" in err and "regression" in err and "sinusoid" in err
