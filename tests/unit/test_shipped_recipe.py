"""The shipped language configs are the recipe `bench/fewshot.py` chose and measured: a config
that drifts from it would ship figures (README "Measured") that were never measured for it."""

import sys
from pathlib import Path

import pytest

from pipeline import config

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
from fewshot import RECIPE  # noqa: E402
from fewshot_train import meta_inner  # noqa: E402

KEYS = (
    "algorithm",
    "lr_shape",
    "step_schedule",
    "learn_init",
    "lr",
    "first_order",
    "lr_max",
    "max_step_norm",
    "init_objective",
)


@pytest.mark.parametrize("stage2", ["quickstart", "wordlang"])
def test_shipped_config_is_the_benchmarked_recipe(stage2):
    cfg = config.load(ROOT / "configs" / f"{stage2}.yaml")
    expected = meta_inner(cfg, RECIPE)
    assert {k: getattr(cfg.inner, k) for k in KEYS} == {k: getattr(expected, k) for k in KEYS}
    assert cfg.outer.lrs_lr == RECIPE.lrs_lr
    pretrain = config.load(ROOT / "configs" / f"{stage2}-pretrain.yaml")
    # The init keeps training at the multitask stage's own outer lr, as in the benchmark
    # (RECIPE.outer_lr is the benchmark's multitask lr); each config's stage 1 sets its own.
    assert cfg.outer.lr == pretrain.outer.lr
    share = pretrain.outer.steps / (pretrain.outer.steps + cfg.outer.steps)
    assert share == pytest.approx(RECIPE.pretrain)
    assert cfg.checkpoint.init_from == f"runs/{stage2}-pretrain"
