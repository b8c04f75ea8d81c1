"""Every command line of the README's ```bash blocks is run by a test (or by a script that CI
or a user runs), or says why it is not. A new README command without either fails here,
naming the line; so does an entry below whose line left the README, or a test it names
that does not exist. The lines are read as tests/readme.py reads them (continuations
joined, comments dropped, spaces collapsed)."""

from __future__ import annotations

import re

import pytest

from tests.readme import ROOT, command_lines

OWN = "tests/integration/test_readme_own_data.py::test_the_readme_own_data_chain_runs_as_written"
JOB = "tests/integration/test_train_job.py::test_the_readme_cluster_example_runs_as_written"
CMDS = "tests/integration/test_readme_commands.py::"
SHARDS = CMDS + "test_the_readme_shards_lines_build_what_they_say"
TRAIN = CMDS + "test_the_readme_training_lines_train_what_they_say"
SWEEPS = CMDS + "test_the_readme_optuna_sweep_runs_and_writes_a_trainable_best_config"
BUDGET = "not run as written, to keep the suite under 15 min (each Ray run costs 12-20 s): "
QUICK = CMDS + "test_the_quickstart_script_runs_as_written"
BANK = CMDS + "test_the_readme_bank_lines_store_warm_start_export_and_restore"
FIXTURE_HEAD = "not run as written: the ray_head fixture (tests/fixtures/ray_cluster.py) does it"
NO_GPU = "not run: needs a GPU machine (CI and this machine have none)"

# README command line -> the test (path::name) or script that runs it, or "not run: why"
RUN_BY = {
    # top: the two entry points
    "scripts/quickstart.sh": QUICK,  # its metaray lines; setup.sh is what CI runs first
    "scripts/test.sh": ".ci/run",
    # GPU install
    'python3 -m venv .venv && .venv/bin/pip install "torch==2.13.0"': NO_GPU,
    '.venv/bin/pip install -e ".[tune]" && .venv/bin/python -c "import torch; '
    'print(torch.cuda.is_available())"': NO_GPU,
    ".venv/bin/metaray train --config configs/quickstart.yaml cluster.use_gpu=true": NO_GPU,
    # Task data
    "M=.venv/bin/metaray": "not run: sets the shell variable; the tests call the same CLI",
    "$M shards build sinusoid --out data/sinusoid": SHARDS,
    "$M shards build wordlang --out data/wordlang --top-n 5000": SHARDS,
    "$M shards build text --input my_corpus/ --out data/mine --test-keys a,b": SHARDS,
    "$M shards build text --input corpus.parquet --task-column lang --text-column text "
    "--out s3://bucket/shards/mine": SHARDS,
    "$M shards inspect data/wordlang": SHARDS,
    # Your own data, end to end
    "$M shards build text --input corpus.parquet --task-column lang --text-column text "
    "--out data/mine --val-keys xx,yy --test-keys zz,ww": OWN,
    "$M shards inspect data/mine": OWN,
    "$M config cp quickstart mine.yaml": OWN,
    "$M train --config mine.yaml data.uri=data/mine checkpoint.init_from=null "
    "checkpoint.run_name=mine": OWN,
    "$M evaluate --checkpoint runs/mine --shards data/mine --out runs/mine-eval": OWN,
    "printf 'first example\\nsecond example\\n' > support.txt": OWN,
    "$M adapt --checkpoint runs/mine --support support.txt --out mine-adapted.safetensors": OWN,
    "$M train --config mine.yaml data.uri=data/mine checkpoint.init_from=null "
    "checkpoint.run_name=mine-bank bank.enabled=true bank.snapshot_uri=bank/mine": OWN,
    "$M adapt --checkpoint runs/mine-bank --support support.txt --out a.safetensors "
    "--bank-uri bank/mine": OWN,
    # Training
    "$M train --config configs/quickstart.yaml": QUICK,
    "$M shards build sinusoid --out data/sinusoid && $M train --config "
    "configs/sinusoid.yaml": TRAIN,
    "$M shards build wordlang --out data/wordlang --top-n 5000 && $M train --config "
    "configs/wordlang.yaml checkpoint.init_from=null": BUDGET
    + SHARDS
    + " runs the build; "
    + BANK
    + " trains this config with these overrides and the bank on",
    "$M train --config configs/sinusoid.yaml inner.algorithm=metasgd outer.lr=3e-4 "
    "checkpoint.run_name=sine-metasgd": TRAIN,
    ".venv/bin/python -m pipeline.local_train configs/sinusoid.yaml outer.steps=500": TRAIN,
    "$M config show --config configs/wordlang.yaml cluster.num_workers=4": TRAIN,
    "$M config keys": TRAIN,
    # On a Ray cluster
    ".venv/bin/ray get-auth-token --generate": FIXTURE_HEAD + " with a token file of its own "
    "(this one writes the user's ~/.ray/auth_token)",
    "RAY_AUTH_MODE=token .venv/bin/ray start --head --block &": FIXTURE_HEAD + " on free ports "
    "(other Rays here may hold the defaults)",
    "RAY_PID=$!": FIXTURE_HEAD + " (it keeps the head's process)",
    "export RAY_AUTH_MODE=token": FIXTURE_HEAD + " (its client environment)",
    "$M shards build wordlang --out data/quickstart-wordlang --top-n 300 --seed 0": JOB,
    "ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/train.py "
    "--config configs/quickstart.yaml data.uri=$PWD/data/quickstart-wordlang "
    "checkpoint.storage=$PWD/runs tracking.uri=sqlite:///$PWD/mlflow.db "
    "checkpoint.init_from=null": JOB,
    "kill $RAY_PID": FIXTURE_HEAD + " (stop_group: its head's process group only)",
    # Sweeps
    "$M tune --config configs/tune_inner_lr.yaml": BUDGET + SWEEPS + " runs this file with "
    "tune.search=optuna (the next line); tests/integration/test_tune_sweep.py::"
    "test_asha_sweep_parent_children_best_config_and_resume runs ASHA with random search",
    "$M tune --config configs/tune_inner_lr.yaml tune.search=optuna tune.name=inner-lr-optuna": (
        SWEEPS
    ),
    # Tracking
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false .venv/bin/mlflow server --host 127.0.0.1 "
    "--port 5000 --workers 1 --backend-store-uri sqlite:///mlflow-server.db "
    "--artifacts-destination s3://bucket/mlflow": "infra/local/e2e.sh",
    "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000": "infra/local/e2e.sh",
    "$M train --config configs/sinusoid.yaml tracking.register_as=sine-maml": "not run as "
    "written: tests/integration/test_tracking_model.py registers a model under a name through "
    "the same tracker; one more training run here would cost ~15 s of the suite",
    # Evaluation
    "$M evaluate --checkpoint runs/quickstart --shards data/quickstart-wordlang "
    "--out runs/quickstart-eval": QUICK,
    "$M evaluate --checkpoint s3://B/runs/NAME --shards s3://B/shards/wordlang --bank "
    "s3://B/bank/NAME --shots 16,64,256 --steps 0,1,2,5,10 --episodes 10 --json eval.json": (
        "infra/local/e2e.sh"
    ),
    # The memory bank
    "$M train --config configs/wordlang.yaml checkpoint.init_from=null "
    "checkpoint.run_name=wordlang-bank bank.enabled=true bank.snapshot_uri=s3://bucket/bank": BANK,
    "$M adapt --checkpoint runs/wordlang-bank --support words.txt --out adapted.safetensors": BANK,
    "$M adapt --checkpoint runs/wordlang-bank --support words.txt --out adapted.safetensors "
    "--bank-uri s3://bucket/bank --key my-task": BANK,
    "$M bank inspect [--uri DIR|s3://...] [--neighbours TASK -k 5] [--list N] [--json]": BANK,
    "$M bank inspect --uri DIR --plot map.png": BANK,
    "$M bank export DEST | import SRC | clear --yes": BANK,
    "$M evaluate --checkpoint runs/wordlang-bank --shards data/wordlang "
    "--bank s3://bucket/bank": BANK,
}


def test_every_readme_command_line_is_run_by_a_test_or_says_why_not() -> None:
    missing = [ln for ln in dict.fromkeys(command_lines()) if ln not in RUN_BY]
    assert not missing, (
        "README command lines no test runs (add a test that runs the line, then an entry in "
        "RUN_BY in tests/unit/test_readme_coverage.py; or an entry 'not run: <why>'):\n  "
        + "\n  ".join(missing)
    )


def test_every_entry_is_a_readme_line() -> None:
    stale = sorted(set(RUN_BY) - set(command_lines()))
    assert not stale, "RUN_BY entries whose line is no longer in README.md:\n  " + "\n  ".join(
        stale
    )


@pytest.mark.parametrize("where", sorted(set(RUN_BY.values())))
def test_each_runner_exists(where: str) -> None:
    if where.startswith("not run"):
        assert ": " in where, f"say why it is not run: {where!r}"
        for path, name in re.findall(r"(tests/\S+\.py)::(\w+)", where):  # named tests exist
            assert f"def {name}(" in (ROOT / path).read_text(), f"{path} has no test {name}"
        return
    path, _, name = where.partition("::")
    assert (ROOT / path).is_file(), f"{path} does not exist"
    if name:
        assert re.search(rf"^def {name}\(", (ROOT / path).read_text(), re.M), (
            f"{path} has no test {name}"
        )
