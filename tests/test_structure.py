"""The shape of the servelab package: no import cycles, no module doing too many jobs."""

from __future__ import annotations

import ast
from pathlib import Path

from servelab.paths import REPO

PACKAGE = REPO / "servelab"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The servelab modules a file imports, at the top or inside a function alike:
    `from servelab.bench import corpus` imports the module servelab.bench.corpus."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in modules else node.module)
    return {name for name in found if name in modules}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: imports_of(path, set(files)) - {name} for name, path in files.items()}


def test_no_two_servelab_modules_import_each_other_directly_or_in_a_loop():
    graph = import_graph()
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        for target in sorted(graph[name]):
            if target in path:
                cycles.append([*path[path.index(target):], target])
            elif len(path) < len(graph):
                visit(target, [*path, target])

    for start in sorted(graph):
        visit(start, [start])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles[:5])


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "servelab.bench.ceiling" in graph["servelab.bench.bracket"]  # imported inside main()
    assert "servelab.paths" in graph["servelab.process"]


def test_the_notebook_helpers_are_a_package_of_small_modules():
    modules = sorted((PACKAGE / "notebook").glob("*.py"))
    assert len(modules) >= 5
    sizes = {p.name: len(p.read_text().splitlines()) for p in modules}
    assert all(n < 300 for n in sizes.values()), sizes
    assert not (PACKAGE / "notebook.py").exists()
