#!/usr/bin/env bash
# The test suite: unit tests (pure core, no Ray) and integration tests (a local Ray cluster,
# a real `mlflow server`, an S3-compatible moto server on loopback; each started by fixtures).
# Extra arguments go to pytest, e.g. `scripts/test.sh -m "not integration"`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export AWS_EC2_METADATA_DISABLED=true
# Lint and format are part of the suite: a finding fails CI like a failing test.
.venv/bin/ruff check pipeline jobs tests bench infra
.venv/bin/ruff format --check --quiet pipeline jobs tests bench infra
# pytest exits 5 when it collected no test: that is a failure here too.
exec .venv/bin/python -m pytest "$@"
