"""Inputs of `metaray evaluate` (`pipeline/eval/inputs.py`)."""

from __future__ import annotations

from pipeline.eval import inputs as eval_inputs


def test_script_groups_split_held_out_languages_by_seen_script():
    g = eval_inputs.script_groups("wordlang", ["ar", "en", "ru"], ["fa", "ko", "pt", "ta", "uk"])
    assert g == {"seen script": ["fa", "pt", "uk"], "unseen script": ["ko", "ta"]}
    assert eval_inputs.script_groups("text", ["a"], ["b"]) == {}
