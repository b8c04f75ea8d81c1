#!/usr/bin/env bash
# Create .venv and install metaray with the pinned CPU development set.
# Idempotent: re-runs only when pyproject.toml or constraints-cpu.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "metaray needs Python >= 3.10 (found: $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi

stamp=.venv/.metaray-installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt constraints-cpu.txt ]; then
  exit 0
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
# constraints-cpu.txt pins torch 2.13.0 (CPU wheel) and the resolved set it was tested with;
# GPU users install with their own torch build and without this file.
.venv/bin/python -m pip install --quiet -c constraints-cpu.txt -e ".[test,tune]"
touch "$stamp"
echo "metaray installed in .venv ($(.venv/bin/python -c 'import torch, ray; print(f"torch {torch.__version__}, ray {ray.__version__}")'))"
