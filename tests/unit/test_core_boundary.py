"""The functional core imports no ray, mlflow or boto3 (they are made unimportable)."""

import subprocess
import sys
import textwrap
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "pipeline"
# Every module of the functional core, found on disk so that a new one is covered too.
CORE = sorted(
    ".".join(f.relative_to(PKG.parent).with_suffix("").parts).removesuffix(".__init__")
    for room in ("meta", "models")
    for f in (PKG / room).rglob("*.py")
) + ["pipeline.data.episodes", "pipeline.bank.index", "pipeline.bank.ann", "pipeline.local_train"]


def test_core_imports_and_runs_without_ray_mlflow_boto3():
    code = textwrap.dedent(f"""
        import importlib, sys
        BLOCKED = ("ray", "mlflow", "boto3", "botocore")

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is blocked: the core must not import it")
                return None

        sys.meta_path.insert(0, Blocker())
        for mod in {CORE!r}:
            importlib.import_module(mod)
        from pipeline.config import InnerConfig, OuterConfig
        from pipeline.meta import outer
        from tests.unit.meta_cases import sine_batch, tiny_mlp
        m = tiny_mlp()
        ic, oc = InnerConfig(), OuterConfig()
        s = outer.init_state(m, ic, oc)
        s, met = outer.train_step(s, sine_batch(), model=m, inner_cfg=ic, outer_cfg=oc)
        assert not any(k.split(".")[0] in BLOCKED for k in sys.modules), "blocked module loaded"
        print("ok", met["loss_post"] > 0)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "ok True" in out.stdout
