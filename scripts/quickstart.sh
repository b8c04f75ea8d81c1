#!/usr/bin/env bash
# The README's first command: install, build the quickstart shards, and run the main job
# on embedded defaults (local Ray, local shards under data/, local MLflow store).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export AWS_EC2_METADATA_DISABLED=true
M=.venv/bin/metaray

$M shards build wordlang --out data/quickstart-wordlang --top-n 300 --seed 0
$M shards inspect data/quickstart-wordlang
# Meta-train the quickstart on an embedded local Ray (2 workers; about 2-3 minutes on 2 CPUs).
# Checkpoints go to runs/quickstart; running this again resumes that run (already finished:
# it reports and stops). Start afresh with: $M train --config configs/quickstart.yaml checkpoint.run_name=other
$M train --config configs/quickstart.yaml "$@"
# Few-shot evaluation on the held-out languages (fa, ko, pt, ta): random init, a multitask
# baseline (same tasks, no inner loop, tuned fine-tuning lr) and the meta-init after 0-10 inner
# steps, 95% CIs, paired differences, seen/unseen scripts. Table + JSON + plots in runs/quickstart-eval.
$M evaluate --checkpoint runs/quickstart --shards data/quickstart-wordlang --out runs/quickstart-eval
