"""Issue 14 s.2: steps/s of the same run embedded (local Ray started by metaray) vs on a
two-node Ray cluster on this one host (`ray start --head` + `ray start --address`, one CPU
each, their own temp dirs and ports, token auth on), the cluster run submitted with `ray job
submit` so its driver is the job's entrypoint. Rows interleaved, `--reps` of each:

  embedded         `bench/ray_overhead.py --mode run` in a plain process (connect starts Ray)
  cluster          the same, `ray job submit --working-dir .` to the two-node cluster
  cluster-poll2    the same job with RAY_TRAIN_HEALTH_CHECK_INTERVAL_S=2 (Ray's default: what a
                   cluster driver ran with before `connect` set 0.5 for cluster drivers too)

Neither node's environment holds RAY_TRAIN_HEALTH_CHECK_INTERVAL_S: the only way the value can
reach Train's controller is the driver (the fix). Each row also reports the value read from the
controller process's environment. Stops only what it started (process groups of its two `ray
start --block`), never `ray stop`.

    flock /tmp/metaray-heavy.lock .venv/bin/python bench/cluster_steps.py --reps 3 --steps 60
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str], env: dict, temp: Path, log: Path) -> subprocess.Popen:
    cmd = [str(BIN / "ray"), "start", "--block", "--num-cpus=1", f"--temp-dir={temp}"]
    cmd += ["--object-store-memory=200000000", f"--dashboard-agent-listen-port={_port()}"]
    cmd += [f"--metrics-export-port={_port()}", "--node-ip-address=127.0.0.1", *args]
    print("$", " ".join(cmd), flush=True)
    return subprocess.Popen(
        cmd, env=env, cwd=temp.parent, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _result(out: str) -> dict:
    for line in out.splitlines():
        if "RESULT {" in line:
            return json.loads(line.split("RESULT ", 1)[1])
    raise RuntimeError("no RESULT line:\n" + out[-4000:])


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--config", default="configs/smoke.yaml")
    ap.add_argument("--rows", default="embedded,cluster,cluster-poll2")
    ap.add_argument("overrides", nargs="*", help="extra dotted overrides for every row")
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="mr14-", dir="/tmp"))  # short: Ray's socket paths
    shards = base / "smoke-sinusoid"
    subprocess.run(
        [str(BIN / "metaray"), "shards", "build", "sinusoid", "--out", str(shards),
         "--train-tasks", "24", "--val-tasks", "8", "--test-tasks", "4", "--points", "40",
         "--rows-per-file", "320"],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    token = base / "auth_token"
    token.write_text(secrets.token_hex(32))
    clean = {k: v for k, v in os.environ.items() if k not in (POLL_ENV, "RAY_ADDRESS")}
    clean["PATH"] = f"{BIN}{os.pathsep}{clean.get('PATH', '')}"
    node_env = dict(clean, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    node_env["METARAY_SHARED_FS"] = "1"  # both nodes are this host: one filesystem
    gcs, dash = _port(), _port()
    head = node = None
    bench = ["bench/ray_overhead.py", "--mode", "run", "--config", args.config]
    bench += ["--steps", str(args.steps), f"data.uri={shards}", *args.overrides]
    rows: list[dict] = []
    try:
        (base / "head").mkdir()
        (base / "node").mkdir()
        head = _start(
            ["--head", f"--port={gcs}", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
             f"--dashboard-port={dash}", f"--ray-client-server-port={_port()}"],
            node_env, base / "head", base / "head.log",
        )  # fmt: skip
        url = f"http://127.0.0.1:{dash}"
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/version", timeout=2).read()
                break
            except urllib.error.HTTPError:  # 401 without the token: it is up
                break
            except OSError:
                if head.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError((base / "head.log").read_text()[-3000:]) from None
                time.sleep(1)
        node = _start([f"--address=127.0.0.1:{gcs}"], node_env, base / "node", base / "node.log")
        status = [str(BIN / "ray"), "status", f"--address=127.0.0.1:{gcs}"]

        def nodes() -> int:
            out = subprocess.run(status, env=node_env, capture_output=True, text=True).stdout
            return out.count("node_")

        while nodes() < 2:
            if node.poll() is not None or time.monotonic() > deadline + 120:
                raise RuntimeError((base / "node.log").read_text()[-3000:])
            time.sleep(1)
        print(subprocess.run(status, env=node_env, capture_output=True, text=True).stdout)
        names = args.rows.split(",")
        for rep in range(args.reps):
            order = names[rep % len(names) :] + names[: rep % len(names)]  # rotate per rep
            for name in order:
                up = _uptime()
                if name == "embedded":
                    cmd = [str(BIN / "python"), *bench, "--label", name]
                    env = clean
                else:
                    entry = ["python", *bench, "--label", name]
                    if name == "cluster-poll2":
                        entry += ["--poll", "2"]
                    cmd = [str(BIN / "ray"), "job", "submit", "--address", url,
                           "--working-dir", ".", "--", *entry]  # fmt: skip
                    env = dict(clean, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
                print(f"$ {' '.join(cmd)}    # {up}", flush=True)
                t = time.perf_counter()
                p = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
                row = _result(p.stdout + p.stderr)
                row.update(rep=rep, wall_s=round(time.perf_counter() - t, 1), uptime=up)
                print("ROW " + json.dumps(row), flush=True)
                rows.append(row)
    finally:
        _stop(node)
        _stop(head)
        shutil.rmtree(base, ignore_errors=True)
    print("\n| rep | row | nodes | poll driver / controller | steps/s | train_s | start-up s "
          "| loss | load (1/5/15 min) before |")  # fmt: skip
    print("| ---: | --- | ---: | --- | ---: | ---: | ---: | ---: | --- |")
    for r in rows:
        print(
            f"| {r['rep']} | {r['label']} | {r['nodes']} | {r['poll_driver']} / "
            f"{r['poll_controller']} | {r['steps_per_s']:.2f} | {r['train_s']:.1f} "
            f"| {r['startup_s']:.1f} | {r['loss']:.4f} | {', '.join(map(str, r['load_before']))} |"
        )
    print("\nmedian steps/s:")
    for name in args.rows.split(","):
        v = sorted(r["steps_per_s"] for r in rows if r["label"] == name)
        if v:
            print(f"  {name}: {v[len(v) // 2]:.2f}  ({' / '.join(f'{x:.2f}' for x in v)})")


if __name__ == "__main__":
    main()
