"""MFRNet's image score (issue 21): the margin over the normal envelope, its statistics, sizes and checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_crr import MFRNet
from anomalib_crr.models.mfrnet.components import ImageScore, NormalEnvelope

from .helpers import SHARED_WEIGHTS, TINY_IMAGE, onnx_outputs, tiny_datamodule, tiny_mfrnet

TIRE = SHARED_WEIGHTS.parents[1] / "data" / "mvtec3d_rgb"


_datamodule = tiny_datamodule


@pytest.fixture(scope="module")
def fitted(tiny_dataset: Path, module_tmp_dir: Callable[[str], Path]) -> dict[str, Any]:
    torch.manual_seed(0)
    model = tiny_mfrnet()
    root = module_tmp_dir("mfrnet_envelope")
    engine = Engine(default_root_dir=root, max_epochs=2, accelerator="cpu", devices=1, logger=False)
    datamodule = _datamodule(tiny_dataset)
    engine.fit(model=model, datamodule=datamodule)
    return {"model": model, "datamodule": datamodule, "ckpt": next(root.rglob("*.ckpt"))}


def _smoothed_maximum(model: MFRNet, dataloader: Any) -> torch.Tensor:
    """The envelope computed by hand: each position's maximum of the smoothed discrepancy over ``dataloader``."""
    maps = []
    with torch.no_grad():
        for batch in dataloader:
            images = model.pre_processor.transform(batch.image)
            maps.append(model.model.normal_envelope.smooth(model.model.discrepancy(model.model.aggregator(images))))
    return torch.cat(maps).amax(dim=0)


def test_envelope_comes_from_the_training_images_only(fitted: dict[str, Any]) -> None:
    model: MFRNet = fitted["model"].cpu().eval()
    datamodule = fitted["datamodule"]
    envelope = model.model.normal_envelope.envelope
    train_maximum = _smoothed_maximum(model, datamodule.train_dataloader())
    torch.testing.assert_close(envelope, train_maximum, rtol=1e-5, atol=1e-5)
    # The test images (with defects) would have raised it: they were not used.
    with_test = torch.maximum(train_maximum, _smoothed_maximum(model, datamodule.test_dataloader()))
    assert (with_test - envelope).amax() > 1e-3


def test_envelope_persists_in_the_checkpoint_and_in_onnx(fitted: dict[str, Any], tmp_path: Path) -> None:
    model: MFRNet = fitted["model"].cpu().eval()
    images = next(iter(fitted["datamodule"].test_dataloader())).image  # real test images: scores not saturated
    with torch.no_grad():
        raw = model.model(images)
        expected = model(images)  # post-processed, as the export
    reloaded = MFRNet.load_from_checkpoint(fitted["ckpt"]).eval()
    assert reloaded.model.image_score is ImageScore.ENVELOPE
    torch.testing.assert_close(reloaded.model.normal_envelope.envelope, model.model.normal_envelope.envelope)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.model(images).pred_score, raw.pred_score)
        torch.testing.assert_close(reloaded(images).pred_score, expected.pred_score)
    # The score is not the map's maximum, so the export must carry the envelope to agree.
    assert not torch.allclose(raw.pred_score, raw.anomaly_map.flatten(1).amax(dim=1))
    assert expected.pred_score.std() > 0.01  # distinct normalised scores (none clamped alike), so it can fail
    onnx_path = reloaded.to_onnx(tmp_path, input_size=(TINY_IMAGE, TINY_IMAGE))
    outputs = onnx_outputs(onnx_path, images)
    np.testing.assert_allclose(
        outputs["pred_score"].reshape(-1), expected.pred_score.numpy().reshape(-1), rtol=1e-4, atol=1e-4
    )


def test_another_input_size_is_refused_with_both_sizes(fitted: dict[str, Any]) -> None:
    model = fitted["model"].model.cpu().eval()
    with torch.no_grad(), pytest.raises(ValueError, match=r"8x8 feature grid; this input gives 12x16"):
        model(torch.rand(1, 3, 96, 128))
    unfitted = NormalEnvelope()
    assert unfitted(torch.rand(2, 12, 16)).shape == (2,)  # no envelope yet: any size (no statistic to misuse)


def test_checkpoint_from_before_the_envelope_scores_from_the_map(fitted: dict[str, Any], tmp_path: Path) -> None:
    checkpoint = torch.load(fitted["ckpt"], map_location="cpu", weights_only=False)
    checkpoint["hyper_parameters"].pop("image_score")
    del checkpoint["state_dict"]["model.normal_envelope.envelope"]
    path = tmp_path / "before_envelope.ckpt"
    torch.save(checkpoint, path)
    model = MFRNet.load_from_checkpoint(path).eval()
    assert model.model.image_score is ImageScore.MAP
    with torch.no_grad():
        out = model.model(torch.rand(2, 3, TINY_IMAGE, TINY_IMAGE))
    torch.testing.assert_close(out.pred_score, out.anomaly_map.flatten(1).amax(dim=1))


def test_envelope_checkpoint_without_its_envelope_names_the_statistic(fitted: dict[str, Any], tmp_path: Path) -> None:
    checkpoint = torch.load(fitted["ckpt"], map_location="cpu", weights_only=False)
    del checkpoint["state_dict"]["model.normal_envelope.envelope"]
    path = tmp_path / "no_envelope.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(ValueError, match=r"normal_envelope\.envelope"):
        MFRNet.load_from_checkpoint(path)


def _paste_defect(image: torch.Tensor) -> torch.Tensor:
    """A dark scratch with a bright rim across the middle of a ``(3, H, W)`` image in [0, 1]."""
    defective = image.clone()
    height, width = image.shape[-2:]
    rows = torch.arange(height).view(-1, 1)
    cols = torch.arange(width).view(1, -1)
    distance = (rows - height // 2 - (cols - width // 2) // 3).abs()
    inside = (cols - width // 2).abs() < width // 6
    defective[:, (distance <= 1) & inside] = 0.05
    defective[:, (distance == 2) & inside] = 0.95
    return defective


def test_a_pasted_defect_raises_the_score_of_a_training_image(tiny_dataset: Path, tmp_path: Path) -> None:
    """On real tire images with the ImageNet lite0 weights when ``../shared`` is there, else on generated data.

    A training image is inside the envelope by construction (its margin is at most 0); the same image with a
    scratch must score higher.
    """
    real = TIRE.is_dir() and SHARED_WEIGHTS.is_file()
    if real:
        size = 256
        model = MFRNet(
            pre_trained=False,
            weights_path=SHARED_WEIGHTS,
            pre_processor=MFRNet.configure_pre_processor((size, size)),
        )
        datamodule = MVTecAD(root=TIRE, category="tire", train_batch_size=8, eval_batch_size=8, num_workers=0)
    else:
        size = TINY_IMAGE
        model, datamodule = tiny_mfrnet(), _datamodule(tiny_dataset)
    torch.manual_seed(0)
    Engine(default_root_dir=tmp_path, max_epochs=1, accelerator="cpu", devices=1, logger=False).fit(
        model=model, datamodule=datamodule
    )
    clean = datamodule.train_data[0].image  # as the statistics pass saw it (resized by the datamodule)
    assert clean.shape == (3, size, size)
    model = model.cpu().eval()
    with torch.no_grad():
        scores = model.model(torch.stack([clean, _paste_defect(clean)])).pred_score
    assert scores[0] <= 1e-4  # a training image does not rise above its own envelope
    assert scores[1] > scores[0] + 0.1, scores
