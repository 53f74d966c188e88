"""MFRNet building blocks: spec acceptance checks 1-4 and 8-9 (masks, recombination, loss, backbones, weights)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from kornia.losses import SSIMLoss
from kornia.metrics import ssim

from anomalib_crr.models.mfrnet import HybridLoss, MFRNetModel
from anomalib_crr.models.mfrnet.components import (
    LEGACY_LAYERS,
    MultiScaleFeatureAggregator,
    crossed_masks,
    fixed_masks,
    load_backbone_weights,
    structured_masks,
)
from anomalib_crr.models.mfrnet.components.masks import _cached_structured_masks

from .helpers import SHARED_WEIGHTS, TINY_MFRNET


def tiny_model(**overrides) -> MFRNetModel:
    kwargs = {**TINY_MFRNET, "image_size": (64, 64), **overrides}
    return MFRNetModel(**kwargs)


# ------------------------------------------------------------------ check 1: complementarity
@pytest.mark.parametrize("cell_size", [2, 4, 8, 16])
@pytest.mark.parametrize("num_masks", [2, 3, 4])
def test_crossed_masks_tile_the_map_cellwise_and_balanced(cell_size: int, num_masks: int) -> None:
    hidden = crossed_masks(3, (32, 48), cell_size, num_masks)
    assert hidden.shape == (3, num_masks, 32, 48)
    assert torch.equal(hidden.sum(dim=1), torch.ones(3, 32, 48))  # each position hidden in exactly one mask
    # constant on every k x k cell: equal to its own cell-subsampled, re-expanded version
    cells = hidden[..., ::cell_size, ::cell_size]
    assert torch.equal(cells.repeat_interleave(cell_size, 2).repeat_interleave(cell_size, 3), hidden)
    sizes = cells.sum(dim=(2, 3))  # cells per subset, per image
    assert int((sizes.amax(dim=1) - sizes.amin(dim=1)).max()) <= 1
    fraction = hidden.mean(dim=(2, 3))
    assert torch.allclose(fraction, torch.full_like(fraction, 1 / num_masks), atol=1 / cells[0, 0].numel() + 1e-6)


@pytest.mark.parametrize("cell_size", [1, 2, 4, 8])
@pytest.mark.parametrize("num_masks", [2, 3, 4])
@pytest.mark.parametrize("randomize", [True, False])
def test_structured_masks_tile_the_map_and_every_hidden_cell_has_visible_edge_neighbours(
    cell_size: int, num_masks: int, randomize: bool
) -> None:
    hidden = structured_masks(4, (24, 48), cell_size, num_masks, randomize=randomize)
    assert hidden.shape == (4, num_masks, 24, 48)
    assert torch.equal(hidden.sum(dim=1), torch.ones(4, 24, 48))  # complementary
    cells = hidden[..., ::cell_size, ::cell_size]
    assert torch.equal(cells.repeat_interleave(cell_size, 2).repeat_interleave(cell_size, 3), hidden)
    # no two edge-adjacent cells in the same subset: a hidden cell's four neighbours are visible in its copy
    assert not (cells[..., 1:, :] * cells[..., :-1, :]).any()
    assert not (cells[..., :, 1:] * cells[..., :, :-1]).any()
    fraction = cells.mean(dim=(2, 3))
    assert torch.allclose(fraction, torch.full_like(fraction, 1 / num_masks), atol=0.05)


def test_structured_training_partitions_vary_and_the_test_partition_is_the_plain_diagonal() -> None:
    torch.manual_seed(0)
    hidden = structured_masks(16, (8, 8), 1, 3)
    assert len({tuple(h.argmax(dim=0).flatten().tolist()) for h in hidden}) > 1  # offsets and directions vary
    fixed = structured_masks(2, (6, 6), 2, 3, randomize=False)
    rows, cols = torch.meshgrid(torch.arange(3), torch.arange(3), indexing="ij")
    assert torch.equal(fixed[0].argmax(dim=0)[::2, ::2], (rows + cols) % 3)
    assert torch.equal(fixed[0], fixed[1])


@pytest.mark.parametrize("offset", [1, 2, 3, (3, 0), (0, 2)])
def test_offset_structured_masks_tile_the_map_in_shifted_cells(offset: int | tuple[int, int]) -> None:
    cell, height, width = 4, 16, 24
    hidden = structured_masks(2, (height, width), cell, 3, randomize=False, offset=offset)
    assert hidden.shape == (2, 3, height, width)
    assert torch.equal(hidden.sum(dim=1), torch.ones(2, height, width))  # complementary
    rows, cols = (offset, offset) if isinstance(offset, int) else offset
    # extend the partial border cells to full ones: the shifted map is then constant on k x k cells
    pads = (cols, -(width + cols) % cell, rows, -(height + rows) % cell)
    padded = torch.nn.functional.pad(hidden, pads, mode="replicate")
    cells = padded[..., ::cell, ::cell]
    assert torch.equal(cells.repeat_interleave(cell, 2).repeat_interleave(cell, 3), padded)
    assert not (cells[..., 1:, :] * cells[..., :-1, :]).any()  # hidden cells keep visible edge neighbours
    assert not (cells[..., :, 1:] * cells[..., :, :-1]).any()
    aligned = structured_masks(1, (height, width), cell, 3, randomize=False)
    assert torch.equal(hidden[0, :, : height - rows, : width - cols], aligned[0, :, rows:, cols:])  # moved grid
    assert not torch.equal(hidden[0], aligned[0])


@pytest.mark.parametrize("offset", [-1, 4, (0, 4)])
def test_offset_outside_a_cell_is_rejected(offset: int | tuple[int, int]) -> None:
    with pytest.raises(ValueError, match=r"offset must be in \[0, cell_size=4\)"):
        structured_masks(1, (16, 16), 4, 3, randomize=False, offset=offset)


def test_test_grids_shifted_aligned_and_average() -> None:
    aligned, shifted = tiny_model(test_grid="aligned"), tiny_model()  # the default is shifted
    assert shifted.test_grid.value == "shifted"
    for k, plain, moved in zip(
        shifted.cell_sizes, aligned.test_masks((16, 16)), shifted.test_masks((16, 16)), strict=True
    ):
        assert plain.shape == moved.shape == (1, 3, 16, 16)
        half = k // 2
        assert torch.equal(moved[..., : 16 - half, : 16 - half], plain[..., half:, half:])
        assert not torch.equal(moved, plain)
    average = tiny_model(test_grid="average")
    assert average.num_test_phases == 4
    assert average.test_offsets(4) == [(2, 2), (0, 0), (2, 0), (0, 2)]
    assert all(m.shape == (4, 3, 16, 16) for m in average.test_masks((16, 16)))
    assert tiny_model(test_grid="average", partition="random").num_test_phases == 1  # random splits have no grid


def test_averaged_test_grid_scores_the_mean_of_its_phases() -> None:
    model = tiny_model(test_grid="average").eval()
    _perturb_restorer(model)
    features = torch.randn(2, model.num_channels, 16, 16)
    with torch.no_grad():
        terms = model.discrepancy_terms(features)
        assert terms.shape == (2, 2, 2, 16, 16)  # (K, B, 2, h, w)
        for index, k in enumerate(model.cell_sizes):
            phases = []
            for offset in model.test_offsets(k):
                hidden = model._offset_masks((16, 16), k, offset).expand(2, -1, -1, -1)
                phases.append(model.loss.per_term(features, model.restore(features, hidden)))
            torch.testing.assert_close(terms[index], torch.stack(phases).mean(dim=0))


def test_training_partitions_are_random_per_image_and_test_partitions_fixed() -> None:
    hidden = crossed_masks(4, (16, 16), 2, 3)
    assert not all(torch.equal(hidden[0], hidden[i]) for i in range(1, 4))
    assert torch.equal(fixed_masks((16, 16), 2, 3, seed=0), fixed_masks((16, 16), 2, 3, seed=0))
    assert not torch.equal(fixed_masks((16, 16), 2, 3, seed=0), fixed_masks((16, 16), 2, 3, seed=1))


def test_structured_test_split_is_built_once_per_feature_size_and_equals_the_uncached_split() -> None:
    model = tiny_model()
    _cached_structured_masks.cache_clear()
    first = model.test_masks((16, 16))
    second = model.test_masks((16, 16))
    for k, (a, b) in enumerate(zip(first, second, strict=True)):
        uncached = torch.cat(
            [
                structured_masks(1, (16, 16), model.cell_sizes[k], model.num_masks, randomize=False, offset=offset)
                for offset in model.test_offsets(model.cell_sizes[k])
            ]
        )
        assert torch.equal(a, uncached)
        assert torch.equal(a, b)
    info = _cached_structured_masks.cache_info()
    assert info.misses == sum(len(model.test_offsets(k)) for k in model.cell_sizes)
    assert info.hits == info.misses  # the second call built nothing
    model.test_masks((32, 16))  # another input size gets its own split
    assert _cached_structured_masks.cache_info().misses == 2 * info.misses


def test_test_split_of_a_symbolic_size_is_built_in_the_exported_graph() -> None:
    """``torch.export`` with a dynamic size gives a symbolic feature size, which cannot key the cache.

    Only the split is exported (a full model takes minutes to export with dynamic shapes on 2 CPU cores); the
    program must reproduce the eager split at a size it was not traced with.
    """
    model = tiny_model()

    class TestSplit(torch.nn.Module):
        def forward(self, features: torch.Tensor) -> torch.Tensor:
            return torch.cat(model.test_masks((features.shape[-2], features.shape[-1])))

    cells_h, cells_w = torch.export.Dim("cells_h", min=2, max=32), torch.export.Dim("cells_w", min=2, max=32)
    program = torch.export.export(
        TestSplit(), (torch.zeros(1, 1, 16, 16),), dynamic_shapes={"features": {2: 4 * cells_h, 3: 4 * cells_w}}
    )
    torch.testing.assert_close(program.module()(torch.zeros(1, 1, 24, 40)), torch.cat(model.test_masks((24, 40))))


# ------------------------------------------------------------------ checks 2 and 3: recombination, no leakage
class _CopyIndexRestorer(torch.nn.Module):
    """Returns, for copy ``i`` of each image, the constant ``i + 1`` (or the oracle features when given)."""

    def __init__(self, num_masks: int, oracle: torch.Tensor | None = None) -> None:
        super().__init__()
        self.num_masks, self.oracle = num_masks, oracle

    def forward(self, copies: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        del visible
        if self.oracle is not None:
            return self.oracle.repeat_interleave(self.num_masks, dim=0)
        index = torch.arange(copies.shape[0]) % self.num_masks + 1
        return index.view(-1, 1, 1, 1).float().expand_as(copies)


def test_oracle_restorer_recombines_exactly_and_each_position_comes_from_its_hiding_copy() -> None:
    model = tiny_model()
    features = torch.randn(2, model.num_channels, 16, 16)
    hidden = structured_masks(2, (16, 16), 4, 3)
    model.restorer = _CopyIndexRestorer(3, oracle=features)
    assert torch.equal(model.restore(features, hidden), features)
    model.restorer = _CopyIndexRestorer(3)
    restored = model.restore(features, hidden)
    expected = (hidden.argmax(dim=1) + 1).float().unsqueeze(1).expand_as(restored)
    assert torch.equal(restored, expected)


@pytest.mark.parametrize(("partition", "test_grid"), [("structured", "shifted"), ("structured", "aligned"),
                                                      ("random", "aligned")])  # fmt: skip
def test_changing_a_cell_does_not_change_its_own_restoration(partition: str, test_grid: str) -> None:
    model = tiny_model(partition=partition, test_grid=test_grid).eval()
    _perturb_restorer(model)  # away from the zero-initialised residual: the learned path must not leak either
    features = torch.randn(1, model.num_channels, 16, 16)
    hidden = model.test_masks((16, 16))[1]  # k = 4
    row, col = model.test_offsets(4)[0]
    cell = (..., slice(4 + row, 8 + row), slice(8 + col, 12 + col))  # one 4x4 cell of the test grid
    changed = features.clone()
    changed[cell] += 10.0
    with torch.no_grad():
        before, after = model.restore(features, hidden), model.restore(changed, hidden)
    torch.testing.assert_close(after[cell], before[cell], rtol=0, atol=1e-5)
    assert (after - before).abs().amax() > 1e-3  # the change does reach other cells (context is used)


def _perturb_restorer(model: MFRNetModel) -> None:
    with torch.no_grad():
        for parameter in model.restorer.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))


# ------------------------------------------------------------------ check 4: hybrid loss
@pytest.mark.parametrize(("lambda_pix", "lambda_ssim"), [(1.0, 1.0), (0.3, 2.0), (1.0, 0.0)])
def test_hybrid_loss_matches_independent_mse_and_ssim(lambda_pix: float, lambda_ssim: float) -> None:
    features = torch.randn(2, 5, 24, 24)
    restored = features + 0.3 * torch.randn_like(features)
    loss = HybridLoss(lambda_pix=lambda_pix, lambda_ssim=lambda_ssim)
    mse = torch.nn.functional.mse_loss(restored, features)
    structural = 1 - ssim(features, restored, window_size=11, max_val=1.0).mean()
    torch.testing.assert_close(loss(features, restored), lambda_pix * mse + lambda_ssim * structural)
    assert float(loss(features, features.clone())) == pytest.approx(0.0, abs=1e-6)
    assert loss.per_position(features, restored).shape == (2, 24, 24)


def test_ssim_term_is_twice_kornias_ssim_loss() -> None:
    features = torch.rand(2, 4, 32, 32)
    restored = 0.7 * features + 0.2  # positive, perfectly correlated, other contrast and luminance: 0 < SSIM < 1
    assert float(ssim(features, restored, 11).min()) >= 0  # kornia clamps 1 - SSIM to [0, 1]; stay where it is exact
    structural = HybridLoss(lambda_pix=0.0, lambda_ssim=1.0)(features, restored)
    torch.testing.assert_close(structural, 2 * SSIMLoss(window_size=11)(features, restored))


# ------------------------------------------------------------------ check 8: backbones and sizes
@pytest.mark.parametrize(("backbone", "channels"), [("vgg16", 1024), ("tf_efficientnet_lite0", 152), ("resnet18", 384)])
def test_default_layers_give_a_stride_8_grid_for_256_input(backbone: str, channels: int) -> None:
    aggregator = MultiScaleFeatureAggregator(backbone=backbone, pre_trained=False)
    with torch.no_grad():
        features = aggregator(torch.rand(1, 3, 256, 256))
    assert aggregator.layer_strides == (8, 16)
    assert aggregator.feature_stride == 8  # the finest selected layer's stride
    assert features.shape == (1, channels, 32, 32)


@pytest.mark.parametrize(("backbone", "channels"), [("vgg16", 896), ("tf_efficientnet_lite0", 176)])
def test_first_release_layers_at_stride_4_still_build(backbone: str, channels: int) -> None:
    aggregator = MultiScaleFeatureAggregator(
        backbone=backbone, layers=LEGACY_LAYERS[backbone], pre_trained=False, feature_stride=4
    )
    with torch.no_grad():
        features = aggregator(torch.rand(1, 3, 256, 256))
    assert features.shape == (1, channels, 64, 64)


def test_backbone_normalisation_follows_the_backbone() -> None:
    lite = MultiScaleFeatureAggregator(backbone="tf_efficientnet_lite0", pre_trained=False)
    resnet = MultiScaleFeatureAggregator(backbone="resnet18", pre_trained=False)
    assert lite.input_mean.flatten().tolist() == pytest.approx([0.5] * 3)
    assert lite.input_std.flatten().tolist() == pytest.approx([0.5] * 3)
    assert resnet.input_mean.flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])


def test_unknown_backbone_and_layer_are_named() -> None:
    with pytest.raises(ValueError, match="Unknown backbone 'vgg17'"):
        MultiScaleFeatureAggregator(backbone="vgg17", pre_trained=False)
    with pytest.raises(ValueError, match=r"no feature layer\(s\) \['layer9'\].*available"):
        MultiScaleFeatureAggregator(backbone="resnet18", layers=["layer1", "layer9"], pre_trained=False)
    with pytest.raises(ValueError, match="no default layer list"):
        MultiScaleFeatureAggregator(backbone="resnet34", pre_trained=False)
    assert MultiScaleFeatureAggregator(backbone="resnet34", layers=["layer1"], pre_trained=False).num_channels == 64


def test_sizes_not_divisible_by_cell_or_patch_size_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"80x80 input.*not divisible by mask_cell_size \[4\]"):
        tiny_model(image_size=(80, 80))  # 10x10 features: k=2 fits, k=4 does not
    with pytest.raises(ValueError, match="patch_size"):
        tiny_model(image_size=(80, 80), mask_cell_size=[2], patch_size=4)
    with pytest.raises(ValueError, match="not divisible by feature_stride 8"):
        tiny_model(image_size=(68, 68))
    # The message names the nearest sizes that tile (k = 4 cells of 8-pixel features: multiples of 32 here).
    with pytest.raises(ValueError, match=r'Nearest input sizes MFRNet takes: "\[64,64\]" or "\[96,96\]"'):
        tiny_model(image_size=(80, 80))
    model = tiny_model().eval()
    with pytest.raises(ValueError, match="not divisible by mask_cell_size"):
        model(torch.rand(1, 3, 48, 48))  # 6x6 features at run time


# ------------------------------------------------------------------ check 9: offline builds, weights files
@pytest.mark.skipif(not SHARED_WEIGHTS.is_file(), reason=f"shared weights not found at {SHARED_WEIGHTS}")
def test_offline_build_from_the_shared_efficientnet_weights() -> None:
    from safetensors.torch import load_file

    aggregator = MultiScaleFeatureAggregator(
        backbone="tf_efficientnet_lite0", pre_trained=False, weights_path=SHARED_WEIGHTS
    )
    expected = load_file(str(SHARED_WEIGHTS))
    loaded = aggregator.extractor.feature_extractor.state_dict()
    assert loaded.keys() <= expected.keys()
    assert all(torch.equal(loaded[key], expected[key]) for key in loaded)
    assert not any(p.requires_grad for p in aggregator.parameters())


@pytest.mark.skipif(not SHARED_WEIGHTS.is_file(), reason=f"shared weights not found at {SHARED_WEIGHTS}")
def test_weights_of_another_architecture_are_rejected() -> None:
    with pytest.raises(RuntimeError, match="do not match"):
        MultiScaleFeatureAggregator(backbone="resnet18", pre_trained=False, weights_path=SHARED_WEIGHTS)


def test_missing_weights_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors"):
        MultiScaleFeatureAggregator(backbone="resnet18", pre_trained=False, weights_path=missing)
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors"):
        load_backbone_weights(torch.nn.Linear(1, 1), missing)


def test_failed_download_says_how_to_run_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    with pytest.raises(RuntimeError, match=r"(?s)hf-hub:timm/resnet18.*weights_path.*pre_trained false"):
        MultiScaleFeatureAggregator(backbone="resnet18", pre_trained=True)
