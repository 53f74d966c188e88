"""Issue 36: checkpoints written by the 0.2.0 code (commit 62ab65f, before the Lightning modules were split) load and
score unchanged with the current code, for both models.

The old code is taken from this repository's own history (``git archive``), fits the tiny models on generated data
in a subprocess and saves the checkpoints and its scores; the current code then loads each checkpoint with
``load_from_checkpoint`` and must give the same scores and maps. Nothing large is stored in the repository.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from anomalib_crr import CRR, MFRNet

REPO = Path(__file__).resolve().parents[1]
RELEASE_COMMIT = "62ab65f"  # main at 0.2.0 (src/anomalib_crr/__init__.py), the last state before the split

MAKE_OLD_CHECKPOINTS = """
import sys, shutil, torch
from pathlib import Path
from anomalib.engine import Engine
from anomalib_crr.data import make_synthetic_mvtec
from tests.helpers import TINY_CROP, TINY_IMAGE, tiny_crr, tiny_datamodule, tiny_mfrnet

out = Path(sys.argv[1])
root = make_synthetic_mvtec(out / "data", categories=["washer"], num_train=8, num_test_good=2, num_test_defect=2,
                            image_size=TINY_IMAGE, seed=0)
torch.manual_seed(0)
inputs = {"crr": torch.rand(2, 3, TINY_CROP, TINY_CROP), "mfrnet": torch.rand(2, 3, TINY_IMAGE, TINY_IMAGE)}
expected = {"inputs": inputs}
for name, build in (("crr", tiny_crr), ("mfrnet", tiny_mfrnet)):
    torch.manual_seed(0)
    model = build()
    engine = Engine(default_root_dir=out / name, max_epochs=1, accelerator="cpu", devices=1, logger=False,
                    enable_progress_bar=False)
    engine.fit(model=model, datamodule=tiny_datamodule(root))
    shutil.copy(next((out / name).rglob("*.ckpt")), out / f"{name}.ckpt")
    model.eval()
    with torch.no_grad():
        prediction = model.model(inputs[name])
    expected[name] = {"pred_score": prediction.pred_score, "anomaly_map": prediction.anomaly_map}
torch.save(expected, out / "expected.pt")
"""


def _release_tree(target: Path) -> Path:
    """``src`` and ``tests`` of the release commit, extracted from git (skips where the history is absent)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", RELEASE_COMMIT, "src", "tests"],
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        pytest.skip(f"commit {RELEASE_COMMIT} is not in this clone's history: {archive.stderr.decode()[:200]}")
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(target, filter="data")
    return target


@pytest.fixture(scope="module")
def release_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tree = _release_tree(tmp_path_factory.mktemp("release"))
    out = tmp_path_factory.mktemp("release_checkpoints")
    env = {**os.environ, "PYTHONPATH": f"{tree / 'src'}{os.pathsep}{tree}"}
    result = subprocess.run(
        [sys.executable, "-c", MAKE_OLD_CHECKPOINTS, str(out)],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.mark.parametrize(("name", "model_class"), [("crr", CRR), ("mfrnet", MFRNet)])
def test_release_checkpoint_loads_and_scores_unchanged(release_checkpoints: Path, name: str, model_class: type) -> None:
    expected = torch.load(release_checkpoints / "expected.pt", weights_only=True)
    model = model_class.load_from_checkpoint(release_checkpoints / f"{name}.ckpt")
    model.eval()
    with torch.no_grad():
        prediction = model.model(expected["inputs"][name])
    torch.testing.assert_close(prediction.pred_score, expected[name]["pred_score"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(prediction.anomaly_map, expected[name]["anomaly_map"], rtol=1e-5, atol=1e-6)
