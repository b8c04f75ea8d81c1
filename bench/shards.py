"""Rows per second for building and reading shard sets, locally and through S3.

    .venv/bin/python bench/shards.py            # full sizes (about a minute on 2 cores)
    .venv/bin/python bench/shards.py --quick    # small sizes, a smoke run

Workloads: `sinusoid` (--sin-tasks tasks x 50 points) and `wordlang` (all 42 wordfreq
languages x --top-n words). For each, on a local directory and on an S3 bucket served by a
`moto_server` process this script starts on 127.0.0.1 (and stops):
  build       source rows (generated / taken from wordfreq's lists, which are read once
              beforehand and reported apart) + write (Parquet, sha256, manifest)
  read cold   open_shard_set + read_task of every task in a fresh process state: fetches each
              file once, checks size + sha256 + schema, decodes to numpy
  read warm   read_task of every task again (per-process cache: a slice per call)
The last line printed is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.data.build import write_shard_set
from pipeline.data.shards import clear_cache, open_shard_set
from pipeline.data.sources import sinusoid, wordlang


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1).close()
            return proc, endpoint
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.1)


def measure(name: str, prepare, uri: str) -> dict:
    p = prepare()
    t0 = time.perf_counter()
    tasks = list(p.tasks)
    t_source = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = write_shard_set(uri, p.family, iter(tasks), build=p.build, force=True)
    t_write = time.perf_counter() - t0
    t_build = t_source + t_write
    rows = sum(t.rows for t in res.manifest.tasks.values())
    size = sum(f.bytes for f in res.manifest.files.values())

    clear_cache()
    t0 = time.perf_counter()
    ss = open_shard_set(uri)
    keys = [k for s in ("train", "val", "test") for k in ss.tasks(s)]
    n = sum(len(next(iter(ss.read_task(k).values()))) for k in keys)
    t_cold = time.perf_counter() - t0
    assert n == rows
    t0 = time.perf_counter()
    reps = max(1, 200_000 // len(keys))
    for _ in range(reps):
        for k in keys:
            ss.read_task(k)
    t_warm = (time.perf_counter() - t0) / reps
    return {
        "workload": name,
        "where": "s3" if uri.startswith("s3://") else "local",
        "tasks": len(keys),
        "rows": rows,
        "files": len(res.manifest.files),
        "bytes": size,
        "source_s": round(t_source, 3),
        "write_s": round(t_write, 3),
        "build_s": round(t_build, 3),
        "build_rows_per_s": round(rows / t_build),
        "write_rows_per_s": round(rows / t_write),
        "read_cold_s": round(t_cold, 3),
        "read_cold_rows_per_s": round(rows / t_cold),
        "read_warm_tasks_per_s": round(len(keys) / t_warm),
        "read_warm_rows_per_s": round(rows / t_warm),
    }


def _line(r: dict) -> str:
    return (
        f"{r['workload']:<9} {r['where']:<6} {r['tasks']:>6} tasks {r['rows']:>9} rows "
        f"{r['bytes'] / 2**20:6.1f} MiB | build {r['build_rows_per_s']:>9,} rows/s "
        f"(write {r['write_rows_per_s']:>9,}) | read cold {r['read_cold_rows_per_s']:>10,} "
        f"rows/s | warm {r['read_warm_tasks_per_s']:>8,} tasks/s"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    ap.add_argument("--sin-tasks", type=int, default=20_000, help="sinusoid train tasks")
    ap.add_argument("--top-n", type=int, default=5000, help="wordlang words per language")
    args = ap.parse_args()
    if args.quick:
        args.sin_tasks, args.top_n = 1000, 300

    workloads = {
        "sinusoid": lambda: sinusoid.prepare(
            train_tasks=args.sin_tasks, val_tasks=200, test_tasks=200, points=50
        ),
        "wordlang": lambda: wordlang.prepare(top_n=args.top_n),
    }
    proc, endpoint = start_moto()
    os.environ.update(
        {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }
    )
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
    t0 = time.perf_counter()
    for code in wordlang.available():  # wordfreq reads and caches each list once per process
        wordlang.top_words(code, args.top_n)
    load_s = time.perf_counter() - t0
    print(f"wordfreq: reading the 42 lists once took {load_s:.1f} s (not in the figures below)")
    results = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, prep in workloads.items():
                for uri in (f"{tmp}/{name}", f"s3://bench/{name}"):
                    results.append(measure(name, prep, uri))
                    print(_line(results[-1]), flush=True)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    print(
        json.dumps(
            {
                "bench": "shards",
                "quick": args.quick,
                "wordfreq_load_s": round(load_s, 2),
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
