#!/usr/bin/env bash
# The whole deployment path on one machine, everything on 127.0.0.1, everything stopped at exit:
#   1. an S3-compatible server (moto_server) and a bucket,
#   2. an MLflow server (infra/mlflow/serve.sh: 1 worker, SQLite backend, artifacts in that S3),
#   3. a Ray head (`ray start --head`, token auth on, dashboard on loopback),
# then infra/local/e2e.py: shards -> s3://, `ray job submit` training (S3 in, MLflow tracking,
# bank snapshot to S3), `ray job submit` evaluation, and the checks (job states, MLflow run and
# artifacts, the results table). Usage:  infra/local/e2e.sh [WORKDIR]   (needs .venv)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
VENV=$ROOT/.venv/bin
WORK=$(mkdir -p "${1:-/tmp/metaray-e2e}" && cd "${1:-/tmp/metaray-e2e}" && pwd)
RAY_TMP=$(mktemp -d /tmp/mre-XXXXXX)  # short: Ray's socket paths have a length limit
free_port() { "$VENV/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

pids=()
cleanup() {
  local rc=$?
  set +e
  if [ "$rc" != 0 ] && [ -d "$RAY_TMP/session_latest/logs" ]; then
    cp -r "$RAY_TMP/session_latest/logs" "$WORK/ray-logs"  # keep them for the post-mortem
  fi
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null; done
  rm -rf "$RAY_TMP"
}
trap cleanup EXIT INT TERM

http_probe='
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(sys.argv[1], timeout=2)
except urllib.error.HTTPError:
    pass'
wait_http() {  # URL NAME LOG
  for _ in $(seq 1 240); do
    # Any HTTP answer means up (Ray's API answers 401 to a client without the token).
    if "$VENV/python" -c "$http_probe" "$1" 2>/dev/null; then
      return 0
    fi
    sleep 0.5
  done
  echo "$2 did not come up; see $3" >&2
  exit 1
}

# Fake credentials for the local S3 server only; a real deployment takes them from its environment.
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1
export AWS_EC2_METADATA_DISABLED=true
S3_PORT=$(free_port); S3=http://127.0.0.1:$S3_PORT; BUCKET=metaray-e2e
"$VENV/moto_server" -H 127.0.0.1 -p "$S3_PORT" > "$WORK/moto.log" 2>&1 &
pids+=($!)
wait_http "$S3/moto-api/" "moto_server" "$WORK/moto.log"
AWS_ENDPOINT_URL=$S3 METARAY_BUCKET=$BUCKET PYTHON=$VENV/python infra/s3/setup.sh

MLFLOW_PORT=$(free_port); MLFLOW=http://127.0.0.1:$MLFLOW_PORT
PATH="$VENV:$PATH" MLFLOW_PORT=$MLFLOW_PORT MLFLOW_STATE_DIR="$WORK/mlflow" \
  MLFLOW_S3_ENDPOINT_URL=$S3 MLFLOW_ARTIFACTS_DESTINATION=s3://$BUCKET/mlflow \
  infra/mlflow/serve.sh > "$WORK/mlflow.log" 2>&1 &
pids+=($!)
wait_http "$MLFLOW/health" "mlflow server" "$WORK/mlflow.log"

# Token auth on (not the default of `ray start` in 2.60 without a token file): the head and
# every client share this token.
export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=$RAY_TMP/auth_token
"$VENV/python" -c 'import secrets; print(secrets.token_hex(32), end="")' > "$RAY_AUTH_TOKEN_PATH"
DASH_PORT=$(free_port); RAY=http://127.0.0.1:$DASH_PORT
# The job's `python` is the first on the head's PATH: the venv's. Free ports everywhere: other
# Ray clusters on the same machine hold the defaults (10001, 52365).
# Loopback only: Ray rewrites a loopback --node-ip-address to the host's address unless
# "clusters" are off (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, a single-node head); then GCS,
# raylet, object manager, workers and agent all listen on 127.0.0.1.
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 PATH="$VENV:$PATH" "$VENV/ray" start --head --block \
  --node-ip-address=127.0.0.1 --port=0 --num-cpus=2 \
  --temp-dir="$RAY_TMP" --include-dashboard=true --dashboard-host=127.0.0.1 \
  --dashboard-port="$DASH_PORT" --ray-client-server-port="$(free_port)" \
  --dashboard-agent-listen-port="$(free_port)" --object-store-memory=300000000 \
  > "$WORK/ray-head.log" 2>&1 &
pids+=($!)
wait_http "$RAY/api/version" "ray head" "$WORK/ray-head.log"

echo "services: S3 $S3, MLflow $MLFLOW, Ray $RAY (logs in $WORK)"
"$VENV/python" infra/local/e2e.py --s3 "$S3" --bucket "$BUCKET" --mlflow "$MLFLOW" \
  --ray "$RAY" --workdir "$WORK"
