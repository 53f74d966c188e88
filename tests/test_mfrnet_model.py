"""MFRNet through anomalib's Engine: checks 5-7, 10 and 11 of the spec (determinism, outputs, frozen backbone,
persisted feature statistics, fit/test/predict)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from anomalib.engine import Engine
from torchvision.io import read_image

from anomalib_crr import MFRNet
from anomalib_crr.models.mfrnet.components import ImageScore

from .helpers import TINY_IMAGE, tiny_datamodule, tiny_mfrnet

_datamodule = tiny_datamodule


@pytest.fixture(scope="module")
def fitted(tiny_dataset: Path, module_tmp_dir: Callable[[str], Path]) -> dict[str, Any]:
    torch.manual_seed(0)
    model = tiny_mfrnet()
    backbone_before = {k: v.clone() for k, v in model.model.aggregator.extractor.state_dict().items()}
    restorer_before = {k: v.clone() for k, v in model.model.restorer.state_dict().items()}
    root = module_tmp_dir("mfrnet_fit")
    engine = Engine(default_root_dir=root, max_epochs=2, accelerator="cpu", devices=1, logger=False)
    engine.fit(model=model, datamodule=_datamodule(tiny_dataset))
    metrics = engine.test(model=model, datamodule=_datamodule(tiny_dataset), verbose=False)[0]
    return {
        "model": model,
        "engine": engine,
        "root": root,
        "metrics": metrics,
        "backbone_before": backbone_before,
        "restorer_before": restorer_before,
        "ckpt": next(root.rglob("*.ckpt")),
    }


def test_fit_trains_only_the_restorer_and_keeps_the_backbone_frozen(fitted: dict[str, Any]) -> None:
    model: MFRNet = fitted["model"]
    aggregator = model.model.aggregator
    assert fitted["engine"].trainer.global_step == 4  # 8 images, batch 4, 2 epochs
    for key, value in aggregator.extractor.state_dict().items():
        assert torch.equal(value, fitted["backbone_before"][key]), key
    assert not any(p.requires_grad for p in aggregator.parameters())
    assert not any(p.grad is not None for p in aggregator.parameters())
    model.train()
    assert not aggregator.extractor.training  # stays in eval mode even when the module is put in train mode
    changed = [not torch.equal(v, fitted["restorer_before"][k]) for k, v in model.model.restorer.state_dict().items()]
    assert all(changed)
    optimized = {id(p) for group in model.optimizers().optimizer.param_groups for p in group["params"]}
    assert optimized == {id(p) for p in model.model.restorer.parameters()}
    assert {"image_AUROC", "pixel_AUROC"} <= set(fitted["metrics"])


def test_feature_statistics_match_the_training_images(fitted: dict[str, Any], tiny_dataset: Path) -> None:
    aggregator = fitted["model"].model.aggregator.cpu()
    files = sorted((tiny_dataset / "washer" / "train" / "good").glob("*.png"))
    images = torch.stack([read_image(str(f)).float() / 255 for f in files])
    with torch.no_grad():
        features = aggregator.raw_features(images)
    assert bool(aggregator.stats_ready)
    torch.testing.assert_close(aggregator.feature_mean, features.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-4)
    std = features.std(dim=(0, 2, 3), unbiased=False).clamp_min(1e-6)
    torch.testing.assert_close(aggregator.feature_std, std, rtol=1e-3, atol=1e-4)
    standardized = aggregator(images)
    assert float(standardized.mean(dim=(0, 2, 3)).abs().max()) < 1e-3


def test_checkpoint_restores_statistics_and_scores(fitted: dict[str, Any]) -> None:
    model: MFRNet = fitted["model"].cpu().eval()
    state = torch.load(fitted["ckpt"], map_location="cpu", weights_only=False)["state_dict"]
    assert {"model.aggregator.feature_mean", "model.aggregator.feature_std", "model.aggregator.stats_ready"} <= set(
        state
    )
    reloaded = MFRNet.load_from_checkpoint(fitted["ckpt"]).eval()
    torch.testing.assert_close(reloaded.model.aggregator.feature_mean, model.model.aggregator.feature_mean)
    torch.testing.assert_close(reloaded.model.aggregator.feature_std, model.model.aggregator.feature_std)
    images = torch.rand(3, 3, TINY_IMAGE, TINY_IMAGE)
    with torch.no_grad():
        expected, actual = model.model(images), reloaded.model(images)
    assert torch.equal(actual.pred_score, expected.pred_score)
    assert torch.equal(actual.anomaly_map, expected.anomaly_map)


def test_resumed_fit_does_not_recompute_statistics(fitted: dict[str, Any], tiny_dataset: Path) -> None:
    model = MFRNet.load_from_checkpoint(fitted["ckpt"])
    model.model.aggregator.feature_mean.add_(1.0)  # a marker that a recomputation would erase
    marked = model.model.aggregator.feature_mean.clone()
    engine = Engine(default_root_dir=fitted["root"] / "again", max_epochs=1, accelerator="cpu", logger=False)
    engine.fit(model=model, datamodule=_datamodule(tiny_dataset))
    assert torch.equal(model.model.aggregator.feature_mean.cpu(), marked)


def test_eval_is_deterministic_across_calls_and_batch_compositions(fitted: dict[str, Any]) -> None:
    model = fitted["model"].model.cpu().eval()
    images = torch.rand(3, 3, TINY_IMAGE, TINY_IMAGE)
    with torch.no_grad():
        first, second = model(images), model(images)
        alone = model(images[1:2])
    assert torch.equal(first.pred_score, second.pred_score)
    assert torch.equal(first.anomaly_map, second.anomaly_map)
    torch.testing.assert_close(alone.anomaly_map[0], first.anomaly_map[1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(alone.pred_score[0], first.pred_score[1], rtol=1e-4, atol=1e-5)


def test_outputs_have_input_size_and_map_score_is_the_map_maximum(fitted: dict[str, Any]) -> None:
    model = copy.deepcopy(fitted["model"].model).cpu().eval()
    model.image_score = ImageScore.MAP  # the score of checkpoints from before the envelope
    with torch.no_grad():
        out = model(torch.rand(2, 3, TINY_IMAGE, TINY_IMAGE))
        other_size = model(torch.rand(1, 3, 96, 128))  # test partitions are built on the fly for other sizes
    assert out.anomaly_map.shape == (2, 1, TINY_IMAGE, TINY_IMAGE)
    assert torch.equal(out.pred_score, out.anomaly_map.flatten(1).amax(dim=1))
    assert other_size.anomaly_map.shape == (1, 1, 96, 128)


def test_default_score_is_the_top_margin_over_the_envelope(fitted: dict[str, Any]) -> None:
    model = fitted["model"].model.cpu().eval()
    assert model.image_score is ImageScore.ENVELOPE
    images = torch.rand(2, 3, TINY_IMAGE, TINY_IMAGE)
    with torch.no_grad():
        out = model(images)
        discrepancy = model.discrepancy(model.aggregator(images))
    envelope = model.normal_envelope
    margin = (envelope.smooth(discrepancy) - envelope.envelope).flatten(1)
    assert envelope.envelope.shape == (8, 8)  # the feature grid of a 64 px input
    torch.testing.assert_close(out.pred_score, margin.topk(1, dim=1).values.mean(dim=1))  # 1 % of 64 -> 1
    assert out.anomaly_map.shape == (2, 1, TINY_IMAGE, TINY_IMAGE)  # the map is unchanged by the score


def test_top1_mean_score_mode(tiny_dataset: Path) -> None:
    del tiny_dataset
    model = tiny_mfrnet(score_mode="top1_mean", image_score="map").model.eval()
    with torch.no_grad():
        out = model(torch.rand(1, 3, TINY_IMAGE, TINY_IMAGE))
    top = out.anomaly_map.flatten().topk(TINY_IMAGE * TINY_IMAGE // 100).values.mean()
    torch.testing.assert_close(out.pred_score[0], top)


def test_predict_through_the_engine(fitted: dict[str, Any], tiny_dataset: Path) -> None:
    predictions = fitted["engine"].predict(
        model=fitted["model"], data_path=tiny_dataset / "washer" / "test" / "scratch", return_predictions=True
    )
    assert len(predictions) == 2  # one image per batch
    for batch in predictions:
        assert batch.anomaly_map.shape[-2:] == (TINY_IMAGE, TINY_IMAGE)
        assert batch.pred_score.shape == (1,)
        assert batch.pred_label is not None


def test_bf16_mixed_fit_and_test(tiny_dataset: Path, tmp_path: Path) -> None:
    model = tiny_mfrnet()
    engine = Engine(default_root_dir=tmp_path, max_epochs=1, accelerator="cpu", precision="bf16-mixed", logger=False)
    engine.fit(model=model, datamodule=_datamodule(tiny_dataset))
    metrics = engine.test(model=model, datamodule=_datamodule(tiny_dataset), verbose=False)[0]
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert bool(model.model.aggregator.stats_ready)


def test_normalize_in_the_pre_processor_is_rejected() -> None:
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    transform = Compose([Resize((64, 64)), Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])])
    with pytest.raises(ValueError, match="must not contain Normalize"):
        tiny_mfrnet(pre_processor=PreProcessor(transform=transform))
