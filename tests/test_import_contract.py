"""Issue 36: the layer contract in ``pyproject.toml`` (``[tool.importlinter]``) holds and ``lint-imports`` enforces it.

``.ci/run`` runs ``lint-imports`` on the tree; these tests run the same console script on the real tree (it must pass)
and on a copy of the package with one forbidden import added (it must fail, naming the contract that broke).
docs/architecture.md describes the layers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "anomalib_crr"
LAYERS = "Layers: entry points -> models -> deploy -> shared components -> data"
INDEPENDENT = "CRR and MFRNet are independent (shared code lives in models.components)"
GENERIC = "Shared model components import no concrete model and no deploy code"


def _lint_imports(cwd: Path, pythonpath: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` (the console script of this interpreter's environment, as .ci/run calls it) in ``cwd``."""
    script = Path(sys.executable).with_name("lint-imports")
    assert script.exists(), f"{script} missing: import-linter is a dev dependency (pip install -e '.[dev]')"
    env = dict(os.environ)
    if pythonpath is not None:  # ahead of the editable install's path entry, so the copy is the one analysed
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), *filter(None, [env.get("PYTHONPATH")])])
    command = [str(script), "--no-logo", "--no-cache"]
    return subprocess.run(command, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_contracts_hold_on_the_tree() -> None:
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in (LAYERS, INDEPENDENT, GENERIC):
        assert f"{name} KEPT" in result.stdout, result.stdout
    assert "3 kept, 0 broken" in result.stdout, result.stdout


# (file added to a copy of the package, its source, the contracts it must break, the chain lint-imports reports)
FORBIDDEN = {
    "components import a model": (
        "models/components/_probe.py",
        "from anomalib_crr.models.crr import CRR\n",
        (GENERIC, LAYERS),
        "anomalib_crr.models.components._probe -> anomalib_crr.models.crr",
    ),
    "components import deploy, inside a function": (
        "models/components/_probe.py",
        "def probe():\n    from anomalib_crr.deploy.export import Opset18OnnxExport\n\n    return Opset18OnnxExport\n",
        (GENERIC, LAYERS),
        "anomalib_crr.models.components._probe -> anomalib_crr.deploy.export",
    ),
    "MFRNet imports CRR": (
        "models/mfrnet/_probe.py",
        "from anomalib_crr.models.crr.loss import CrrFocalLoss\n",
        (INDEPENDENT, LAYERS),
        "anomalib_crr.models.mfrnet._probe -> anomalib_crr.models.crr.loss",
    ),
    "data imports the CLI, only under TYPE_CHECKING": (
        "data/_probe.py",
        "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from anomalib_crr import cli\n",
        (LAYERS,),
        "anomalib_crr.data._probe -> anomalib_crr.cli",
    ),
}


@pytest.mark.parametrize("case", FORBIDDEN, ids=list(FORBIDDEN))
def test_a_forbidden_import_breaks_the_contract(case: str, tmp_path: Path) -> None:
    relative, source, broken, chain = FORBIDDEN[case]
    shutil.copytree(PACKAGE, tmp_path / "src" / "anomalib_crr", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")  # the same contracts, read from the cwd
    target = tmp_path / "src" / "anomalib_crr" / relative
    assert not target.exists()
    target.write_text(source)

    result = _lint_imports(tmp_path, pythonpath=tmp_path / "src")
    assert result.returncode == 1, result.stdout + result.stderr
    for name in (LAYERS, INDEPENDENT, GENERIC):
        assert f"{name} {'BROKEN' if name in broken else 'KEPT'}" in result.stdout, result.stdout
    assert chain in result.stdout, result.stdout


def test_every_module_is_placed_in_a_layer() -> None:
    """A new top-level module (or a new part of ``models``) has to be given a place in the layers contract."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    (layers,) = [contract["layers"] for contract in contracts if contract["type"] == "layers"]
    placed = {name.strip() for layer in layers for name in layer.split("|")}

    def children(package: Path, prefix: str) -> set[str]:
        found = {f"{prefix}.{path.stem}" for path in package.glob("*.py") if path.stem != "__init__"}
        return found | {f"{prefix}.{path.name}" for path in package.iterdir() if (path / "__init__.py").exists()}

    expected = (children(PACKAGE, "anomalib_crr") - {"anomalib_crr.models"}) | children(
        PACKAGE / "models", "anomalib_crr.models"
    )
    assert expected == placed
