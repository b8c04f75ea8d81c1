"""The import graph of `pipeline/`, built from the source with `ast`: no circles, the
functional core imports no shell room, and the top of the package stays small."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[2] / "pipeline"
CORE_ROOMS = ("pipeline.meta", "pipeline.models")
CORE_FILES = ("pipeline.data.episodes", "pipeline.bank.index", "pipeline.bank.ann")
# What the core may import from the rest of the package: typed config slices and errors.
CORE_MAY_IMPORT = ("pipeline.config", "pipeline.errors")
TOP_LEVEL_ALLOWED = {"__init__.py", "config.py", "errors.py"}
TOP_LEVEL_EXTRA_MAX = 2


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PKG.rglob("*.py"):
        name = ".".join(f.relative_to(PKG.parent).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = f
    return mods


def _targets(node: ast.AST, package: str) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(parts + ([base] if base else []))
        return [base] + [f"{base}.{a.name}" for a in node.names]
    return []


def import_graph() -> dict[str, set[str]]:
    """module -> the pipeline modules it imports (anywhere in its body, lazy imports too)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            for target in _targets(node, package):
                while target and target not in mods:
                    target = target.rsplit(".", 1)[0] if "." in target else ""
                # A module importing its own package's __init__ is how Python imports it.
                own_package = mods.get(target, Path()).name == "__init__.py" and mod.startswith(
                    target + "."
                )
                if target and target != mod and not own_package:
                    graph[mod].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _is_core(mod: str) -> bool:
    return mod in CORE_FILES or any(mod == r or mod.startswith(r + ".") for r in CORE_ROOMS)


def test_the_graph_sees_known_edges():
    graph = import_graph()
    assert "pipeline.meta.inner" in graph["pipeline.meta.outer"]
    assert "pipeline.data.episodes" in graph["pipeline.runtime.episode_actors"]


def test_no_import_circles():
    assert _cycles(import_graph()) == []


def test_cycle_finder_finds_a_planted_circle():
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(planted) == [["a", "b", "c"]]


def test_functional_core_imports_only_core_config_and_errors():
    bad = {
        mod: sorted(t for t in deps if not (_is_core(t) or t in CORE_MAY_IMPORT))
        for mod, deps in import_graph().items()
        if _is_core(mod)
    }
    assert {m: d for m, d in bad.items() if d} == {}


def test_top_of_the_package_holds_config_errors_and_at_most_two_more():
    top = {p.name for p in PKG.glob("*.py")}
    assert top >= TOP_LEVEL_ALLOWED
    assert len(top - TOP_LEVEL_ALLOWED) <= TOP_LEVEL_EXTRA_MAX, sorted(top - TOP_LEVEL_ALLOWED)
