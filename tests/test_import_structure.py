"""Issue 36: dependencies inside ``anomalib_crr`` point one way.

Read from the source with ``ast`` (every ``import``, function-local ones included, since a local import hides a
cycle at import time without removing it):

* no import cycle between the package's modules;
* shared model components (``models/components``) never import a concrete model or ``deploy``;
* ``deploy`` and ``data`` never import a concrete model.
"""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src"
CONCRETE_MODELS = ("anomalib_crr.models.crr", "anomalib_crr.models.mfrnet")


def _modules() -> dict[str, Path]:
    modules = {}
    for path in SOURCE.rglob("*.py"):
        parts = path.relative_to(SOURCE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imported(module: str, path: Path, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> list[str]:
    """The package modules an import statement loads (a package's ``__init__`` only when it is what is named)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, *([node.module] if node.module else [])])
        submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
        targets = submodules if len(submodules) == len(node.names) else [base, *submodules]
    found = []
    for target in targets:
        parts = target.split(".")
        while parts and ".".join(parts) not in modules:
            parts.pop()
        if parts and ".".join(parts) != module:
            found.append(".".join(parts))
    return found


def import_graph() -> dict[str, set[str]]:
    """``{module: the package modules it imports}`` for every module under ``src/``."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        graph[module] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[module].update(_imported(module, path, node, modules))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), i.e. the import cycles."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _edges_into(graph: dict[str, set[str]], sources: str, targets: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{module} -> {imported}"
        for module, imports in graph.items()
        if module.startswith(sources)
        for imported in imports
        if imported.startswith(targets)
    )


def test_the_checker_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 50  # the whole package was read
    assert cycles(graph) == []


def test_shared_model_components_import_no_concrete_model_and_no_deploy() -> None:
    graph = import_graph()
    assert _edges_into(graph, "anomalib_crr.models.components", (*CONCRETE_MODELS, "anomalib_crr.deploy")) == []


def test_deploy_and_data_import_no_concrete_model() -> None:
    graph = import_graph()
    assert _edges_into(graph, "anomalib_crr.deploy", CONCRETE_MODELS) == []
    assert _edges_into(graph, "anomalib_crr.data", CONCRETE_MODELS) == []
