# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""PyTorch model of MFRNet: aggregated CNN features, crossed masks, parallel restorations, hybrid discrepancy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from anomalib.data import InferenceBatch
from torch import nn

from .anomaly_map import AnomalyMapGenerator, ScoreMode
from .components import (
    FeatureNorm,
    MfrRestorer,
    MultiScaleFeatureAggregator,
    check_divisible,
    crossed_masks,
    fixed_masks,
)
from .loss import HybridLoss


def as_cell_sizes(mask_cell_size: int | Sequence[int]) -> tuple[int, ...]:
    """Normalise ``mask_cell_size`` to a non-empty tuple of positive ints."""
    sizes = (mask_cell_size,) if isinstance(mask_cell_size, int) else tuple(int(k) for k in mask_cell_size)
    if not sizes or any(k < 1 for k in sizes):
        msg = f"mask_cell_size must be a positive int or a non-empty list of them, got {mask_cell_size!r}"
        raise ValueError(msg)
    return sizes


class MFRNetModel(nn.Module):
    """MFRNet: restore every feature position from context and score the hybrid discrepancy.

    Args:
        backbone: timm CNN (``vgg16`` default; ``tf_efficientnet_lite0``, ``resnet18``, ``wide_resnet50_2`` have
            default layers; others need ``layers``).
        layers: timm ``feature_info`` module names to aggregate.
        pre_trained: Download ImageNet weights for the backbone.
        weights_path: Local timm-format backbone weights (overrides ``pre_trained``).
        feature_stride: Input pixels per feature position.
        feature_norm: ``"channel_zscore"`` or ``"none"``.
        mask_cell_size: Cell side(s) ``k`` in feature positions; training samples one per batch, test averages all.
        num_masks: Number ``n`` of complementary masks.
        mask_seed: Seed of the fixed test partitions.
        image_size: Input size the pre-processor produces; validated here, so a size that does not tile fails early.
        stem_dim: Restorer stem/head width ``d``.
        embed_dim: Restorer transformer width ``D``.
        depth: Number of hybrid blocks ``L``.
        num_heads: Attention heads.
        mlp_ratio: Feed-forward expansion.
        patch_size: Restorer token size ``p`` in feature positions.
        lambda_pix: Weight of the MSE term.
        lambda_ssim: Weight of the (1 − SSIM) term.
        ssim_window: SSIM Gaussian window size.
        ssim_data_range: SSIM dynamic range ``L``.
        blur_sigma: σ of the Gaussian on the upsampled map (0: none).
        score_mode: ``"max"`` or ``"top1_mean"``.
    """

    def __init__(
        self,
        backbone: str = "vgg16",
        layers: Sequence[str] | None = None,
        pre_trained: bool = True,
        weights_path: str | Path | None = None,
        feature_stride: int = 4,
        feature_norm: FeatureNorm | str = FeatureNorm.CHANNEL_ZSCORE,
        mask_cell_size: int | Sequence[int] = (2, 4, 8),
        num_masks: int = 3,
        mask_seed: int = 0,
        image_size: tuple[int, int] = (256, 256),
        stem_dim: int = 256,
        embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        patch_size: int = 4,
        lambda_pix: float = 1.0,
        lambda_ssim: float = 1.0,
        ssim_window: int = 11,
        ssim_data_range: float = 1.0,
        blur_sigma: float = 4.0,
        score_mode: ScoreMode | str = ScoreMode.MAX,
    ) -> None:
        super().__init__()
        if num_masks < 2:
            msg = f"num_masks must be >= 2 (one mask hides everything), got {num_masks}"
            raise ValueError(msg)
        self.cell_sizes = as_cell_sizes(mask_cell_size)
        self.num_masks = num_masks
        self.mask_seed = mask_seed
        self.patch_size = patch_size
        self.aggregator = MultiScaleFeatureAggregator(
            backbone=backbone,
            layers=layers,
            pre_trained=pre_trained,
            weights_path=weights_path,
            feature_stride=feature_stride,
            feature_norm=feature_norm,
        )
        self.check_input_size(tuple(image_size))
        self.restorer = MfrRestorer(
            in_channels=self.aggregator.num_channels,
            stem_dim=stem_dim,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            patch_size=patch_size,
        )
        self.loss = HybridLoss(lambda_pix, lambda_ssim, window_size=ssim_window, data_range=ssim_data_range)
        self.anomaly_map_generator = AnomalyMapGenerator(sigma=blur_sigma, score_mode=score_mode)

    @property
    def num_channels(self) -> int:
        """Channels ``C`` of the aggregated features."""
        return self.aggregator.num_channels

    def check_input_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Validate that an input size tiles into feature strides, mask cells and restorer patches.

        Returns:
            The feature-map size.

        Raises:
            ValueError: Naming the size and what it must be divisible by.
        """
        stride = self.aggregator.feature_stride
        if image_size[0] % stride or image_size[1] % stride:
            msg = (
                f"Input size {image_size[0]}x{image_size[1]} is not divisible by feature_stride {stride}; "
                "MFRNet needs e.g. 256x256."
            )
            raise ValueError(msg)
        feature_size = self.aggregator.feature_size(*image_size)
        check_divisible(feature_size, self.cell_sizes, what=f"feature map of a {image_size[0]}x{image_size[1]} input")
        check_divisible(feature_size, (self.patch_size,), what="feature map (restorer patch_size)")
        return feature_size

    def test_masks(self, feature_size: tuple[int, int]) -> list[torch.Tensor]:
        """Hidden masks of the fixed test partitions, one ``(1, n, h, w)`` tensor per cell size (cached, CPU)."""
        return [fixed_masks(feature_size, k, self.num_masks, self.mask_seed) for k in self.cell_sizes]

    def restore(self, features: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Parallel restorations recombined: ``F̂ = Σ_i R([F ⊙ M_i; M_i]) ⊙ (1 − M_i)``.

        Args:
            features: ``(B, C, h, w)``.
            hidden: ``(B, n, h, w)``, 1 where copy ``i`` hides the position (the masks tile the map).

        Returns:
            ``(B, C, h, w)``: each position comes from the one copy that did not see it.
        """
        batch, num_masks = hidden.shape[:2]
        visible = (1.0 - hidden).to(features.dtype).unsqueeze(2)  # (B, n, 1, h, w)
        copies = (features.unsqueeze(1) * visible).flatten(0, 1)
        restored = self.restorer(copies, visible.flatten(0, 1)).view(batch, num_masks, *features.shape[1:])
        return (restored * hidden.to(restored.dtype).unsqueeze(2)).sum(dim=1)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | InferenceBatch:
        """Training: ``(features, restored)`` for the loss, with random masks. Eval: ``InferenceBatch``.

        In training, one cell size is drawn per batch and every image gets its own random partition.
        """
        image_size = (images.shape[-2], images.shape[-1])
        feature_size = self.check_input_size(image_size)
        features = self.aggregator(images)
        if self.training:
            choice = int(torch.randint(len(self.cell_sizes), (1,)).item())
            hidden = crossed_masks(
                images.shape[0], feature_size, self.cell_sizes[choice], self.num_masks, device=images.device
            )
            return features, self.restore(features, hidden)

        discrepancy = torch.zeros(features.shape[0], *feature_size, device=images.device)
        for masks in self.test_masks(feature_size):
            hidden = masks.to(images.device).expand(features.shape[0], -1, -1, -1)
            discrepancy = discrepancy + self.loss.per_position(features, self.restore(features, hidden))
        discrepancy = discrepancy / len(self.cell_sizes)
        anomaly_map, pred_score = self.anomaly_map_generator(discrepancy, image_size)
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)
