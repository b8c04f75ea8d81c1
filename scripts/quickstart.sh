#!/usr/bin/env bash
# The README's first command: install, build the quickstart shards, and run the main job
# on embedded defaults (local Ray, local shards under data/, local MLflow store): the
# recommended recipe (bench/fewshot.py decides it; bench/RESULTS.md has the numbers), then
# a few-shot evaluation on 10 held-out languages that ends with a plain verdict.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export AWS_EC2_METADATA_DISABLED=true
M=.venv/bin/metaray

# 10 held-out test languages (6 whose script occurs in training, 4 whose script does not) and
# 4 validation languages (checkpoint selection, fine-tuning lr), never trained on.
$M shards build wordlang --out data/quickstart-wordlang --top-n 1000 --seed 0 \
    --val-languages he,it,nl,uk --test-languages cs,el,fa,hi,ko,pt,ru,sv,ta,tr
$M shards inspect data/quickstart-wordlang
# Stage 1: multitask pretraining (25% of the budget; runs/quickstart-pretrain).
# Stage 2: from its parameters (checkpoint.init_from), keep training them on the multitask loss
# and meta-learn one inner learning rate per parameter alongside.
# Each run's model is its best on validation. Running this again resumes the runs (already
# finished: they report and stop); start afresh with checkpoint.run_name=other.
$M train --config configs/quickstart-pretrain.yaml
$M train --config configs/quickstart.yaml "$@"
# Few-shot evaluation on the held-out languages: random init, multitask + fine-tuning (same
# budget in examples seen, best on validation, lr tuned on validation languages) and the
# meta-init after 0-10 inner steps; 95% CIs over languages, paired differences, seen/unseen
# scripts, and the verdict. Table + JSON + plots in runs/quickstart-eval.
$M evaluate --checkpoint runs/quickstart --shards data/quickstart-wordlang \
    --out runs/quickstart-eval --shots 8,32 --k-query 16 --episodes 5
