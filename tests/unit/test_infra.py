"""Checks on the deployment files under infra/ that need no cloud, cluster or Docker daemon.

Each manifest is parsed; what a user would otherwise discover at `ray up` / `kubectl apply`
time is asserted here: the launcher YAML against Ray's own schema, entry points that name
job scripts and configs that exist (and overrides that the config accepts), one image for
all nodes, names Kubernetes and KubeRay accept, no secret literals, nothing public.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
K8S = INFRA / "k8s"
LAUNCHER = INFRA / "launcher"
THIRD_PARTY = {"metaray-mlflow-db"}  # workloads that run another project's image
APP = "/app"  # WORKDIR of the image: /app/<path> in a manifest is <repo>/<path>

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
SECRETISH = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY|API_KEY|CREDENTIAL)", re.I)


def _yaml_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".yaml", ".yml"))


def _k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    docs = []
    for path in _yaml_files(K8S):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                docs.append((path, doc))
    return docs


def _walk(node: Any, path: str = ""):
    """Yield (dotted path, key, value) for every mapping entry in a parsed document."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{path}.{key}" if path else str(key)
            yield here, key, value
            yield from _walk(value, here)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for p, k, v in _walk(doc) if k == "containers" for c in v]


def _ray_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    if doc["kind"] == "RayCluster":
        return [doc["spec"]]
    if doc["kind"] == "RayJob" and "rayClusterSpec" in doc["spec"]:
        return [doc["spec"]["rayClusterSpec"]]
    return []


def _pin(name: str) -> str:
    for line in (ROOT / "constraints-cpu.txt").read_text().splitlines():
        if line.lower().startswith(f"{name}=="):
            return line.split("==", 1)[1].strip()
    raise AssertionError(f"constraints-cpu.txt pins no {name}")


def _project_version() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r'^version\s*=\s*"([^"]+)"', text, re.M).group(1)


def _launcher() -> dict[str, Any]:
    return yaml.safe_load((LAUNCHER / "aws-gpu.yaml").read_text())


def test_every_infra_yaml_parses_and_k8s_docs_have_kind_and_name():
    files = _yaml_files(INFRA)
    assert files, "no YAML under infra/"
    for path in files:
        list(yaml.safe_load_all(path.read_text(encoding="utf-8")))  # raises on bad YAML
    kinds = {doc["kind"] for _, doc in _k8s_docs()}
    assert {"RayCluster", "RayJob", "Deployment", "Service"} <= kinds
    for path, doc in _k8s_docs():
        assert doc.get("apiVersion") and doc.get("metadata", {}).get("name"), path


def test_launcher_yaml_validates_against_rays_own_schema():
    import jsonschema
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    cfg = _launcher()
    jsonschema.validate(cfg, schema)
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    head = types[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is the CPU node"
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) >= 1]
    assert gpu_types and all(t["max_workers"] <= cfg["max_workers"] for t in gpu_types)


def test_nothing_is_exposed_publicly():
    for path, doc in _k8s_docs():
        assert doc["kind"] not in ("Ingress", "Route", "Gateway", "HTTPRoute"), path
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP", path
        for spec in _ray_specs(doc):
            assert spec["headGroupSpec"].get("serviceType", "ClusterIP") == "ClusterIP", path
        for dotted, key, value in _walk(doc):
            assert not (key == "hostNetwork" and value), f"{path}: {dotted}"
            assert key != "hostPort", f"{path}: {dotted}"
    # Launcher: the dashboard (job API) binds loopback on the head; reach it via `ray dashboard`.
    head_cmds = " ".join(_launcher()["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmds
    assert "0.0.0.0" not in head_cmds
    # MLflow start script: loopback and one worker unless the deployer says otherwise.
    serve = (INFRA / "mlflow" / "serve.sh").read_text()
    assert 'host="${MLFLOW_HOST:-127.0.0.1}"' in serve
    assert "--workers 1" in serve


def test_no_secret_literals_in_any_infra_file():
    aws_key_id = re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b")
    for path in sorted(p for p in INFRA.rglob("*") if p.is_file()):
        text = path.read_text(encoding="utf-8")
        assert not aws_key_id.search(text), f"{path}: looks like an AWS access key id"
        assert not re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", text), path
        for password in re.findall(r"://[^/\s:@]+:([^@\s/]+)@", text):
            # Placeholders (<password>, PASSWORD, $VAR) are documentation, not secrets.
            assert re.fullmatch(r"<\w+>|[A-Z_]+|\$\{?\w+\}?", password), (
                f"{path}: a password inside a URL"
            )
    for path, doc in _k8s_docs():
        assert doc["kind"] != "Secret", f"{path}: create Secrets from the environment instead"
        for container in _containers(doc):
            for env in container.get("env", []):
                if SECRETISH.search(env["name"]):
                    assert "value" not in env, f"{path}: {env['name']} must use valueFrom"


def test_names_are_valid_for_kubernetes_and_kuberay():
    for path, doc in _k8s_docs():
        name = doc["metadata"]["name"]
        assert DNS1123_LABEL.match(name) and len(name) <= 63, f"{path}: {name!r}"
        if doc["kind"] in ("RayCluster", "RayJob", "Service"):
            # KubeRay >= 1.4 rejects CR names that are not DNS-1035 labels; RayJob names
            # are capped at 47 characters because KubeRay appends suffixes to them.
            assert DNS1035_LABEL.match(name), f"{path}: {name!r} must start with a letter"
        if doc["kind"] == "RayJob":
            assert len(name) <= 47, f"{path}: RayJob name {name!r} longer than 47"
        for container in _containers(doc):
            assert DNS1123_LABEL.match(container["name"]), f"{path}: {container['name']!r}"
        for spec in _ray_specs(doc):
            for group in spec.get("workerGroupSpecs", []):
                assert DNS1123_LABEL.match(group["groupName"]), path
                assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], path
    for node_type in _launcher()["available_node_types"]:
        assert DNS1123_LABEL.match(node_type), node_type


def test_one_image_for_all_nodes_matching_the_pins():
    """Same repository everywhere, tagged <version>-cpu on CPU pods and <version>-cuda on GPU
    pods; rayVersion equals the Ray pinned in constraints-cpu.txt (what the image installs)."""
    version = _project_version()
    ray_pin = _pin("ray")
    images: list[tuple[str, bool, str]] = []  # (image, wants_gpu, where)
    for path, doc in _k8s_docs():
        for spec in _ray_specs(doc):
            assert str(spec["rayVersion"]) == ray_pin, f"{path}: rayVersion != ray=={ray_pin}"
        if doc["metadata"]["name"] in THIRD_PARTY:  # e.g. the MLflow backend's Postgres
            continue
        for container in _containers(doc):
            limits = container.get("resources", {}).get("limits", {})
            images.append((container["image"], "nvidia.com/gpu" in limits, str(path)))
    docker = _launcher()["docker"]
    images += [
        (docker["head_image"], False, "launcher head"),
        (docker["worker_image"], True, "launcher worker"),
    ]
    repos = {img.rsplit(":", 1)[0] for img, _, _ in images}
    assert len(repos) == 1, f"more than one image repository: {repos}"
    for image, wants_gpu, where in images:
        expected = f"{version}-cuda" if wants_gpu else f"{version}-cpu"
        assert image.rsplit(":", 1)[1] == expected, f"{where}: {image} should be tagged {expected}"


def _entrypoints() -> list[tuple[str, str]]:
    """`python /app/jobs/...` entry points (the metaray CLI ones are checked separately)."""
    out = [
        (str(p), d["spec"]["entrypoint"])
        for p, d in _k8s_docs()
        if d["kind"] == "RayJob" and d["spec"]["entrypoint"].startswith("python ")
    ]
    header = (LAUNCHER / "aws-gpu.yaml").read_text().split("\ncluster_name", 1)[0]
    cmd = re.search(r"ray job submit[^\n]*--\s*\\\n(.*?)(?:\n#\s+ray down)", header, re.S)
    assert cmd, "the launcher's header shows no `ray job submit ... -- python ...` example"
    out.append(("launcher header", " ".join(ln.strip("# \\") for ln in cmd.group(1).splitlines())))
    return out


def test_entrypoints_run_existing_jobs_with_existing_configs_and_valid_overrides():
    from pipeline import config

    jobs = {Path(shlex.split(e)[1]).name for _, e in _entrypoints()}
    assert {"train.py", "tune.py"} <= jobs, "a RayJob for each of jobs/train.py and jobs/tune.py"
    missing: list[str] = []
    for where, entry in _entrypoints():
        argv = shlex.split(entry)
        assert argv[0] == "python" and argv[1].startswith(f"{APP}/jobs/"), f"{where}: {entry}"
        script = ROOT / argv[1].removeprefix(f"{APP}/")
        if not script.exists():
            missing.append(str(script.relative_to(ROOT)))
            continue
        assert argv[2] == "--config" and argv[3].startswith(f"{APP}/configs/"), where
        cfg_path = ROOT / argv[3].removeprefix(f"{APP}/")
        if not cfg_path.exists():
            missing.append(str(cfg_path.relative_to(ROOT)))
            continue
        overrides = argv[4:]
        if script.name == "tune.py":  # a sweep file: run-config and tune.* keys
            from pipeline.runtime.tune_config import load_sweep

            base, sweep = load_sweep(cfg_path, overrides)  # the job would fail the same way
            assert base.data.uri.startswith("s3://"), f"{where}: data.uri not on S3"
            assert sweep.storage.startswith("s3://"), f"{where}: trials' checkpoints on pod disk"
            family = "sinusoid" if base.data.episode == "regression" else "wordlang"
            assert family in base.data.uri, f"{where}: a {family} sweep on {base.data.uri}"
            continue
        known = set(config.valid_keys())
        for item in overrides:
            assert item.split("=", 1)[0] in known, f"{where}: unknown override {item}"
        if script.name == "train.py":
            cfg = config.load(cfg_path, overrides)  # the job would fail the same way
            assert cfg.data.uri.startswith("s3://") and cfg.checkpoint.storage.startswith("s3://")
    if missing:  # the rest was checked; these land with issues 4/6
        pytest.skip(f"not in the tree yet: {sorted(set(missing))}")


def test_dockerfile_copies_what_exists_and_installs_from_the_constraints():
    text = (INFRA / "docker" / "Dockerfile").read_text()
    assert re.search(r"^WORKDIR\s+/app$", text, re.M)
    for line in re.findall(r"^COPY\s+(.+)$", text, re.M):
        *sources, _dest = line.split()
        for src in sources:
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which is not in the repo"
    assert "constraints-cpu.txt" in text and "-c /tmp/constraints.txt" in text
    assert re.search(r"ARG VARIANT=cpu", text) and "cuda" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv"} <= set(ignored)


@pytest.mark.parametrize("script", sorted(str(p.relative_to(ROOT)) for p in INFRA.rglob("*.sh")))
def test_shell_scripts_are_valid_bash(script: str):
    proc = subprocess.run(["bash", "-n", str(ROOT / script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_cli_entrypoints_parse_with_the_real_metaray_parser():
    """A RayJob running `metaray <command> ...` (the console script the image installs) passes
    arguments that the installed CLI accepts; S3 URIs for everything it reads."""
    from pipeline.cli import build_parser

    cli = [
        (p, d["spec"]["entrypoint"])
        for p, d in _k8s_docs()
        if d["kind"] == "RayJob" and d["spec"]["entrypoint"].startswith("metaray ")
    ]
    assert any(" evaluate " in e for _, e in cli), "a RayJob that runs `metaray evaluate`"
    for where, entry in cli:
        args = build_parser().parse_args(shlex.split(entry)[1:])  # exits (fails) on bad args
        if args.command == "evaluate":
            for uri in (args.checkpoint, args.shards, args.bank):
                assert uri.startswith("s3://"), f"{where}: {uri} is not reachable from a pod"
