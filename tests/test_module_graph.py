"""No two of the project's modules import each other, at any depth (an import inside a function
counts too), and the shipped code (components/, convex_gcp/, tools/) imports no test machinery."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("components", "convex_gcp", "tools", "tests")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "node_modules" not in path.parts:
                found[module_name(path)] = path
    return found


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The project modules `path` imports, resolved to the deepest module that exists."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            candidates = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for candidate in candidates:
            while candidate and candidate not in known:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name:
                targets.add(candidate)
    return targets


def graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports(path, name, set(modules)) for name, path in modules.items()}


def test_no_two_modules_import_each_other():
    edges = graph()
    mutual = sorted({tuple(sorted((a, b))) for a, targets in edges.items() for b in targets if a in edges.get(b, set())})
    assert not mutual, f"modules importing each other: {mutual}"


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycles.append(trail[trail.index(target):] + [target] if target in trail else [node, target])
            elif not state.get(target):
                visit(target, trail + [target])
        state[node] = 2

    for start in sorted(edges):
        if not state.get(start):
            visit(start, [start])
    assert not cycles, f"import cycles: {cycles}"


def test_shipped_code_imports_no_test_machinery():
    offenders = {name: sorted(t for t in targets if t.split(".")[0] == "tests")
                 for name, targets in graph().items() if name.split(".")[0] != "tests"}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_the_graph_sees_imports_inside_functions():
    # The check can fail: tools.plan imports tools.critical_path inside render_markdown.
    assert "tools.critical_path" in graph()["tools.plan"]
