"""Inputs of `metaray evaluate` (`pipeline/eval/inputs.py`)."""

from __future__ import annotations

from pipeline.eval import inputs as eval_inputs


def test_script_groups_split_held_out_languages_by_seen_script():
    g = eval_inputs.script_groups("wordlang", ["ar", "en", "ru"], ["fa", "ko", "pt", "ta", "uk"])
    assert g == {"seen script": ["fa", "pt", "uk"], "unseen script": ["ko", "ta"]}
    assert eval_inputs.script_groups("text", ["a"], ["b"]) == {}


def test_a_run_started_from_a_pretraining_run_counts_its_steps_for_the_baseline(tmp_path):
    """Pretrain 12 steps at outer lr 0.003, then meta-train from it at another outer lr
    (0.3): the multitask baseline must get the 12 steps too, at the
    pretraining's lr (a weakened baseline is no comparison)."""
    from pipeline import checkpoint as ckpt
    from pipeline import config
    from pipeline.meta import outer
    from pipeline.models import build_model

    pre = config.load("configs/quickstart-pretrain.yaml", ["outer.lr=0.003"])
    model = build_model(pre.model, pre.data)
    state = outer.init_state(model, pre.inner, pre.outer, seed=0)._replace(step=12)
    ckpt.save(tmp_path / "pre" / "step-00000012", state, config=config.to_dict(pre))
    over = [f"checkpoint.init_from={tmp_path / 'pre'}", "outer.lr=0.3"]
    run = config.load("configs/quickstart.yaml", over)
    said: list[str] = []
    steps, init_outer = eval_inputs.init_run(run, said.append)
    assert steps == 12 and init_outer.lr == 0.003 and run.outer.lr != 0.003
    assert "counted in the baseline's budget" in said[0]
    assert eval_inputs.init_run(config.load("configs/smoke.yaml"), said.append) == (0, None)
