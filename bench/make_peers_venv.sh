#!/usr/bin/env bash
# A separate virtualenv for bench/vs_peers.py with the peers (higher, torchopt) in it, so they
# never enter the project's venv. It reuses the project venv's torch/numpy through a .pth file
# (same torch 2.13.0 build for every contender, no second 2 GB download) and pip-installs only
# the peers and their small pure deps into its own site-packages.
#   bash bench/make_peers_venv.sh            # -> bench/.peers-venv (git-ignored)
#   bench/.peers-venv/bin/python bench/vs_peers.py
set -euo pipefail
cd "$(dirname "$0")/.."
BASE="${METARAY_VENV:-$PWD/.venv}"
DEST="${PEERS_VENV:-$PWD/bench/.peers-venv}"
"$BASE/bin/python" -m venv "$DEST"
base_site="$("$BASE/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
dest_site="$("$DEST/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$base_site" > "$dest_site/metaray-base.pth"   # torch, numpy from the project venv
# pinned: higher 0.2.1 (last release); torchopt 0.7.3 (its C++ op does not load with torch
# 2.13 and it falls back to Python: STACK-NOTES); optree (its pytrees) and graphviz (its import-time visualiser) are torchopt deps
"$DEST/bin/pip" install --quiet --no-deps higher==0.2.1 torchopt==0.7.3 "optree>=0.9,<1" "graphviz>=0.20,<1"
"$DEST/bin/python" -c "import higher, torchopt, torch; print('peers venv ok:', torch.__version__, 'higher', higher.__version__ if hasattr(higher, '__version__') else '0.2.1', 'torchopt', torchopt.__version__)"
