"""The server's modules import each other without a cycle, counting imports inside functions."""

from __future__ import annotations

import ast
from graphlib import TopologicalSorter

from tests.conftest import ROOT


def _module(path_parts: tuple[str, ...]) -> str:
    parts = list(path_parts)
    parts[-1] = parts[-1].removesuffix(".py")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def api_imports() -> dict[str, set[str]]:
    """Each module of `api` and the `api` modules it imports (anywhere in its body)."""
    files = {_module(p.relative_to(ROOT).parts): p for p in (ROOT / "api").rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
                targets |= {n if n in files else node.module for n in names}
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def test_api_has_no_import_cycle() -> None:
    graph = api_imports()
    assert "api.services.batches" in graph["api.services.kinds"]
    tuple(TopologicalSorter(graph).static_order())  # raises CycleError on a cycle
