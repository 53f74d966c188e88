"""MFRNet's training design: residual restorer on a visible-neighbour inpainting, LR schedule, map normalisation,
feature cache and checkpoint compatibility with the first release."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch.callbacks import Callback

from anomalib_crr import MFRNet
from anomalib_crr.models.components.lr_schedule import lr_factor_schedule
from anomalib_crr.models.mfrnet import MFRNetModel
from anomalib_crr.models.mfrnet.components import LEGACY_LAYERS, VisibleNeighbourInpainting, structured_masks
from anomalib_crr.models.mfrnet.torch_model import WHITEN_RIDGE
from anomalib_crr.models.mfrnet.torch_model import TestGrid as GridPhase  # a "Test*" name would be collected

from .helpers import TINY_IMAGE, TINY_MFRNET, tiny_mfrnet


def _datamodule(root: Path, batch_size: int = 4) -> MVTecAD:
    return MVTecAD(root=root, category="washer", train_batch_size=batch_size, eval_batch_size=4, num_workers=0)


def _engine(root: Path, **kwargs: Any) -> Engine:
    return Engine(default_root_dir=root, accelerator="cpu", devices=1, logger=False, **kwargs)


# ------------------------------------------------------------------ inpainting and residual restorer
def test_inpainting_never_reads_a_hidden_position() -> None:
    inpainting = VisibleNeighbourInpainting(sigma=1.0)
    features = torch.randn(3, 7, 16, 16)
    hidden = structured_masks(3, (16, 16), 2, 3)[:, :1]  # copy 0's hidden cells
    visible = 1 - hidden
    perturbed = features + 100 * torch.randn_like(features) * hidden  # change only hidden positions
    torch.testing.assert_close(inpainting(perturbed, visible), inpainting(features, visible), rtol=0, atol=0)
    changed = features + visible * torch.randn_like(features)  # visible positions do matter
    assert (inpainting(changed, visible) - inpainting(features, visible)).abs().amax() > 1e-2


def test_inpainting_is_a_weighted_mean_of_visible_neighbours() -> None:
    inpainting = VisibleNeighbourInpainting(sigma=1.0)
    visible = (1 - structured_masks(1, (12, 12), 2, 3)[:, :1]).expand(2, 1, -1, -1)
    constant = torch.full((2, 4, 12, 12), 3.0)
    torch.testing.assert_close(inpainting(constant, visible), constant)  # a constant map is restored exactly
    ramp = torch.arange(12.0).view(1, 1, 1, 12).expand(2, 4, 12, 12)
    restored = inpainting(ramp, visible)
    assert float((restored - ramp)[..., 3:9, 3:9].abs().amax()) < 0.35  # interior of a linear ramp: close


def test_residual_restorer_at_initialisation_equals_the_inpainting_exactly() -> None:
    model = MFRNetModel(**{**TINY_MFRNET, "image_size": (TINY_IMAGE, TINY_IMAGE)})
    assert model.restorer.residual
    features = torch.randn(2, model.num_channels, 8, 8)
    visible = 1 - structured_masks(2, (8, 8), 2, 3)[:, :1]
    with torch.no_grad():
        restored = model.restorer(features * visible, visible)
        expected = model.restorer.inpainting(features * visible, visible)
    assert torch.equal(restored, expected)
    # ... and MFRNet's map at step 0 is the parameter-free inpainting's map
    hidden = model.test_masks((8, 8))[0].expand(2, -1, -1, -1)
    visible_copies = (1 - hidden).unsqueeze(2)
    copies = (features.unsqueeze(1) * visible_copies).flatten(0, 1)
    inpainted = model.restorer.inpainting(copies, visible_copies.flatten(0, 1)).view(2, 3, *features.shape[1:])
    with torch.no_grad():
        assert torch.equal(model.restore(features, hidden), (inpainted * hidden.unsqueeze(2)).sum(dim=1))


def test_plain_restorer_is_still_available() -> None:
    model = MFRNetModel(**{**TINY_MFRNET, "image_size": (TINY_IMAGE, TINY_IMAGE), "residual": False})
    assert model.restorer.inpainting is None
    assert model.restorer.stem[0].in_channels == model.num_channels + 1


# ------------------------------------------------------------------ learning-rate schedule
class _RecordLR(Callback):
    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        del pl_module, batch, batch_idx
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize("limit", [{"max_epochs": 2}, {"max_steps": 3, "max_epochs": -1}])
def test_last_step_uses_the_final_learning_rate(limit: dict[str, int], tiny_dataset: Path, tmp_path: Path) -> None:
    """2 epochs of 2 steps, or 3 steps: warm-up, cosine, and exactly ``lr · final_lr_ratio`` at the last step."""
    record = _RecordLR()
    model = tiny_mfrnet(lr=1e-3, final_lr_ratio=0.05, warmup_fraction=0.3)
    engine = _engine(tmp_path, callbacks=[record], **limit)
    engine.fit(model=model, datamodule=_datamodule(tiny_dataset))
    steps = 4 if "max_steps" not in limit else 3
    assert len(record.lrs) == steps
    assert record.lrs[-1] == pytest.approx(1e-3 * 0.05, rel=1e-6)
    assert max(record.lrs) <= 1e-3 + 1e-12
    assert min(record.lrs[:-1]) > 1e-3 * 0.05  # no collapse before the end


def test_schedule_shape_for_long_and_legacy_runs() -> None:
    factor = lr_factor_schedule(1000, warmup_fraction=0.05, final_ratio=0.01)
    assert factor(0) == pytest.approx(1 / 51)
    assert factor(50) == pytest.approx(1.0)
    assert factor(999) == pytest.approx(0.01)
    assert factor(525) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 475 / 949)))
    legacy = lr_factor_schedule(10, 0.0, 0.0, decay_at=0.8)
    assert [legacy(s) for s in range(10)] == [1.0] * 8 + [0.1] * 2  # ×0.1 after 80 % of the *steps*
    assert lr_factor_schedule(1, 0.05, 0.01)(0) == pytest.approx(0.01)  # a 1-step run still ends at the final value


# ------------------------------------------------------------------ per-k map normalisation, feature cache
@pytest.fixture(scope="module")
def fitted(tiny_dataset: Path, module_tmp_dir: Callable[[str], Path]) -> dict[str, Any]:
    torch.manual_seed(0)
    model = tiny_mfrnet()
    root = module_tmp_dir("mfrnet_design")
    engine = _engine(root, max_epochs=2)
    engine.fit(model=model, datamodule=_datamodule(tiny_dataset))
    return {"model": model, "engine": engine, "root": root, "ckpt": next(root.rglob("*.ckpt"))}


def test_map_statistics_are_the_training_images_residual_covariance_and_term_means(
    fitted: dict[str, Any], tiny_dataset: Path
) -> None:
    from torchvision.io import read_image

    model: MFRNetModel = fitted["model"].model.cpu().eval()
    assert bool(model.map_stats_ready)
    assert model.whiten_residual
    files = sorted((tiny_dataset / "washer" / "train" / "good").glob("*.png"))
    images = torch.stack([read_image(str(f)).float() / 255 for f in files])
    num_k, channels = len(model.cell_sizes), model.num_channels
    with torch.no_grad():
        features = model.aggregator(images)
        repeated, restored = model.test_restorations(features)
        residual = (repeated - restored).double().view(num_k, -1, channels, *features.shape[-2:])
        vectors = residual.permute(0, 1, 3, 4, 2).reshape(num_k, -1, channels)
        covariance = (vectors.transpose(1, 2) @ vectors / vectors.shape[1]).mean(dim=0)
        terms = model.discrepancy_terms(features)
    # the whitener inverts the (ridged) residual covariance: W Wᵀ (Σ + ridge I) = I
    ridge = WHITEN_RIDGE * torch.trace(covariance) / channels
    whitener = model.residual_whitener.double()
    identity = whitener @ whitener.T @ (covariance + ridge * torch.eye(channels, dtype=torch.float64))
    torch.testing.assert_close(identity, torch.eye(channels, dtype=torch.float64), rtol=0, atol=1e-3)
    assert not torch.allclose(whitener, torch.eye(channels, dtype=torch.float64))
    # map_scale holds each k's mean of both (whitened squared error, 1 - SSIM) terms on those images
    torch.testing.assert_close(model.map_scale, terms.mean(dim=(1, 3, 4)), rtol=1e-3, atol=1e-6)
    state = torch.load(fitted["ckpt"], map_location="cpu", weights_only=False)["state_dict"]
    torch.testing.assert_close(state["model.map_scale"], model.map_scale)
    torch.testing.assert_close(state["model.residual_whitener"], model.residual_whitener)
    # the map: each term divided by its mean, weighted by λ_pix and λ_ssim, summed, averaged over k
    weights = torch.tensor([model.loss.lambda_pix, model.loss.lambda_ssim]).view(1, 1, 2, 1, 1)
    with torch.no_grad():
        out = model(images[:2])
        combined = (terms[:, :2] / model.map_scale.view(num_k, 1, 2, 1, 1) * weights).sum(dim=2).mean(dim=0)
        expected_map, _ = model.anomaly_map_generator(combined, (TINY_IMAGE, TINY_IMAGE))
    torch.testing.assert_close(out.anomaly_map, expected_map)


def test_checkpoint_from_before_the_test_grid_scores_with_the_aligned_grid(
    fitted: dict[str, Any], tiny_dataset: Path, tmp_path: Path
) -> None:
    """Its map statistics were fitted under the aligned test split, so it keeps scoring with that split."""
    checkpoint = torch.load(fitted["ckpt"], map_location="cpu", weights_only=False)
    assert GridPhase(checkpoint["hyper_parameters"].pop("test_grid")) is GridPhase.SHIFTED
    path = tmp_path / "before_test_grid.ckpt"
    torch.save(checkpoint, path)
    assert MFRNet.load_from_checkpoint(path).model.test_grid is GridPhase.ALIGNED
    model = tiny_mfrnet()  # built from today's defaults, as ``anomalib test --ckpt_path`` does
    _engine(tmp_path / "test").test(model=model, datamodule=_datamodule(tiny_dataset), ckpt_path=path)
    assert model.model.test_grid is GridPhase.ALIGNED
    current = tiny_mfrnet(test_grid="average")  # a current checkpoint: its own grid wins as well
    _engine(tmp_path / "test2").test(model=current, datamodule=_datamodule(tiny_dataset), ckpt_path=fitted["ckpt"])
    assert current.model.test_grid is GridPhase.SHIFTED


def test_training_features_come_from_the_cache_after_the_first_epoch(fitted: dict[str, Any]) -> None:
    model: MFRNet = fitted["model"]
    assert len(model.feature_cache.features) == 8
    path, cached = next(iter(model.feature_cache.features.items()))
    from torchvision.io import read_image

    image = read_image(path).float().unsqueeze(0) / 255
    with torch.no_grad():
        fresh = model.model.aggregator.cpu()(image)[0]
    torch.testing.assert_close(cached.cpu(), fresh, rtol=1e-4, atol=1e-4)


def test_no_cache_with_augmentations(tiny_dataset: Path, tmp_path: Path) -> None:
    from torchvision.transforms.v2 import RandomHorizontalFlip

    model = tiny_mfrnet()
    datamodule = MVTecAD(
        root=tiny_dataset,
        category="washer",
        train_batch_size=4,
        eval_batch_size=4,
        num_workers=0,
        train_augmentations=RandomHorizontalFlip(),
    )
    _engine(tmp_path, max_epochs=1).fit(model=model, datamodule=datamodule)
    assert not model.feature_cache.features


# ------------------------------------------------------------------ checkpoints of the first release
def _first_release_checkpoint(tmp_path: Path, tiny_dataset: Path) -> tuple[Path, MFRNet]:
    """A checkpoint exactly as the first release wrote it: its hyper-parameters and state-dict keys only."""
    legacy = {
        **TINY_MFRNET,
        "layers": list(LEGACY_LAYERS["tf_efficientnet_lite0"]),
        "feature_stride": 4,
        "partition": "random",
        "residual": False,
        "map_norm": "none",
        "whiten_residual": False,
        "lr_decay_at": 0.8,
        "patch_size": 4,
    }
    model = tiny_mfrnet(**legacy)
    engine = _engine(tmp_path / "old", max_epochs=1)
    engine.fit(model=model, datamodule=_datamodule(tiny_dataset))
    checkpoint = torch.load(next((tmp_path / "old").rglob("*.ckpt")), map_location="cpu", weights_only=False)
    hparams = checkpoint["hyper_parameters"]
    for key in ("partition", "residual", "inpaint_sigma", "map_norm", "warmup_fraction", "final_lr_ratio",
                "cache_features", "whiten_residual"):  # fmt: skip
        hparams.pop(key)
    hparams["layers"] = None  # the first release saved its defaults as None
    for key in ("model.map_scale", "model.map_stats_ready", "model.residual_whitener"):
        checkpoint["state_dict"].pop(key)
    path = tmp_path / "first_release.ckpt"
    torch.save(checkpoint, path)
    return path, model


def test_first_release_checkpoint_loads_unchanged(tiny_dataset: Path, tmp_path: Path) -> None:
    path, original = _first_release_checkpoint(tmp_path, tiny_dataset)
    reloaded = MFRNet.load_from_checkpoint(path).eval()
    assert reloaded.model.aggregator.layers == list(LEGACY_LAYERS["tf_efficientnet_lite0"])
    assert not reloaded.model.restorer.residual
    images = torch.rand(2, 3, TINY_IMAGE, TINY_IMAGE)
    with torch.no_grad():
        expected, actual = original.eval().model.cpu()(images), reloaded.model(images)
    assert torch.equal(actual.anomaly_map, expected.anomaly_map)


def test_incompatible_checkpoint_names_the_hyper_parameter(tiny_dataset: Path, tmp_path: Path) -> None:
    path, _ = _first_release_checkpoint(tmp_path, tiny_dataset)
    with pytest.raises(ValueError, match=r"(?s)layers: checkpoint \('blocks.1', 'blocks.2', 'blocks.4'\).*residual"):
        _engine(tmp_path / "test").test(model=tiny_mfrnet(), datamodule=_datamodule(tiny_dataset), ckpt_path=path)


def test_checkpoint_from_before_the_whitened_residual_scores_unchanged(tiny_dataset: Path, tmp_path: Path) -> None:
    """The second release stored one map scale per k and had no whitener: it loads and scores as it did."""
    model = tiny_mfrnet(whiten_residual=False)
    _engine(tmp_path / "run", max_epochs=1).fit(model=model, datamodule=_datamodule(tiny_dataset))
    checkpoint = torch.load(next((tmp_path / "run").rglob("*.ckpt")), map_location="cpu", weights_only=False)
    checkpoint["hyper_parameters"].pop("whiten_residual")
    state = checkpoint["state_dict"]
    state.pop("model.residual_whitener")
    state["model.map_scale"] = state["model.map_scale"][:, 0].clone()  # one scale per k, as that release saved
    path = tmp_path / "second_release.ckpt"
    torch.save(checkpoint, path)

    images = torch.rand(2, 3, TINY_IMAGE, TINY_IMAGE)
    original = model.model.cpu().eval()
    with torch.no_grad():
        scale = original.map_scale[:, :1].clone()
        # that release's map: (λ_pix · MSE + λ_ssim · (1 - SSIM)) / scale_k, averaged over k
        terms = original.discrepancy_terms(original.aggregator(images))
        weights = torch.tensor([original.loss.lambda_pix, original.loss.lambda_ssim]).view(1, 1, 2, 1, 1)
        expected = ((terms * weights).sum(dim=2) / scale.view(-1, 1, 1, 1)).mean(dim=0)
        expected_map, _ = original.anomaly_map_generator(expected, (TINY_IMAGE, TINY_IMAGE))
        reloaded = MFRNet.load_from_checkpoint(path).eval()  # today's default whiten_residual=True
        actual = reloaded.model(images).anomaly_map
    assert reloaded.model.whiten_residual
    assert torch.equal(reloaded.model.residual_whitener, torch.eye(reloaded.model.num_channels))
    torch.testing.assert_close(actual, expected_map)
