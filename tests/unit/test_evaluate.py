"""Few-shot evaluation: statistics users read off the table, paired differences, the engine
through the core's inner loop, and `metaray evaluate` on real shard sets (sinusoid, text)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import load
from pipeline.eval import baselines
from pipeline.eval import inputs as eval_inputs
from pipeline.eval import methods as ev
from pipeline.eval import report as eval_report
from pipeline.eval import run as eval_run
from pipeline.eval import stats as st
from pipeline.models import build_model


# ---------------------------------------------------------------- statistics
def test_t_quantiles_and_a_hand_computed_interval():
    assert st.t975(1) == pytest.approx(12.706)
    assert st.t975(40) == pytest.approx(2.021, abs=2e-3)  # Cornish-Fisher beyond the table
    assert st.t975(10_000) == pytest.approx(1.960, abs=1e-3)
    ci = st.mean_ci([1.0, 2.0, 3.0])  # sd 1, n 3: 2 ± 4.303/sqrt(3)
    assert ci["mean"] == 2.0 and ci["half"] == pytest.approx(4.303 / math.sqrt(3))
    assert st.mean_ci([5.0])["half"] == math.inf  # one value says nothing about spread


def test_ci_contains_the_mean_and_overall_is_over_tasks():
    rng = np.random.default_rng(0)
    per_task = {f"t{i}": rng.normal(i, 1.0, size=8) for i in range(5)}
    s = st.summarize(per_task)
    o = s["overall"]
    assert o["lo"] < o["mean"] < o["hi"]
    assert o["ci_over"] == "tasks" and o["n_tasks"] == 5 and o["n_episodes"] == 40
    assert o["mean"] == pytest.approx(np.mean([v.mean() for v in per_task.values()]))
    for t, v in per_task.items():
        assert s["tasks"][t]["lo"] < v.mean() < s["tasks"][t]["hi"]
    one = st.summarize({"only": np.array([1.0, 2.0, 4.0])})["overall"]
    assert one["ci_over"] == "episodes" and one["mean"] == pytest.approx(7 / 3)


def test_paired_differences_equal_per_episode_differences():
    a = {"x": np.array([3.0, 5.0, 4.0]), "y": np.array([1.0, 1.5, 2.0])}
    b = {"x": np.array([2.0, 4.5, 4.5]), "y": np.array([0.0, 1.0, 1.0])}
    p = st.paired(a, b)
    assert p["tasks"]["x"]["mean"] == pytest.approx(np.mean(a["x"] - b["x"]))
    assert p["tasks"]["y"]["mean"] == pytest.approx(np.mean(a["y"] - b["y"]))
    # Pairing removes the between-episode spread: tighter than the unpaired difference.
    assert p["tasks"]["y"]["half"] < st.mean_ci(a["y"])["half"]
    with pytest.raises(ValueError, match="different tasks"):
        st.paired(a, {"x": b["x"]})


# ---------------------------------------------------------------- the engine on sinusoid
def _sine_rows(n: int, seed: int) -> dict[str, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(n):
        amp, phase = rng.uniform(0.1, 5.0), rng.uniform(0, np.pi)
        x = rng.uniform(-5, 5, 60).astype(np.float32)
        out[f"s{seed}-{i:03d}"] = {"x": x, "y": (amp * np.sin(x - phase)).astype(np.float32)}
    return out


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Small matmuls on a loaded 2-core machine: 2 threads oversubscribe (measured 30x slower).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sine():
    from pipeline.data import episodes as ep
    from pipeline.meta import outer

    cfg = load(
        None,
        [
            "data.episode=regression",
            "model.kind=mlp",
            "model.hidden=40",
            "model.layers=2",
            "data.k_support=10",
            "data.k_query=10",
            "inner.lr=0.01",
            "outer.meta_batch=10",
            "outer.lr=0.003",
        ],
    )
    train, test = _sine_rows(100, 1), _sine_rows(12, 2)
    rows = {**train, **test}
    model = build_model(cfg.model, cfg.data)
    state = outer.init_state(model, cfg.inner, cfg.outer, seed=0)
    for step in range(300):
        b = ep.build_step(
            rows.__getitem__, sorted(train), cfg.data, seed=0, step=step, meta_batch=10
        )
        state, _ = outer.train_step(
            state, ep.to_torch(b), model=model, inner_cfg=cfg.inner, outer_cfg=cfg.outer
        )
    eps = ev.make_episodes(
        rows.__getitem__, sorted(test), cfg.data, shot=10, k_query=10, n_episodes=4, seed=5
    )
    return cfg, model, state, eps


def test_meta_trained_init_beats_random_init_on_sinusoid(sine):
    cfg, model, state, eps = sine
    methods = [
        ev.Method("random init", baselines.random_init(model, cfg, seed=9), 0.01),
        ev.Method("meta-init", state.params, state.lrs),
    ]
    raw = ev.evaluate_methods(model, methods, {10: eps}, ev.EvalSpec(steps=(0, 1, 10)))
    rep = eval_report.build(raw, kind="regression", metric="MSE", higher_is_better=False)
    diff = rep["paired"]["10"]["meta-init - random init"]
    for step in ("1", "10"):  # lower MSE, and the whole 95% CI of the paired gap below zero
        assert diff[step]["overall"]["hi"] < 0, diff[step]["overall"]
    meta = rep["results"]["10"]["meta-init"]
    assert meta["10"]["overall"]["mean"] < meta["0"]["overall"]["mean"]  # adaptation helps
    # The report's paired figure is the mean of per-episode differences of the raw values.
    per = rep["per_episode"]["10"]
    task = sorted(per["meta-init"]["1"])[0]
    gap = np.subtract(per["meta-init"]["1"][task], per["random init"]["1"][task]).mean()
    assert diff["1"]["tasks"][task]["mean"] == pytest.approx(gap)


def test_zero_steps_is_the_start_and_steps_continue_the_same_inner_loop(sine):
    from pipeline.data import episodes as ep
    from pipeline.meta.inner import adapt
    from pipeline.meta.losses import model_loss

    cfg, model, state, eps = sine
    m = ev.Method("meta-init", state.params, state.lrs)
    vals = ev.run_method(model, m, eps[:3], (0, 2, 5))
    b = ep.to_torch(ep.collate([e.batch for e in eps[:3]]))
    direct0 = model_loss(model, state.params, b.query)
    p5 = adapt(state.params, None, b.support, model=model, steps=5, lrs=state.lrs, first_order=True)
    direct5 = model_loss(model, p5, b.query)
    task = eps[0].tasks[0]
    assert vals[0][task][:3] == pytest.approx(direct0.tolist(), rel=1e-5)
    assert vals[5][task][:3] == pytest.approx(direct5.detach().tolist(), rel=1e-4)


def test_tuned_lr_is_the_grid_point_with_the_best_validation_metric(sine):
    cfg, model, state, eps = sine
    base = ev.Method("random init", baselines.random_init(model, cfg, seed=3), 0.01)
    lr, scores = ev.tune_lr(model, base, eps[:4], (1e-4, 0.01, 0.03), (0, 1, 5), kind="regression")
    assert lr == min(scores, key=scores.get) and set(scores) == {1e-4, 0.01, 0.03}


def test_classification_reports_per_language_accuracy_in_range():
    cfg = load(
        None,
        [
            "data.episode=classify",
            "model.kind=gru",
            "model.hidden=8",
            "model.embed=4",
            "data.n_way=3",
            "data.max_len=8",
        ],
    )
    words = {
        t: {"text": np.array([f"{t}{i}" for i in range(12)], dtype=object)}
        for t in ("aa", "bb", "cc", "dd")
    }
    model = build_model(cfg.model, cfg.data)
    eps = ev.make_episodes(
        words.__getitem__, sorted(words), cfg.data, shot=2, k_query=3, n_episodes=2, seed=0
    )
    m = ev.Method("random init", baselines.random_init(model, cfg, seed=0), 0.1)
    vals = ev.run_method(model, m, eps, (0, 1), n_way=3)
    assert set(vals[1]) == set(words)  # every language reported
    assert all(0.0 <= v <= 1.0 for per in vals[1].values() for v in per)
    assert sum(len(v) for v in vals[1].values()) == 3 * len(eps)  # one value per class


def test_script_groups_split_held_out_languages_by_seen_script():
    g = eval_inputs.script_groups("wordlang", ["ar", "en", "ru"], ["fa", "ko", "pt", "ta", "uk"])
    assert g == {"seen script": ["fa", "pt", "uk"], "unseen script": ["ko", "ta"]}
    assert eval_inputs.script_groups("text", ["a"], ["b"]) == {}


def test_baseline_file_round_trip_without_pickle(tmp_path: Path, sine):
    cfg, model, state, _ = sine
    path = baselines.save_params(tmp_path / "b.safetensors", state.params, {"steps": 7})
    params, meta = baselines.load_params(path)
    assert meta == {"steps": 7} and baselines.matches(params, state.params)
    assert all(torch.equal(params[k], state.params[k]) for k in params)


# ---------------------------------------------------------------- `metaray evaluate` end to end
def _checkpoint(tmp: Path, overrides: list[str], steps: int) -> Path:
    from pipeline import checkpoint, config, local_train

    cfg = config.load(None, [*overrides, "tracking.enabled=false", "cluster.threads_per_worker=1"])
    res = local_train.train(cfg, steps=steps)
    return checkpoint.save(
        tmp / "run" / f"checkpoint_{steps:06d}", res.state, config=config.to_dict(cfg)
    )


@pytest.fixture(scope="module")
def sine_run(tmp_path_factory):
    """Sinusoid shards and a short MAML run's checkpoint (bank.threshold=-1: always warm)."""
    from pipeline.cli import main

    tmp = tmp_path_factory.mktemp("sine-run")
    shards = tmp / "sine"
    assert (
        main(
            [
                "shards",
                "build",
                "sinusoid",
                "--out",
                str(shards),
                "--train-tasks",
                "60",
                "--val-tasks",
                "4",
                "--test-tasks",
                "10",
                "--points",
                "40",
            ]
        )
        == 0
    )
    _checkpoint(
        tmp,
        [
            f"data.uri={shards}",
            "data.episode=regression",
            "model.kind=mlp",
            "model.hidden=40",
            "model.layers=2",
            "data.k_support=10",
            "data.k_query=10",
            "outer.meta_batch=10",
            "outer.lr=0.003",
            "outer.val_every=1000",
            "bank.threshold=-1",
        ],
        steps=250,
    )
    return tmp, shards


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
    res = rep["results"]["10"]
    for method in res.values():
        for stat in method.values():
            o = stat["overall"]
            assert o["n_tasks"] == 10 and o["n_episodes"] == 30 and o["lo"] <= o["mean"] <= o["hi"]
    assert res["meta-init"]["1"]["overall"]["mean"] < res["random init"]["1"]["overall"]["mean"]


def test_bank_warm_start_starts_a_recurring_task_at_its_stored_quality(sine_run):
    from pipeline import checkpoint as ckpt
    from pipeline import config
    from pipeline.bank.service import BankService
    from pipeline.bank.warm_start import flatten_batched
    from pipeline.data import episodes as ep
    from pipeline.data.shards import open_shard_set
    from pipeline.meta.descriptor import describe
    from pipeline.meta.inner import adapt

    tmp, shards = sine_run
    loaded = ckpt.load(eval_inputs.find_checkpoint(str(tmp / "run")))
    cfg = config.from_dict(loaded.config)
    model = build_model(cfg.model, cfg.data)
    sset = open_shard_set(str(shards))
    task = sset.tasks("test")[0]
    rows = sset.read_task(task)  # all 40 points: a well-adapted copy of this task
    sup = ep.to_torch(ep.collate([ep.regression_episode(rows, 39, 1, np.random.default_rng(0))]))
    adapted = adapt(
        loaded.state.params, None, sup.support, model=model, steps=100, lrs=0.01, first_order=True
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
    png = tmp / "eval-bank" / "bank_descriptor_map.png"  # the bank's entries and the queries
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


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
    _checkpoint(
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
    _checkpoint(
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
