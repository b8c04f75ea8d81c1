#!/usr/bin/env bash
# Start an MLflow tracking server the way metaray deploys it:
#   - bound to 127.0.0.1 by default (set MLFLOW_HOST to a private IP on a multi-node cluster,
#     never to a public interface; put a reverse proxy with auth in front if people need it),
#   - one worker (the server then starts in ~5 s and uses ~0.5 GB instead of ~2.3 GB),
#   - a database backend store (SQLite file by default; postgresql://... in production),
#   - artifacts proxied by the server to S3 (or a local directory), so clients need no S3 keys.
# Credentials (database password, AWS keys) come from the environment, never from this file:
#   MLFLOW_BACKEND_STORE_URI      e.g. postgresql://mlflow@db.internal/mlflow (password via PGPASSWORD or ~/.pgpass)
#   MLFLOW_ARTIFACTS_DESTINATION  e.g. s3://metaray-data/mlflow   (AWS_* env / instance profile)
#   MLFLOW_S3_ENDPOINT_URL        for S3-compatible stores (MinIO, moto)
# Usage: infra/mlflow/serve.sh   (foreground; SIGTERM stops it and its worker)
set -euo pipefail

host="${MLFLOW_HOST:-127.0.0.1}"
port="${MLFLOW_PORT:-5000}"
state="${MLFLOW_STATE_DIR:-$HOME/mlflow}"
mkdir -p "$state"
backend="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$state/mlflow.db}"
artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-$state/artifacts}"

# The job runner is a second process tree that metaray does not use.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false

# Host-header allow list: loopback and private addresses are MLflow's default; add the
# Kubernetes service name / extra names through MLFLOW_ALLOWED_HOSTS when needed.
extra=()
if [ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]; then
  extra+=(--allowed-hosts "$MLFLOW_ALLOWED_HOSTS")
fi

exec mlflow server \
  --host "$host" --port "$port" --workers 1 \
  --backend-store-uri "$backend" \
  --serve-artifacts --artifacts-destination "$artifacts" \
  "${extra[@]}"
