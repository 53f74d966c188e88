"""``benchmarks/`` as a package: no ``sys.path`` edits, no private imports across modules, no import cycles.

The scripts share their pieces through ``benchmarks/common.py`` and import each other with absolute package
imports (``from benchmarks.int8 import ...``). These checks read the sources with ``ast`` (nothing is imported,
so they run in milliseconds) and each checker is also fed a bad snippet, so that a checker that silently stopped
finding anything would fail here rather than pass forever.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"
PACKAGE = "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))
MODULES = {path.stem for path in SCRIPTS}


def _is_sys_path(node: ast.AST) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and node.attr == "path"
        and isinstance(node.value, ast.Name)
        and node.value.id == "sys"
    )


def sys_path_edits(tree: ast.AST) -> list[int]:
    """Lines that change ``sys.path``: ``insert``/``append``/``extend`` calls and (item or slice) assignments."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in {"insert", "append", "extend"} and _is_sys_path(node.func.value):
                lines.append(node.lineno)
        elif isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if _is_sys_path(target) or (isinstance(target, ast.Subscript) and _is_sys_path(target.value)):
                    lines.append(node.lineno)
    return lines


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _sibling(module: str | None, level: int, this: str) -> str | None:
    """The benchmarks module an import refers to (``benchmarks.x``, ``.x`` or bare ``x``), or None."""
    if level:  # relative: from .x import y / from . import x
        return module.split(".")[0] if module else None
    if module is None:
        return None
    parts = module.split(".")
    if parts[0] == PACKAGE and len(parts) > 1:
        return parts[1]
    if parts[0] in MODULES - {this, PACKAGE}:
        return parts[0]
    return None


# Long on purpose: one branch per import form the AST can hold.
def private_imports(tree: ast.AST) -> list[str]:  # noqa: PLR0912
    """Private names imported from another module, or read as ``module._name`` off an imported benchmarks module."""
    found = []
    aliases: set[str] = set()  # local names bound to a benchmarks module
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module != "__future__":
            for part in (node.module or "").split("."):
                if _private(part):
                    found.append(f"line {node.lineno}: module {node.module}")
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"line {node.lineno}: {alias.name} from {node.module}")
                if node.module == PACKAGE or (node.level and not node.module):
                    aliases.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if any(_private(part) for part in alias.name.split(".")):
                    found.append(f"line {node.lineno}: module {alias.name}")
                if alias.name.split(".")[0] in MODULES | {PACKAGE}:
                    aliases.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in aliases:
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
    return found


def bare_sibling_imports(tree: ast.AST) -> list[str]:
    """``import real_data`` / ``from int8 import ...``: these only resolve with ``benchmarks/`` on ``sys.path``."""
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found += [f"line {node.lineno}: {name}" for name in names if name.split(".")[0] in MODULES - {PACKAGE}]
    return found


def sibling_imports(tree: ast.AST, this: str) -> set[str]:
    """The benchmarks modules ``this`` imports (module-level or inside functions)."""
    edges = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _sibling(node.module, node.level, this)
            if target is not None:
                edges.add(target)
            elif node.module == PACKAGE or (node.level and not node.module):
                edges |= {alias.name for alias in node.names if alias.name in MODULES}
        elif isinstance(node, ast.Import):
            for alias in node.names:
                target = _sibling(alias.name, 0, this)
                if target is not None:
                    edges.add(target)
    return edges & MODULES - {this}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def _trees() -> dict[str, ast.AST]:
    return {path.stem: ast.parse(path.read_text(), filename=str(path)) for path in SCRIPTS}


def test_benchmarks_is_a_package() -> None:
    assert (BENCHMARKS / "__init__.py").is_file()
    assert (BENCHMARKS / "common.py").is_file()
    assert len(SCRIPTS) > 5


def test_no_sys_path_edits() -> None:
    offenders = {name: lines for name, tree in _trees().items() if (lines := sys_path_edits(tree))}
    assert not offenders, f"benchmarks edit sys.path (import through the benchmarks package instead): {offenders}"


def test_no_private_imports_across_modules() -> None:
    offenders = {name: found for name, tree in _trees().items() if (found := private_imports(tree))}
    assert not offenders, f"private names imported across modules (make them public or move them): {offenders}"


def test_siblings_imported_through_the_package() -> None:
    offenders = {name: found for name, tree in _trees().items() if (found := bare_sibling_imports(tree))}
    assert not offenders, f"bare sibling imports (use `from benchmarks.x import ...`): {offenders}"


def test_no_import_cycles() -> None:
    graph = {name: sibling_imports(tree, name) for name, tree in _trees().items()}
    assert graph["real_data"] >= {"common"}  # the graph is really built from the sources
    assert find_cycle(graph) is None, f"import cycle among benchmarks modules: {' -> '.join(find_cycle(graph))}"


# ------------------------------------------------------------------ the checkers themselves find violations
def test_checkers_flag_bad_sources() -> None:
    assert sys_path_edits(ast.parse("import sys\nsys.path.insert(0, 'x')\nsys.path.append('y')")) == [2, 3]
    assert sys_path_edits(ast.parse("import sys\nsys.path[0] = 'x'\nsys.path += ['y']")) == [2, 3]
    assert sys_path_edits(ast.parse("import sys\nsys.meta_path.insert(0, object())")) == []
    assert private_imports(ast.parse("from benchmarks.real_data import _write, build_model"))
    assert private_imports(ast.parse("from real_data import _write"))
    assert private_imports(ast.parse("from benchmarks import real_data\nreal_data._write([], 'x')"))
    assert private_imports(ast.parse("import real_data\nreal_data._write([], 'x')"))
    assert not private_imports(ast.parse("from __future__ import annotations\nfrom x import y\nz._w"))
    assert bare_sibling_imports(ast.parse("import real_data\nfrom int8 import SIZE"))
    assert not bare_sibling_imports(ast.parse("from benchmarks.int8 import SIZE"))
    assert sibling_imports(ast.parse("from benchmarks.int8 import SIZE\nimport benchmarks.common"), "x") == {
        "int8",
        "common",
    }
    assert sibling_imports(ast.parse("from . import int8\nfrom .common import ROOT"), "x") == {"int8", "common"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


# ------------------------------------------------------------------ both ways of running a script
@pytest.mark.parametrize(
    "command",
    [["benchmarks/blur_export.py", "--help"], ["-m", "benchmarks.blur_export", "--help"]],
    ids=["script", "module"],
)
def test_script_runs_as_file_and_as_module(command: list[str]) -> None:
    # blur_export imports common, int8 and int8_fit: the sibling imports resolve in both forms.
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "usage: blur_export.py" in result.stdout
