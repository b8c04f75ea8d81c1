"""`tune.scheduler=pbt` on the smoke sweep, on the embedded Ray `metaray tune` starts itself,
as a user runs it. (On the tests' in-process cluster, which has no dashboard, a restarted
trial waited for CPUs that the stopped one never gave back: Ray Train's placement-group
cleaner, which frees them, asks the State API the dashboard serves.)"""

from __future__ import annotations

import itertools
import re
import signal
from pathlib import Path
from typing import Any

import pytest

from pipeline.runtime.tune import run_sweep
from pipeline.runtime.tune_config import load_sweep

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _pbt_smoke(smoke_shards: Path, tmp_path: Path) -> tuple[Any, Any]:
    """The smoke sweep under synchronous PBT: 2 trials, 80 steps, one boundary at step 50."""
    return load_sweep(
        ROOT / "configs/tune_smoke.yaml",
        [
            f"data.uri={smoke_shards}",
            f"checkpoint.storage={tmp_path / 'runs'}",
            "tracking.enabled=false",
            f"tune.storage={tmp_path / 'tune'}",
            "tune.name=pbt-smoke",
            "tune.scheduler=pbt",
            "tune.num_samples=2",
            # Synchronous PBT: at step 50 the trial that arrives first waits for the other, so
            # they are compared even when one trial's start-up outlasts the other's whole run
            # (asynchronous PBT saw no exploit in a CI run: one trial reported only at step
            # 190). 80 steps: step 50 is the one boundary, the last step is none.
            "tune.pbt.synch=true",
            "tune.pbt.perturbation_interval=50",
            "outer.steps=80",
            "outer.val_every=10",
            "checkpoint.every=10",
            "cluster.node_wait_s=60",  # a trial that cannot be placed fails, not hangs
        ],
    )


def test_pbt_exploit_continues_from_the_donors_checkpoint_with_a_perturbed_lr(
    smoke_shards: Path, tmp_path: Path
) -> None:
    """`tune.scheduler=pbt` on the smoke sweep (2 trials side by side): a weak trial is
    restarted from the strong one's checkpoint (handed through Tune: `tune_pbt`). Every run
    Tune restarts resumes at the handed checkpoint's step with that trial's history up to it
    (the donor's, not its own past), and an exploiting one trains on with a perturbed lr."""
    from pipeline import checkpoint as ckpt

    base, sweep = _pbt_smoke(smoke_shards, tmp_path)
    result = run_sweep(base, sweep, quiet=True)
    assert len(result.rows) == 2 and {r.state for r in result.rows} == {"DONE"}
    trials = tmp_path / "tune" / "pbt-smoke" / "trials"
    runs = [d for d in trials.iterdir() if list(d.glob("checkpoint_*/meta.json"))]
    newest = {d.name: ckpt.load(ckpt.find(str(d), select="last").path) for d in runs}
    # each run Tune restarted with a checkpoint (PBT's exploit, or its own after a pause)
    restarts = sorted(n for n in newest if "-x" in n)
    exploits = []
    for name in restarts:
        got = newest[name]
        s = int(name.rsplit("-s", 1)[1])  # the step of the checkpoint it started from
        assert [int(h["step"]) for h in got.history] == list(range(1, got.state.step + 1))
        assert got.state.step > s  # it trained on from there
        # Tune's copy of the checkpoint it was handed names the trial that wrote it
        handed = got.config["checkpoint"]["resume_from"]
        source = re.search(r"_trial_([0-9a-f]+_\d+)_", handed).group(1)
        matches = [
            n
            for n, other in newest.items()
            if source in n and n != name and other.history[:s] == got.history[:s]
        ]
        assert matches, f"{name}: no run of trial {source} has the steps it started from"
        if source not in name:  # another trial's state: PBT's exploit
            exploits.append((got, newest[matches[0]]))
    assert exploits, sorted(newest)  # PBT exploited at least once
    for got, donor in exploits:
        assert got.config["outer"]["lr"] != donor.config["outer"]["lr"]  # perturbed


def test_an_exploited_trial_whose_pause_was_mid_save_still_trains_to_the_end(
    smoke_shards: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The interleaving a CI run met, made certain: the weaker trial reaches step 50 first and
    its pause's save is still in flight when the other trial's step-50 result comes in. PBT
    then exploits the weaker one mid-save, and Ray 2.60's Tune kept a STOP for it that ended
    its restarted run at its first checkpoint (step 60 of 80). Scores are ranked by arrival
    (first = weakest) and that one save is held until the other trial's result is in."""
    from ray.tune.execution.tune_controller import TuneController
    from ray.tune.schedulers.pbt import PopulationBasedTraining

    arrivals = itertools.count(1)
    save_state = PopulationBasedTraining._save_trial_state

    def ranked_by_arrival(self: Any, state: Any, time: int, result: dict, trial: Any) -> Any:
        save_state(self, state, time, result, trial)
        state.last_score = next(arrivals)  # higher is better: the first to arrive is weakest
        return state.last_score

    held: list = []
    at_boundary: set = set()  # trials whose step-50 result has been processed
    on_saving = TuneController._on_saving_result
    process = TuneController._process_trial_result

    def hold_first_boundary_save(self: Any, trial: Any, value: Any) -> Any:
        if (value.metrics or {}).get("step") == 50 and not held:
            if at_boundary - {trial.trial_id}:
                # the other trial's result already came in while this save was in flight: the
                # interleaving happened by itself (holding now would wait forever: no release)
                held.append(None)
                return on_saving(self, trial, value)
            held.append((trial, value))
            return None
        return on_saving(self, trial, value)

    def release_after_the_other_arrives(self: Any, trial: Any, result: dict) -> Any:
        out = process(self, trial, result)
        if result.get("step") == 50:
            at_boundary.add(trial.trial_id)
        if held and held[0] and result.get("step") == 50 and trial is not held[0][0]:
            waiting, value = held[0]
            held[0] = None
            if waiting.is_saving:  # Tune dropped the save when the exploit stopped the trial
                on_saving(self, waiting, value)
        return out

    monkeypatch.setattr(PopulationBasedTraining, "_save_trial_state", ranked_by_arrival)
    monkeypatch.setattr(TuneController, "_on_saving_result", hold_first_boundary_save)
    monkeypatch.setattr(TuneController, "_process_trial_result", release_after_the_other_arrives)
    base, sweep = _pbt_smoke(smoke_shards, tmp_path)

    def stuck(*_: Any) -> None:  # a hold never released would spin Tune's loop for ever
        raise TimeoutError("the sweep did not end in 300 s: a held save was never released")

    previous = signal.signal(signal.SIGALRM, stuck)
    signal.alarm(300)
    try:
        result = run_sweep(base, sweep, quiet=True)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert held == [None], "the interleaving did not happen: the test decided nothing"
    assert [(r.state, r.steps) for r in result.rows] == [("DONE", 80), ("DONE", 80)]
