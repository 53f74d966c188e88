# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Multi-scale feature aggregator: a frozen timm CNN, several layers resized to one grid and concatenated.

The paper only says "a pre-trained model" whose multi-level outputs are resized and concatenated
along channels (its reviews name VGG16). We resize every layer bilinearly to ``input / feature_stride``
and standardise each channel with statistics of the training set: VGG layers differ by orders of
magnitude in scale, so without it the loss (and the SSIM constants) would see only the largest layer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from enum import Enum
from pathlib import Path

import timm
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from anomalib_crr.models.components.cnn_backbone import (
    backbone_normalization,
    build_feature_extractor,
    check_feature_layers,
)

logger = logging.getLogger(__name__)

# Default layers per supported backbone (timm ``feature_info`` module names): the stride-8 and stride-16
# stages (PatchCore's layer2 + layer3). Measured on MVTec 3D-AD ``tire`` (model README, ablation table): a
# stride-4 stage is texture that not even its neighbours predict (its error alone ranks images below
# chance) and it forces a 4x larger grid; the stride-8 grid is the finest of these layers.
DEFAULT_LAYERS: dict[str, tuple[str, ...]] = {
    "vgg16": ("features.22", "features.29"),
    "tf_efficientnet_lite0": ("blocks.2", "blocks.4"),
    "resnet18": ("layer2", "layer3"),
    "wide_resnet50_2": ("layer2", "layer3"),
}
# The first release's defaults (strides 2/4/8 or 4/8/16 on a stride-4 grid): used to rebuild its checkpoints,
# whose hyper-parameters say ``layers=None``.
LEGACY_LAYERS: dict[str, tuple[str, ...]] = {
    "vgg16": ("features.8", "features.15", "features.22"),
    "tf_efficientnet_lite0": ("blocks.1", "blocks.2", "blocks.4"),
    "resnet18": ("layer1", "layer2", "layer3"),
    "wide_resnet50_2": ("layer1", "layer2", "layer3"),
}


class FeatureNorm(str, Enum):
    """How the concatenated features are standardised."""

    CHANNEL_ZSCORE = "channel_zscore"
    NONE = "none"


def backbone_layers(backbone: str, layers: Sequence[str] | None) -> list[str]:
    """Resolve and validate the layers to aggregate.

    Args:
        backbone: timm model name.
        layers: Explicit ``feature_info`` module names, or ``None`` for the backbone's default.

    Returns:
        The layer names, in the order given.

    Raises:
        ValueError: For an unknown timm model, a backbone without a default when ``layers`` is ``None``, or a
            layer that the backbone does not expose.
    """
    if not timm.is_model(backbone):
        msg = f"Unknown backbone {backbone!r}: not a timm model. Supported with default layers: {list(DEFAULT_LAYERS)}."
        raise ValueError(msg)
    if layers is None:
        if backbone not in DEFAULT_LAYERS:
            msg = (
                f"Backbone {backbone!r} has no default layer list; pass layers explicitly (timm feature_info module "
                f"names, e.g. ['layer1', 'layer2']). Backbones with defaults: {list(DEFAULT_LAYERS)}."
            )
            raise ValueError(msg)
        return list(DEFAULT_LAYERS[backbone])
    layers = list(layers)
    if not layers:
        msg = "layers must name at least one backbone layer"
        raise ValueError(msg)
    check_feature_layers(backbone, layers)
    return layers


class MultiScaleFeatureAggregator(nn.Module):
    """Frozen CNN → per-layer bilinear resize to ``input / feature_stride`` → channel concat → z-score.

    The input is expected in [0, 1]; the backbone's own normalisation is applied here, so the
    pre-processor only resizes and the exported model takes the same images as the Lightning module.

    Args:
        backbone: timm CNN name.
        layers: ``feature_info`` module names, or ``None`` for the backbone's default list.
        pre_trained: Download ImageNet weights.
        weights_path: Local weights file (overrides ``pre_trained``).
        feature_stride: Input pixels per feature position; ``None`` = the finest stride among ``layers`` (8 for the
            default layers: 32x32 features for a 256x256 image), so no layer is sampled finer than it was computed.
        feature_norm: ``"channel_zscore"`` (training-set statistics) or ``"none"``.
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        layers: Sequence[str] | None = None,
        pre_trained: bool = True,
        weights_path: str | Path | None = None,
        feature_stride: int | None = None,
        feature_norm: FeatureNorm | str = FeatureNorm.CHANNEL_ZSCORE,
    ) -> None:
        super().__init__()
        if feature_stride is not None and feature_stride < 1:
            msg = f"feature_stride must be >= 1 (or None for the finest layer stride), got {feature_stride}"
            raise ValueError(msg)
        self.layers = backbone_layers(backbone, layers)
        self.feature_norm = FeatureNorm(feature_norm)
        self.extractor = build_feature_extractor(backbone, self.layers, pre_trained, weights_path)
        self.layer_strides = tuple(int(r) for r in self.extractor.feature_extractor.feature_info.reduction())
        self.feature_stride = int(feature_stride) if feature_stride is not None else min(self.layer_strides)
        self.num_channels = int(sum(self.extractor.out_dims))
        mean, std = backbone_normalization(backbone)
        self.register_buffer("input_mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("input_std", torch.tensor(std).view(1, 3, 1, 1))
        # Training-set channel statistics; saved in checkpoints. ``stats_ready`` tells a fresh model from a fitted one.
        self.register_buffer("feature_mean", torch.zeros(self.num_channels))
        self.register_buffer("feature_std", torch.ones(self.num_channels))
        self.register_buffer("stats_ready", torch.tensor(False))

    def train(self, mode: bool = True) -> MultiScaleFeatureAggregator:
        """Keep the frozen backbone in eval mode whatever mode the model is put in."""
        super().train(mode)
        self.extractor.eval()
        return self

    def feature_size(self, height: int, width: int) -> tuple[int, int]:
        """Side lengths of the aggregated feature map for an ``height`` x ``width`` input."""
        return height // self.feature_stride, width // self.feature_stride

    def raw_features(self, images: torch.Tensor) -> torch.Tensor:
        """Concatenated multi-scale features before standardisation, ``(B, C, H/stride, W/stride)``."""
        size = self.feature_size(*images.shape[-2:])
        normalized = (images - self.input_mean) / self.input_std
        with torch.no_grad():
            features = self.extractor(normalized)
        resized = [
            F.interpolate(features[layer], size=size, mode="bilinear", align_corners=False) for layer in self.layers
        ]
        return torch.cat(resized, dim=1)

    def set_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store per-channel statistics (std is floored so dead channels do not blow up)."""
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp_min(1e-6))
        self.stats_ready.fill_(True)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Aggregated, standardised features ``(B, C, H/stride, W/stride)``."""
        features = self.raw_features(images)
        if self.feature_norm is FeatureNorm.CHANNEL_ZSCORE:
            features = (features - self.feature_mean.view(1, -1, 1, 1)) / self.feature_std.view(1, -1, 1, 1)
        return features
