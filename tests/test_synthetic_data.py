"""The generated MVTec-style dataset: layout, determinism, and no overwriting."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from anomalib.data import MVTecAD

from anomalib_crr.data import make_synthetic_mvtec


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.png"))}


def test_layout_loads_with_mvtec_datamodule(tmp_path: Path) -> None:
    make_synthetic_mvtec(tmp_path, categories=["weave"], num_train=3, num_test_good=2, num_test_defect=1, image_size=32)
    datamodule = MVTecAD(root=tmp_path, category="weave", num_workers=0)
    datamodule.setup()
    assert len(datamodule.train_data) == 3
    assert len(datamodule.test_data) == 4
    assert (tmp_path / "weave" / "ground_truth" / "scratch" / "000_mask.png").is_file()


def test_same_seed_same_files_other_seed_other_files(tmp_path: Path) -> None:
    kwargs = {"categories": ["washer"], "num_train": 2, "num_test_good": 1, "num_test_defect": 1, "image_size": 32}
    a = _digest(make_synthetic_mvtec(tmp_path / "a", seed=3, **kwargs))
    b = _digest(make_synthetic_mvtec(tmp_path / "b", seed=3, **kwargs))
    c = _digest(make_synthetic_mvtec(tmp_path / "c", seed=4, **kwargs))
    assert a == b
    assert a != c


def test_existing_category_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "washer").mkdir()
    (tmp_path / "washer" / "mine.txt").write_text("user data")
    with pytest.raises(FileExistsError, match="not empty"):
        make_synthetic_mvtec(tmp_path, categories=["washer"])
    assert (tmp_path / "washer" / "mine.txt").read_text() == "user data"


def test_unknown_category_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Unknown synthetic categories"):
        make_synthetic_mvtec(tmp_path, categories=["bottle"])
