"""Sweep configs: clear errors before Ray starts, trial configs, concurrency from the cluster."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import config
from pipeline.cli import main
from pipeline.config import ConfigError
from pipeline.runtime.tune import (
    concurrency,
    in_trial,
    search_space,
    trial_config,
    trial_resources,
)
from pipeline.runtime.tune_config import load_sweep
from pipeline.runtime.tune_report import TrialRow, format_table, write_best

ROOT = Path(__file__).resolve().parents[3]


def _sweep(tmp_path: Path, tune_yaml: str, run_yaml: str = "") -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(run_yaml + "tune:\n" + tune_yaml)
    return path


def test_shipped_sweep_configs_load() -> None:
    base, sweep = load_sweep(ROOT / "configs/tune_inner_lr.yaml")
    assert sweep.space["inner.algorithm"] == {"choice": ["maml", "metasgd"]}
    assert sweep.scheduler == "asha" and sweep.metric == "val_loss_post"
    smoke = ROOT / "configs/tune_smoke.yaml"
    base, sweep = load_sweep(smoke, ["tune.num_samples=5", "outer.steps=4"])
    assert (sweep.num_samples, base.outer.steps) == (5, 4)


@pytest.mark.parametrize(
    ("tune_yaml", "message"),
    [
        (
            "  space: {inner.lrr: {loguniform: [0.001, 0.1]}}\n",
            "unknown run-config key 'inner.lrr'; did you mean 'inner.lr'?",
        ),
        ("  space: {inner.lr: {logunif: [0.001, 0.1]}}\n", "give exactly one of loguniform"),
        ("  space: {inner.lr: {loguniform: [0.0, 0.1]}}\n", "loguniform needs low > 0"),
        ("  space: {inner.lr: {uniform: [0.5, 0.1]}}\n", "low must be below high"),
        ("  space: {inner.steps: {choice: [1, -2]}}\n", "tune.space.inner.steps=-2"),
        ("  space: {inner.algorithm: {choice: [maml, metasdg]}}\n", "inner.algorithm='metasdg'"),
        (
            "  space: {inner.lr: {loguniform: [0.001, 0.1]}}\n  scheduler: pbt\n",
            "scheduler=pbt perturbs outer.lr only",
        ),
        ("  space: {inner.steps: {grid: [1, 2]}}\n  search: optuna\n", "cannot take grid"),
        (
            "  space: {inner.lr: {loguniform: [0.001, 0.1]}}\n  num_sample: 3\n",
            "tune.num_sample: unknown key; did you mean 'tune.num_samples'?",
        ),
        ("  space: {}\n", "tune.space is empty"),
    ],
)
def test_bad_sweeps_are_named_before_anything_runs(
    tmp_path: Path, tune_yaml: str, message: str
) -> None:
    path = _sweep(tmp_path, tune_yaml)
    with pytest.raises(ConfigError) as err:
        load_sweep(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_space_override_from_command_line_and_cli_check(tmp_path: Path, capsys) -> None:
    path = _sweep(tmp_path, "  space: {inner.lr: {loguniform: [0.001, 0.1]}}\n")
    _, sweep = load_sweep(path, ["tune.space.inner.steps={choice: [1, 3]}"])
    assert sweep.space == {
        "inner.lr": {"loguniform": [0.001, 0.1]},
        "inner.steps": {"choice": [1, 3]},
    }
    assert main(["tune", "--config", str(path), "--check"]) == 0
    assert "1 searched key(s)" in capsys.readouterr().out
    assert main(["tune", "--config", str(path), "--check", "tune.scheduler=pbt"]) == 2
    assert "perturbs outer.lr only" in capsys.readouterr().err


def test_search_space_becomes_tune_domains() -> None:
    from ray.tune.search.sample import Categorical, Float, Integer

    space = search_space(
        {
            "inner.lr": {"loguniform": [0.001, 0.1]},
            "inner.steps": {"choice": [1, 3]},
            "model.hidden": {"randint": [8, 64]},
            "outer.lr": {"grid": [0.001, 0.01]},
        }
    )
    assert isinstance(space["inner.lr"], Float) and space["inner.lr"].lower == 0.001
    assert isinstance(space["inner.steps"], Categorical)
    assert isinstance(space["model.hidden"], Integer)
    assert space["outer.lr"] == {"grid_search": [0.001, 0.01]}


def test_concurrency_fits_the_cluster() -> None:
    base, sweep = load_sweep(ROOT / "configs/tune_smoke.yaml")
    assert concurrency(base, sweep, {"CPU": 2.0}) == 2  # 0.5 driver + 0.5 worker per trial
    assert (
        concurrency(base, sweep.model_copy(update={"max_concurrent_trials": 1}), {"CPU": 2.0}) == 1
    )
    big, sweep = load_sweep(ROOT / "configs/tune_inner_lr.yaml", ["cluster.use_gpu=true"])
    # 2 GPU workers per trial: 8 GPUs fit 4 trials even with 64 CPUs free
    assert concurrency(big, sweep, {"CPU": 64.0, "GPU": 8.0}) == 4
    base, sweep = load_sweep(ROOT / "configs/tune_inner_lr.yaml")
    with pytest.raises(ConfigError, match=r"one trial needs 2 CPU\(s\).*has 1 CPU"):
        concurrency(base, sweep, {"CPU": 1.0})


def test_in_worker_episodes_hold_no_cpu_and_actors_hold_theirs() -> None:
    base, sweep = load_sweep(ROOT / "configs/tune_smoke.yaml", ["cluster.episode_actor_cpus=0.5"])
    assert trial_resources(base, sweep)["CPU"] == 1.0 + base.cluster.episode_actors * 0.5
    none, _ = load_sweep(
        ROOT / "configs/tune_smoke.yaml",
        ["cluster.episode_actor_cpus=0.5", "cluster.episode_actors=0"],
    )
    assert trial_resources(none, sweep)["CPU"] == 1.0  # 0.5 driver + 1 worker x 0.5
    assert concurrency(none, sweep, {"CPU": 2.0}) == 2


def test_trials_train_in_their_own_process_where_that_applies_and_say_why_not() -> None:
    smoke = ROOT / "configs/tune_smoke.yaml"
    assert in_trial(*load_sweep(smoke))  # 1 worker, CPU, in-worker episodes, ASHA
    assert not in_trial(*load_sweep(smoke, ["tune.trial_runs=train"]))
    for blocker in ("cluster.num_workers=2", "cluster.episode_actors=1"):
        assert not in_trial(*load_sweep(smoke, [blocker]))  # auto: the Train run
    assert not in_trial(*load_sweep(ROOT / "configs/tune_inner_lr.yaml"))  # 2 workers
    base, sweep = load_sweep(smoke, ["tune.trial_runs=in_trial", "cluster.num_workers=2"])
    with pytest.raises(ConfigError, match=r"cluster.num_workers=2 \(needs 1\).*trial_runs=train"):
        in_trial(base, sweep)


def test_trial_config_applies_values_and_nests_under_the_sweep() -> None:
    base, _ = load_sweep(ROOT / "configs/tune_inner_lr.yaml")
    cfg = trial_config(
        config.to_dict(base),
        {"inner.lr": 0.05, "inner.algorithm": "metasgd"},
        trial_id="abc_00001",
        sweep_dir="/tmp/sweeps/inner-lr",
        parent_run_id="p123",
    )
    assert cfg.inner.lr == 0.05 and cfg.inner.algorithm == "metasgd"
    assert cfg.checkpoint.run_name == "inner-lr-abc_00001"
    assert cfg.checkpoint.storage == "/tmp/sweeps/inner-lr/trials"
    assert cfg.tracking.parent_run_id == "p123"
    assert base.tracking.parent_run_id is None  # the base is untouched


def test_best_config_yaml_trains_as_is_and_table_lists_trials(tmp_path: Path) -> None:
    base, sweep = load_sweep(ROOT / "configs/tune_smoke.yaml")
    rows = [
        TrialRow(
            "t_00000",
            "tune-smoke-t_00000",
            {"inner.lr": 0.1, "outer.lr": 0.003},
            2.07,
            6,
            "DONE",
            "/ck/0",
        ),
        TrialRow(
            "t_00001",
            "tune-smoke-t_00001",
            {"inner.lr": 0.003, "outer.lr": 0.0008},
            3.84,
            2,
            "STOPPED",
            None,
        ),
    ]
    table = format_table(rows, "val_loss_post", list(sweep.space))
    lines = table.splitlines()
    assert lines[0].split() == [
        "trial",
        "inner.lr",
        "outer.lr",
        "best",
        "val_loss_post",
        "steps",
        "state",
    ]
    assert lines[2].split() == ["t_00000", "0.1", "0.003", "2.07", "6", "DONE"]
    assert lines[3].split()[-2:] == ["2", "STOPPED"]
    best = base.model_copy(update={"inner": base.inner.model_copy(update={"lr": 0.1})})
    out = write_best(best, str(tmp_path / "best.yaml"), sweep, rows[0])
    assert config.load(out) == best
    assert Path(out).read_text().startswith("# Best trial t_00000")


def test_optuna_search_takes_the_space() -> None:
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from pipeline.runtime.tune import _search

    _, sweep = load_sweep(ROOT / "configs/tune_inner_lr.yaml", ["tune.search=optuna"])
    searcher = _search(sweep)
    dists = searcher.convert_search_space(search_space(sweep.space))
    assert isinstance(dists["inner.lr"], FloatDistribution) and dists["inner.lr"].log
    assert isinstance(dists["inner.algorithm"], CategoricalDistribution)
    assert set(dists) == set(sweep.space)
