"""bench/gpu_check.py's CPU form: the GPU check must not rot before a GPU machine runs it.

It runs with pydantic, Ray, MLflow and boto3 made unimportable: the lent GPU machine has none
of them, so the check may only touch the functional core.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_cpu_form_without_pydantic_ray_mlflow():
    code = textwrap.dedent("""
        import runpy, sys
        BLOCKED = ("pydantic", "ray", "mlflow", "boto3", "botocore", "yaml")

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{name} is blocked: the GPU machine does not have it")
                return None

        sys.meta_path.insert(0, Blocker())
        sys.argv = ["gpu_check.py", "--device", "cpu", "--quick"]
        runpy.run_path("bench/gpu_check.py", run_name="__main__")
    """)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    grads = [r for r in rows if r["check"] == "grads"]
    # GRU (MAML + Meta-SGD), LSTM, MLP second-order meta-gradients match float64
    assert {(r["model"], r["algorithm"]) for r in grads} == {
        ("gru", "maml"),
        ("gru", "metasgd"),
        ("lstm", "maml"),
        ("mlp", "maml"),
    }
    assert all(r["ok"] and r["rel_err"] < 1e-4 for r in grads), grads
    db = {r["impl"]: r for r in rows if r["check"] == "double_backward"}
    assert db["metaray cells"]["works"] is True
    speed = [r for r in rows if r["check"] == "speed"]
    cells = {(r["workload"], r["impl"]) for r in speed if r.get("tasks_per_s", 0) > 0}
    assert cells == {
        (w, i) for w in ("sine", "chargru") for i in ("metaray", "torch.func vmap", "per-task loop")
    }, speed
    assert all(r["peak_mem_mb"] > 0 for r in speed)
    assert rows[-1]["check"] == "done"


def test_gpu_check_subset_times_only_the_cells_asked_for():
    argv = ["--device", "cpu", "--quick", "--workloads", "chargru", "--batches", "2,3"]
    out = subprocess.run(
        [sys.executable, "bench/gpu_check.py", *argv, "--impls", "metaray,torch.func vmap"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    cells = {(r["workload"], r["meta_batch"], r["impl"]) for r in rows if r["check"] == "speed"}
    assert cells == {("chargru", b, i) for b in (2, 3) for i in ("metaray", "torch.func vmap")}
