"""Evaluation statistics users read off the table (`pipeline/eval/stats.py`)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.eval import stats as st


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
