"""Unit tests of CRR's torch model: acceptance checks 2-5 and 7 of the CRR spec."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from anomalib_crr.models.crr import CrrModel
from anomalib_crr.models.crr.components import CrrSegHead, MaskedNoisyBottleneck

from .helpers import TINY_CROP, tiny_crr_model


def _gaussian_blur_reference(image: torch.Tensor, sigma: float = 4.0, size: int = 5) -> torch.Tensor:
    """5x5 normalised Gaussian with reflect padding, written out independently of anomalib/kornia."""
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    kernel_1d = torch.exp(-(coords**2) / (2 * sigma**2))
    kernel_1d /= kernel_1d.sum()
    kernel = torch.outer(kernel_1d, kernel_1d).to(image.dtype)[None, None]
    padded = F.pad(image, (size // 2,) * 4, mode="reflect")
    return F.conv2d(padded, kernel)


# ---------------------------------------------------------------- check 2: deterministic eval
def test_expectation_mode_is_deterministic_and_scales_by_one_minus_lambda() -> None:
    model = tiny_crr_model(mask_at_inference="expectation").eval()
    model.mark_seg_head_trained()
    images = torch.rand(2, 3, TINY_CROP, TINY_CROP)
    captured: list[torch.Tensor] = []
    handle = model.bottleneck.mlp.register_forward_pre_hook(lambda _m, args: captured.append(args[0].clone()))
    with torch.no_grad():
        first, second = model(images), model(images)
    handle.remove()
    assert torch.equal(first.pred_score, second.pred_score)
    assert torch.equal(first.anomaly_map, second.anomaly_map)
    with torch.no_grad():
        fused = torch.stack(model.encode(images), dim=1).mean(dim=1)
    torch.testing.assert_close(captured[0], (1 - 0.4) * fused)


def test_random_mode_varies_with_rng_and_repeats_under_seed() -> None:
    model = tiny_crr_model(mask_at_inference="random").eval()
    images = torch.rand(2, 3, TINY_CROP, TINY_CROP)
    with torch.no_grad():
        torch.manual_seed(1)
        a = model(images).pred_score
        b = model(images).pred_score
        torch.manual_seed(1)
        c = model(images).pred_score
    assert not torch.equal(a, b)
    assert torch.equal(a, c)


def test_off_mode_passes_features_unmasked() -> None:
    bottleneck = MaskedNoisyBottleneck(dim=8, hidden_dim=16, mask_at_inference="off").eval()
    features = torch.randn(2, 5, 8)
    assert torch.equal(bottleneck.apply_mask(features), features)


# ---------------------------------------------------------------- check 3: training mask
@pytest.mark.parametrize("granularity", ["element", "token"])
def test_training_mask_shape_fraction_and_no_rescale(granularity: str) -> None:
    bottleneck = MaskedNoisyBottleneck(dim=64, hidden_dim=128, mask_ratio=0.4, granularity=granularity).train()
    features = torch.rand(4, 789, 64) + 0.5  # strictly positive, so zeros are masked elements
    masked = bottleneck.apply_mask(features)
    assert masked.shape == features.shape == (4, 789, 64)
    zeroed = masked == 0
    assert abs(zeroed.float().mean().item() - 0.4) < 0.02
    kept = ~zeroed
    assert torch.equal(masked[kept], features[kept])
    if granularity == "token":
        per_token = zeroed.float().mean(dim=-1)
        assert torch.all((per_token == 0) | (per_token == 1))


# ---------------------------------------------------------------- check 4 and 5: fused map and score
@pytest.mark.parametrize("alpha", [0.7, 1.0, 0.0])
def test_fused_map_equals_independent_computation(alpha: float) -> None:
    model = tiny_crr_model(fusion_alpha=alpha, seg_output_size=32).eval()
    model.mark_seg_head_trained()
    images = torch.rand(2, 3, TINY_CROP, TINY_CROP)
    with torch.no_grad():
        output = model(images)
        encoder_maps, decoder_maps = model.extract_features(images)
        rec = torch.stack(
            [
                F.interpolate(
                    (1 - F.cosine_similarity(e, d, dim=1))[:, None], size=(32, 32), mode="bilinear", align_corners=True
                )
                for e, d in zip(encoder_maps, decoder_maps, strict=True)
            ]
        ).mean(0)
        seg_in = torch.cat(
            [
                -F.normalize(e, dim=1, eps=1e-12) * F.normalize(d, dim=1, eps=1e-12)
                for e, d in zip(encoder_maps, decoder_maps, strict=True)
            ],
            dim=1,
        )
        seg = torch.softmax(model.seg_head(seg_in), dim=1)[:, 1:2]
    expected = _gaussian_blur_reference(alpha * rec + (1 - alpha) * seg)
    expected_map = F.interpolate(expected, size=(TINY_CROP, TINY_CROP), mode="bilinear", align_corners=False)
    torch.testing.assert_close(output.anomaly_map, expected_map, rtol=1e-4, atol=1e-5)
    k = int(0.01 * 32 * 32)
    torch.testing.assert_close(
        output.pred_score, expected.flatten(1).sort(dim=1, descending=True).values[:, :k].mean(1)
    )


def test_reconstruction_only_before_stage_two() -> None:
    model = tiny_crr_model(fusion_alpha=0.7).eval()
    images = torch.rand(1, 3, TINY_CROP, TINY_CROP)
    with torch.no_grad():
        before = model(images).pred_score
        model.fusion_alpha = 1.0
        rec_only = model(images).pred_score
    torch.testing.assert_close(before, rec_only)


def test_score_is_mean_of_top_one_percent_of_256_map() -> None:
    model = tiny_crr_model(seg_output_size=256)
    smoothed = torch.rand(3, 1, 256, 256)
    expected = smoothed.flatten(1).sort(dim=1, descending=True).values[:, :655].mean(dim=1)
    assert int(0.01 * 256 * 256) == 655
    torch.testing.assert_close(model.score(smoothed), expected)


def test_anomaly_map_has_input_size_for_non_square_input() -> None:
    model = tiny_crr_model().eval()
    with torch.no_grad():
        output = model(torch.rand(1, 3, 42, 70))
    assert output.anomaly_map.shape == (1, 1, 42, 70)
    assert output.pred_score.shape == (1,)


# ---------------------------------------------------------------- check 7: paper-size shapes and seg input
def test_vit_base_392_shapes_parameter_counts_and_seg_input_sums() -> None:
    model = CrrModel(encoder_weights=None, seg_base_width=192).eval()
    assert sum(p.numel() for p in model.bottleneck.parameters()) == 4_722_432
    assert math.isclose(sum(p.numel() for p in model.decoder.parameters()) / 1e6, 56.70, abs_tol=0.01)
    assert math.isclose(sum(p.numel() for p in model.seg_head.parameters()) / 1e6, 70.44, abs_tol=0.01)
    images = torch.rand(1, 3, 392, 392)
    with torch.no_grad():
        tokens = model.encode(images)
        assert len(tokens) == 8
        assert all(t.shape == (1, 789, 768) for t in tokens)
        encoder_maps, decoder_maps = model.extract_features(images)
        assert [m.shape for m in encoder_maps] == [(1, 768, 28, 28)] * 2
        assert [m.shape for m in decoder_maps] == [(1, 768, 28, 28)] * 2
        seg_input = model.segmentation_input(encoder_maps, decoder_maps)
    assert seg_input.shape == (1, 1536, 28, 28)
    for group, (e, d) in enumerate(zip(encoder_maps, decoder_maps, strict=True)):
        channel_sum = seg_input[:, group * 768 : (group + 1) * 768].sum(dim=1)
        torch.testing.assert_close(channel_sum, -F.cosine_similarity(e, d, dim=1), rtol=1e-4, atol=1e-5)


def test_seg_head_outputs_two_channels_at_256() -> None:
    head = CrrSegHead(in_channels=1536, base_width=8, output_size=256).eval()
    with torch.no_grad():
        logits = head(torch.randn(1, 1536, 4, 4))
    assert logits.shape == (1, 2, 256, 256)


def test_encoder_is_frozen_and_pruned_after_the_deepest_target_layer() -> None:
    model = tiny_crr_model(target_layers=[1, 3], fuse_layer_encoder=[[0], [1]])
    assert len(model.encoder.feature_extractor.blocks) == 4
    assert not any(p.requires_grad for p in model.encoder.parameters())
