#!/usr/bin/env bash
# The GPU check (issue 14, section 5): metaray's functional core on one CUDA device.
#   bash bench/gpu_check.sh [--device cuda] [--budget-s 420] > gpu_check.jsonl
# Needs only PyTorch (+ numpy) and this checkout: no Ray, MLflow or pydantic, nothing installed.
# Under 8 minutes on one GPU: speed cells stop starting after --budget-s (default 420 s).
# Writes JSON lines to stdout and, when $OUT is set (the device runner), to $OUT/gpu_check.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" >&2
if [[ -n "${OUT:-}" ]]; then
  timeout 470 "$PY" bench/gpu_check.py "$@" | tee "$OUT/gpu_check.jsonl"
else
  timeout 470 "$PY" bench/gpu_check.py "$@"
fi
