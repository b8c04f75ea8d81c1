"""The evaluation's plain verdict: derived from the paired CIs over held-out tasks, honest
when the meta-init does not win, silent on numbers when too few tasks decide."""

from __future__ import annotations

import numpy as np

from pipeline.eval import report as eval_report


def _raw(delta_by_task: dict[str, float], noise: float = 0.01, n_ep: int = 4, steps=(0, 1)):
    """meta-init = multitask + delta per task (per episode, small noise), the same at every
    step count in `steps` (1 step only by default)."""
    rng = np.random.default_rng(0)
    base = {t: list(5.0 + rng.normal(0, 0.5, n_ep)) for t in delta_by_task}
    meta = {t: [b + d + rng.normal(0, noise) for b in base[t]] for t, d in delta_by_task.items()}
    per = lambda v: dict.fromkeys(steps, v)  # noqa: E731
    return {"multitask": {8: per(base)}, "meta-init": {8: per(meta)}}


def _verdict(
    deltas: dict[str, float], groups: dict[str, list[str]] | None = None, steps=(0, 1)
) -> list[str]:
    rep = eval_report.build(
        _raw(deltas, steps=steps),
        kind="lm",
        metric="bits per byte",
        higher_is_better=False,
        groups=groups,
        info={"family": "wordlang"},
    )
    return rep["verdict"]


def test_a_clear_win_is_stated_with_its_gain_and_ci_over_languages():
    langs = {f"l{i}": -0.4 + 0.02 * i for i in range(8)}
    (line,) = _verdict(langs)
    gain = -np.mean(list(langs.values()))
    assert line.startswith("meta-init beats multitask fine-tuning after 1 step at K=8 by")
    assert f"by {gain:.2f} bpb" in line and "8 held-out languages" in line
    lo, hi = (float(x) for x in line.split("95% CI ")[1].split(",")[0].split(" to "))
    assert 0 < lo < gain < hi


def test_a_loss_or_a_tie_is_not_called_a_win():
    (worse,) = _verdict({f"l{i}": 0.3 + 0.01 * i for i in range(6)})
    assert "WORSE" in worse and "beats" not in worse
    (tie,) = _verdict({f"l{i}": (-1) ** i * 0.2 for i in range(6)})
    assert tie.startswith("meta-init does not measurably beat")


def test_each_script_group_gets_its_own_verdict_where_the_pooled_ci_hides_it():
    """Seen-script languages win by 0.1, unseen-script ones lose by 0.8: pooled, no verdict;
    per group, a win and a loss, each with its own CI and count."""
    seen = {f"s{i}": -0.1 + 0.005 * i for i in range(6)}
    unseen = {f"u{i}": 0.8 + 0.05 * i for i in range(4)}
    pooled, win, loss = _verdict({**seen, **unseen}, {"seen": list(seen), "unseen": list(unseen)})
    assert pooled.startswith("meta-init does not measurably beat") and "10 held-out" in pooled
    assert win.startswith("seen: meta-init beats multitask fine-tuning after 1 step at K=8 by")
    assert "6 held-out languages" in win
    assert loss.startswith("unseen: meta-init is WORSE") and "4 held-out languages" in loss
    # a group too small for a CI says so once, not once per step count
    two = {"seen": list(seen), "unseen": ["u0", "u1"]}
    lines = _verdict({**seen, "u0": 0.8, "u1": 0.9}, two, steps=(0, 1, 2, 5))
    assert lines[-1] == "unseen: 2 held-out languages at K=8 cannot decide (need 4+)"
    assert sum(ln.startswith("unseen") for ln in lines) == 1
    assert sum(ln.startswith("seen: meta-init beats") for ln in lines) == 3


def test_three_languages_cannot_decide_and_group_cis_show_no_numbers():
    (line,) = _verdict({"a": -0.5, "b": -0.6, "c": -0.4})
    assert "cannot decide" in line and "95% CI" not in line
    rep = eval_report.build(
        _raw({"a": -0.5, "b": -0.6, "c": -0.4, "d": -0.5}),
        kind="lm",
        metric="bits per byte",
        higher_is_better=False,
        groups={"unseen script": ["a", "b"]},
    )
    text = eval_report.table(rep)
    group_rows = [ln for ln in text.splitlines() if ln.startswith("  Δ meta-init - multitask")]
    assert group_rows and all("±" not in ln and "(n=2)" in ln for ln in group_rows)


def test_the_eval_json_carries_no_credential_and_no_nan(tmp_path):
    import json

    rep = {
        "checkpoint": "s3://AKIAABCDEFGHIJKLMNOP@bucket/runs/x",
        "tracking": {"uri": "http://alice:Pw4Tracking9xq@127.0.0.1:5000"},
        "results": {"8": [1.5, float("nan")]},
    }
    text = eval_report.write_json(rep, tmp_path / "eval.json").read_text()
    assert "Pw4Tracking9xq" not in text and "AKIAABCDEFGHIJKLMNOP" not in text
    back = json.loads(text)
    assert back["tracking"]["uri"] == "http://***@127.0.0.1:5000"  # the host stays: useful
    assert back["results"]["8"] == [1.5, None]


def test_the_console_shows_one_shot_count_in_full_and_summarises_the_others():
    one = _raw({f"l{i}": -0.3 for i in range(6)})
    raw = {m: {8: per[8], 32: per[8]} for m, per in one.items()}
    rep = eval_report.build(
        raw, kind="lm", metric="bits per byte", higher_is_better=False, info={"family": "wordlang"}
    )
    console, full = eval_report.table(rep, full=1), eval_report.table(rep)
    for text in (console, full):  # both shot counts keep their method and Δ rows
        assert text.count("method \\ inner steps") == 2
        assert "(lower is better; 8.02 = a uniform guess over bytes)" in text
    assert console.count("per task after") == 1 and full.count("per task after") == 2
    assert "K=32: groups and per-task rows in eval_table.txt" in console
    assert console.count("l3 ") == 1 and full.count("l3 ") == 2  # one task row per full block


def _grouped_report(n_unseen: int):
    """A report over 6 seen-script languages that win by ~0.09 and `n_unseen` that lose."""
    seen = {f"s{i}": -0.1 + 0.005 * i for i in range(6)}
    unseen = {f"u{i}": 0.8 + 0.05 * i for i in range(n_unseen)}
    groups = {"seen script": list(seen), "unseen script": list(unseen)}
    rep = eval_report.build(
        _raw({**seen, **unseen}),
        kind="lm",
        metric="bits per byte",
        higher_is_better=False,
        groups=groups,
    )
    return rep, seen, unseen, groups


def test_the_evaluation_plot_shows_each_script_groups_own_paired_difference(tmp_path):
    """Below the pooled panels, one panel per group plots that group's meta-init minus
    multitask: the numbers the per-group verdict lines quote, not the pooled ones."""
    from pipeline.tracking.plots import eval_figure, eval_plots

    rep, seen, unseen, groups = _grouped_report(n_unseen=2)
    fig = eval_figure(rep, "8")
    axes = [a for sub in fig.subfigs for a in sub.axes]
    titles = [a.get_title() for a in axes]
    assert titles[2:] == [
        "seen script (6 tasks): 95% CI",
        "unseen script (2 tasks): mean only, too few for a CI",
    ]
    for ax, g, deltas in zip(axes[2:], groups, (seen, unseen), strict=True):
        (line,) = ax.get_lines()[:1]
        plotted = list(line.get_ydata())
        want = [rep["by_group"]["8"][g]["meta-init - multitask"][s]["mean"] for s in ("0", "1")]
        assert plotted == want
        assert abs(plotted[1] - np.mean(list(deltas.values()))) < 0.02
    (bars,) = axes[3].collections  # the 2-language group: its error bars have no height
    assert all(abs(seg[1][1] - seg[0][1]) == 0 for seg in bars.get_segments())
    (png,) = eval_plots(rep, tmp_path)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_mlflow_metrics_carry_each_groups_paired_difference_with_its_ci():
    """The evaluation run's metrics hold, per script group, meta-init minus each method with
    its CI at every step: what the verdict's group lines say, comparable across runs."""
    from pipeline.tracking.evaluation import _metrics

    rep, seen, unseen, groups = _grouped_report(n_unseen=4)
    got = _metrics(rep)
    for group, deltas in (("seen script", seen), ("unseen script", unseen)):
        o = rep["by_group"]["8"][group]["meta-init - multitask"]["1"]
        base = f"eval/k8/{group.replace(' ', '_')}/meta_init_minus_multitask"
        assert got[1][base] == o["mean"] and abs(o["mean"] - np.mean(list(deltas.values()))) < 0.02
        assert got[1][f"{base}/ci_lo"] < got[1][base] < got[1][f"{base}/ci_hi"]
    assert "eval/k8/meta_init_minus_multitask" in got[1]  # the pooled one stays
