"""No production function in `pipeline/` or `jobs/` is longer than ~60 lines (the project's
standard: a long function is several steps that want names). Built from the source with `ast`."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 60
# Kept long on purpose, each with the reason and who decides.
EXEMPT = {
    # The hand-written GRU BPTT: issue 10 item 5 / issue 14 (the "perf" room) decide whether
    # it earns its place (a measured switch) or goes; splitting it first would be wasted.
    "pipeline/models/gru_grad.py:gru_loss_and_grad",
}


def long_functions(max_lines: int = MAX_LINES) -> list[tuple[int, str]]:
    """(lines, "path:name (line N)") of every function over `max_lines`, longest first."""
    found = []
    for room in ("pipeline", "jobs"):
        for path in sorted((ROOT / room).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for node in ast.walk(ast.parse(path.read_text(), rel)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    n = node.end_lineno - node.lineno + 1
                    if n > max_lines and f"{rel}:{node.name}" not in EXEMPT:
                        found.append((n, f"{rel}:{node.name} (line {node.lineno})"))
    return sorted(found, reverse=True)


def test_no_function_is_longer_than_60_lines():
    offenders = long_functions()
    assert not offenders, "split these into named steps:\n" + "\n".join(
        f"  {n} lines  {where}" for n, where in offenders
    )


def test_the_exemptions_still_exist():
    # An exemption outlives its function only by mistake: drop it with the function.
    for entry in EXEMPT:
        path, name = entry.split(":")
        tree = ast.parse((ROOT / path).read_text()) if (ROOT / path).exists() else ast.Module([])
        names = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
        assert name in names, f"{entry} is exempt but no longer exists: remove it from EXEMPT"
