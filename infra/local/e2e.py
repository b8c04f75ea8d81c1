"""The end-to-end path on a local "cluster", against services that are already running:
shards to S3 -> `ray job submit` training (S3 in, MLflow tracking, bank snapshot to S3) ->
`ray job submit` evaluation -> checks. `infra/local/e2e.sh` starts the services (moto S3,
`mlflow server`, `ray start --head`) and calls this; tests/integration/test_e2e_local.py calls
`flow()` with the test fixtures' services.

    python infra/local/e2e.py --s3 http://127.0.0.1:9000 --bucket metaray-e2e \
        --mlflow http://127.0.0.1:5000 --ray http://127.0.0.1:8265 --workdir /tmp/e2e
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv's bin: ray, metaray
CONFIG = ROOT / "infra" / "local" / "e2e.yaml"
# Train languages of four scripts; held out: Greek/Hebrew (val); Persian (Arabic script, seen),
# Portuguese (Latin, seen), Korean and Tamil (scripts unseen in training) for test.
LANGUAGES = "en,de,fr,es,it,ru,ar,hi,el,he,fa,ko,pt,ta"


@dataclass
class Services:
    s3_endpoint: str
    bucket: str
    mlflow_uri: str
    ray_address: str
    ray_env: dict[str, str] = field(default_factory=dict)  # RAY_AUTH_MODE / token for clients
    aws_env: dict[str, str] = field(default_factory=dict)  # credentials for the S3 endpoint

    def uri(self, path: str) -> str:
        return f"s3://{self.bucket}/{path}"

    def job_env(self) -> dict[str, str]:
        """What the jobs need (and their actors and Ray Train workers inherit)."""
        return {
            **self.aws_env,
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_EC2_METADATA_DISABLED": "true",
            "MLFLOW_TRACKING_URI": self.mlflow_uri,
        }


@dataclass
class Job:
    submission_id: str
    status: str
    returncode: int
    logs: str
    seconds: float


def _client_env(svc: Services) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(svc.ray_env)
    env.update(svc.job_env())
    return env


def submit(svc: Services, name: str, entrypoint: list[str], timeout: float = 300) -> Job:
    """`ray job submit` (waits, streams logs), then `ray job status` for the final state."""
    sid = f"{name}-{int(time.time() * 1000)}"
    runtime_env = json.dumps({"env_vars": svc.job_env()})
    cmd = [
        str(BIN / "ray"),
        "job",
        "submit",
        "--address",
        svc.ray_address,
        "--submission-id",
        sid,
        "--runtime-env-json",
        runtime_env,
        "--",
        *entrypoint,
    ]
    t0 = time.monotonic()
    done = subprocess.run(
        cmd, env=_client_env(svc), capture_output=True, text=True, timeout=timeout
    )
    seconds = time.monotonic() - t0
    status = subprocess.run(
        [str(BIN / "ray"), "job", "status", "--address", svc.ray_address, sid],
        env=_client_env(svc),
        capture_output=True,
        text=True,
        timeout=60,
    )
    return Job(
        sid,
        job_state(status.stdout + status.stderr, sid),
        done.returncode,
        done.stdout + done.stderr,
        seconds,
    )


def job_state(text: str, sid: str) -> str:
    """The state `ray job status` reports: "Job 'x' succeeded" / "failed" / "was stopped",
    else "Status for job 'x': RUNNING"."""
    final = re.search(rf"Job '{re.escape(sid)}' (succeeded|failed|was stopped)", text)
    if final:
        return {"succeeded": "SUCCEEDED", "failed": "FAILED"}.get(final.group(1), "STOPPED")
    other = re.search(rf"Status for job '{re.escape(sid)}': (\w+)", text)
    return other.group(1).rsplit(".", 1)[-1] if other else "UNKNOWN"


def flow(svc: Services, workdir: Path, log=print) -> dict[str, Any]:
    """Build shards in S3, train as a Ray job, evaluate as a Ray job; return what happened."""
    workdir.mkdir(parents=True, exist_ok=True)
    shards, runs, bank = svc.uri("shards/wordlang"), svc.uri("runs"), svc.uri("bank/e2e")
    log(f"building shards into {shards}")
    build = subprocess.run(
        [
            str(BIN / "metaray"),
            "shards",
            "build",
            "wordlang",
            "--out",
            shards,
            "--languages",
            LANGUAGES,
            "--top-n",
            "80",
            "--seed",
            "0",
            "--s3-endpoint",
            svc.s3_endpoint,
        ],
        env=_client_env(svc),
        capture_output=True,
        text=True,
        timeout=300,
    )
    if build.returncode:
        raise RuntimeError(f"shards build failed:\n{build.stdout}{build.stderr}")
    log("ray job submit: training")
    train = submit(
        svc,
        "e2e-train",
        [
            "python",
            str(ROOT / "jobs" / "train.py"),
            "--config",
            str(CONFIG),
            f"data.uri={shards}",
            f"data.s3_endpoint={svc.s3_endpoint}",
            f"checkpoint.storage={runs}",
            f"bank.snapshot_uri={bank}",
            f"bank.s3_endpoint={svc.s3_endpoint}",
            f"tracking.uri={svc.mlflow_uri}",
        ],
    )
    log(f"training job {train.submission_id}: {train.status} in {train.seconds:.0f} s")
    result: dict[str, Any] = {"train": train, "eval": None, "report": None}
    if train.status != "SUCCEEDED":
        return result
    out = workdir / "eval"
    log("ray job submit: evaluation")
    ev = submit(
        svc,
        "e2e-eval",
        [
            str(BIN / "metaray"),
            "evaluate",
            "--checkpoint",
            f"{runs}/e2e",
            "--shards",
            shards,
            "--bank",
            bank,
            "--s3-endpoint",
            svc.s3_endpoint,
            "--out",
            str(out),
            "--json",
            str(out / "eval.json"),
            "--episodes",
            "3",
            "--shots",
            "8,32",
            "--baseline-steps",
            "10",
            "--lr-grid",
            "0.3,1.0",
            "--tracking",
        ],
    )
    log(f"evaluation job {ev.submission_id}: {ev.status} in {ev.seconds:.0f} s")
    result["eval"] = ev
    if ev.status == "SUCCEEDED" and (out / "eval.json").is_file():
        result["report"] = json.loads((out / "eval.json").read_text())
    return result


def mlflow_runs(uri: str, experiment: str = "metaray-e2e") -> dict[str, Any]:
    """name -> (run, artifact paths) for the experiment's runs."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return {}
    out = {}
    for run in client.search_runs([exp.experiment_id]):

        def walk(path: str | None = None, run_id: str = run.info.run_id) -> list[str]:
            files = []
            for f in client.list_artifacts(run_id, path):
                files += walk(f.path) if f.is_dir else [f.path]
            return files

        out[run.info.run_name] = {"run": run, "artifacts": walk()}
    return out


def check(result: dict[str, Any], mlflow_uri: str) -> list[str]:
    """What a user would check by hand; returns the problems (empty: all good)."""
    problems = []
    for name in ("train", "eval"):
        job = result[name]
        if job is None or job.status != "SUCCEEDED":
            tail = job.logs[-3000:] if job else "(not run)"
            problems.append(f"{name} job: {job.status if job else 'not run'}\n{tail}")
    rep = result["report"]
    if rep is None:
        return problems + ["no evaluation report"]
    for k, res in rep["results"].items():
        for method, per in res.items():
            for step, s in per.items():
                o = s["overall"]
                if not (o["lo"] is None or o["lo"] <= o["mean"] <= o["hi"]):
                    problems.append(f"K={k} {method} step {step}: CI does not contain the mean")
    runs = mlflow_runs(mlflow_uri)
    if "e2e" not in runs:
        problems.append(f"no MLflow training run 'e2e' (runs: {sorted(runs)})")
    if not any("evaluation/eval.json" in r["artifacts"] for r in runs.values()):
        problems.append("no MLflow run with the evaluation/eval.json artifact")
    return problems


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--s3", required=True, help="S3 endpoint URL")
    ap.add_argument("--bucket", required=True)
    ap.add_argument("--mlflow", required=True, help="MLflow tracking URI")
    ap.add_argument("--ray", required=True, help="Ray dashboard / job API URL")
    ap.add_argument("--workdir", default="/tmp/metaray-e2e")
    a = ap.parse_args()
    names = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")
    ray_env = {k: os.environ[k] for k in names if k in os.environ}
    aws = {
        k: os.environ[k]
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")
        if k in os.environ
    }
    svc = Services(a.s3, a.bucket, a.mlflow, a.ray, ray_env, aws)
    result = flow(svc, Path(a.workdir))
    if result["eval"] is not None:
        print(result["eval"].logs[-6000:])
    problems = check(result, a.mlflow)
    for p in problems:
        print(f"PROBLEM: {p}", file=sys.stderr)
    print("end-to-end: OK" if not problems else f"end-to-end: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
