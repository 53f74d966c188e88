"""The notebooks are committed without outputs and shrink themselves under CI.

They are executed top to bottom by `.ci/run` (`pytest --nbmake notebooks` with `CI=true`), a separate step
after the test suite, because they train real models for a few minutes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def test_the_documented_notebooks_exist() -> None:
    assert [path.name for path in NOTEBOOKS] == [
        "01_quickstart.ipynb",
        "02_your_own_data.ipynb",
        "03_benchmark.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_is_committed_without_outputs(path: Path) -> None:
    notebook = json.loads(path.read_text())
    code_cells = [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]
    assert code_cells
    for index, cell in enumerate(code_cells):
        assert cell["outputs"] == [], f"{path.name}: code cell {index} has outputs; strip them before committing"
        assert cell["execution_count"] is None, f"{path.name}: code cell {index} has an execution count"
    assert "widgets" not in notebook["metadata"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_parameter_cell_shrinks_settings_under_ci(path: Path) -> None:
    notebook = json.loads(path.read_text())
    first_code = next(cell for cell in notebook["cells"] if cell["cell_type"] == "code")
    assert 'CI = bool(os.environ.get("CI"))' in "".join(first_code["source"])
