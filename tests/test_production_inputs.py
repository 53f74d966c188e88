"""Issue 11, item 4: bad input gives correct handling or a clear error naming the file and the problem.

| input | behaviour |
|---|---|
| truncated / corrupt / zero-byte image (train, test, predict folder) | ``InvalidInputError`` listing each file |
| 16-bit grayscale PNG | ``InvalidInputError`` (anomalib's reader would clip it to white) |
| grayscale, RGBA, palette images; images smaller than the crop | converted / resized, trained and scored |
| mask size differs from its image | ``InvalidInputError`` naming mask and image |
| empty training folder | ``InvalidInputError`` naming the datamodule's root and category |
| NaN / Inf in a tensor given to the model | ``ValueError`` with counts and batch indices |

Checkpoints of the other model or encoder and untrusted checkpoints: ``test_production_deploy.py``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from PIL import Image

from anomalib_crr.data.validation import InvalidInputError, check_image

from .helpers import TINY_IMAGE, tiny_crr, tiny_mfrnet

CATEGORY = "washer"


def _copy(dataset: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(dataset, root)
    return root


def _datamodule(root: Path) -> MVTecAD:
    return MVTecAD(root=root, category=CATEGORY, train_batch_size=2, eval_batch_size=4, num_workers=0)


def _engine(root: Path) -> Engine:
    return Engine(default_root_dir=root, logger=False, accelerator="cpu", devices=1, enable_progress_bar=False)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _write_16bit_gray(path: Path, size: int = TINY_IMAGE) -> None:
    Image.fromarray(np.linspace(0, 65535, size * size).reshape(size, size).astype(np.uint16)).save(path)


def test_check_image_accepts_convertible_modes_and_names_problems(tmp_path: Path) -> None:
    rgb = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    for mode in ("RGB", "L", "RGBA", "P", "LA"):
        Image.fromarray(rgb).convert(mode).save(tmp_path / f"{mode}.png")
        assert check_image(tmp_path / f"{mode}.png") == (None, (32, 32)), mode
    Image.fromarray(rgb).save(tmp_path / "truncated.jpg")
    _truncate(tmp_path / "truncated.jpg")
    Image.fromarray(rgb).save(tmp_path / "truncated.png")
    _truncate(tmp_path / "truncated.png")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("not an image")
    _write_16bit_gray(tmp_path / "gray16.png")
    assert "truncated" in check_image(tmp_path / "truncated.jpg")[0]
    assert "truncated" in check_image(tmp_path / "truncated.png", decode=False)[0]
    assert "0 bytes" in check_image(tmp_path / "empty.png")[0]
    assert "not a readable image" in check_image(tmp_path / "text.png")[0]
    assert "16-bit" in check_image(tmp_path / "gray16.png")[0]
    assert "does not exist" in check_image(tmp_path / "missing.png")[0]


def test_bad_training_and_test_files_are_listed_before_the_fit(tiny_dataset: Path, tmp_path: Path) -> None:
    root = _copy(tiny_dataset, tmp_path)
    train = sorted((root / CATEGORY / "train" / "good").glob("*.png"))
    _truncate(train[0])
    train[1].write_bytes(b"")
    _write_16bit_gray(train[2])
    test_image = sorted((root / CATEGORY / "test" / "good").glob("*.png"))[0]
    _truncate(test_image)
    model = tiny_crr(stage1_steps=1, stage2_steps=1)
    with pytest.raises(InvalidInputError) as error:
        _engine(tmp_path).fit(model=model, datamodule=_datamodule(root))
    message = str(error.value)
    assert "4 unusable input file(s) for fit" in message  # the test images are the validation set here
    for path, problem in ((train[0], "truncated"), (train[1], "0 bytes"), (train[2], "16-bit"), (test_image, "trunc")):
        assert f"{path}: " in message
        assert problem in message.split(f"{path}: ")[1].split("\n", maxsplit=1)[0]
    assert int(model.train_step_count) == 0  # nothing was trained


def test_mask_of_another_size_is_named(tiny_dataset: Path, tmp_path: Path) -> None:
    root = _copy(tiny_dataset, tmp_path)
    mask = sorted((root / CATEGORY / "ground_truth").rglob("*.png"))[0]
    Image.open(mask).resize((TINY_IMAGE // 2, TINY_IMAGE)).save(mask)
    with pytest.raises(InvalidInputError, match=rf"{mask}: mask is 32x64 but its image .* is 64x64"):
        _engine(tmp_path).test(model=tiny_crr(), datamodule=_datamodule(root))


def test_empty_training_folder(tiny_dataset: Path, tmp_path: Path) -> None:
    root = _copy(tiny_dataset, tmp_path)
    for path in (root / CATEGORY / "train" / "good").iterdir():
        path.unlink()
    with pytest.raises(InvalidInputError, match=rf"No training images: MVTecAD root={root}.* category={CATEGORY}"):
        _engine(tmp_path).fit(model=tiny_mfrnet(), datamodule=_datamodule(root))


def test_grayscale_rgba_and_small_images_are_converted(tiny_dataset: Path, tmp_path: Path) -> None:
    """Grayscale, RGBA and 20 px images (smaller than the 56 px crop) train, test and predict normally."""
    root = _copy(tiny_dataset, tmp_path)
    train = sorted((root / CATEGORY / "train" / "good").glob("*.png"))
    Image.open(train[0]).convert("L").save(train[0])
    Image.open(train[1]).convert("RGBA").save(train[1])
    Image.open(train[2]).resize((20, 20)).save(train[2])
    predict_dir = tmp_path / "predict"
    predict_dir.mkdir()
    Image.open(train[3]).convert("LA").save(predict_dir / "gray_alpha.png")
    Image.open(train[4]).resize((20, 20)).convert("P").save(predict_dir / "small_palette.png")
    model = tiny_crr(stage1_steps=1, stage2_steps=1)
    engine = _engine(tmp_path)
    datamodule = _datamodule(root)
    engine.fit(model=model, datamodule=datamodule)
    assert int(model.train_step_count) == 2
    metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    assert 0.0 <= metrics["image_AUROC"] <= 1.0
    predictions = engine.predict(model=model, data_path=predict_dir, return_predictions=True)
    scores = torch.cat([batch.pred_score.flatten() for batch in predictions])
    assert scores.shape == (2,)
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("factory", [tiny_crr, tiny_mfrnet], ids=["CRR", "MFRNet"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_input_tensor_is_rejected(factory: Any, value: float) -> None:
    model = factory().eval()
    images = torch.rand(2, 3, TINY_IMAGE, TINY_IMAGE)
    with torch.no_grad():
        assert torch.isfinite(model(images).pred_score).all()
        images[1, 0, 3, 4] = value
        with pytest.raises(ValueError, match=r"infinite values \(batch indices \[1\]\)"):
            model(images)
