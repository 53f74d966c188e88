# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Frozen timm CNN encoder for CRR: each target stage is one group ``E_g``, on one token grid.

CRR's mechanism (frozen encoder, masked noisy bottleneck, decoder that reconstructs and repairs, groups compared
by cosine distance, segmentation head on their discrepancy) does not need a ViT. With a CNN, each chosen stage of
the feature pyramid is one group, as in Reverse Distillation: its ``C_g`` channels are resized (area average when
the stage is finer than the grid, bilinear when coarser) to the grid ``input / token_stride``, so every group has
one vector per token. The bottleneck takes their concatenation; a linear head per group maps the decoder's output
back to ``C_g`` (:class:`GroupHeads`). The encoder side stays frozen and un-projected, so the targets cannot drift
toward the decoder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from anomalib_crr.models.components.cnn_backbone import (
    backbone_normalization,
    build_feature_extractor,
    check_feature_layers,
    feature_layers,
)

PRETRAINED = "pretrained"
# Default target stages: the stride-8 and stride-16 levels (PatchCore's layer2 + layer3 analogue; MFRNet's
# measured default on lite0). Other backbones name their layers explicitly (``target_layers``).
DEFAULT_CNN_LAYERS: dict[str, tuple[str, ...]] = {
    "tf_efficientnet_lite0": ("blocks.2", "blocks.4"),
    "resnet18": ("layer2", "layer3"),
    "wide_resnet50_2": ("layer2", "layer3"),
}


def is_cnn_encoder(encoder_name: str) -> bool:
    """Whether ``encoder_name`` is a timm model CRR uses as a CNN encoder (anything but a ViT)."""
    return timm.is_model(encoder_name) and not encoder_name.startswith(("vit_", "eva", "deit", "beit"))


def cnn_layers(encoder_name: str, target_layers: Sequence[str] | None) -> list[str]:
    """The target stages: the given ``feature_info`` module names, checked, or the backbone's default.

    Raises:
        ValueError: An unknown layer (the message lists the available ones), or no default for this backbone.
    """
    if target_layers is None:
        if encoder_name not in DEFAULT_CNN_LAYERS:
            available = [info["module"] for info in feature_layers(encoder_name)]
            msg = (
                f"CNN encoder {encoder_name!r} has no default target layers; pass target_layers "
                f"(timm feature_info names, e.g. {available[1:3]}; available: {available})"
            )
            raise ValueError(msg)
        return list(DEFAULT_CNN_LAYERS[encoder_name])
    layers = [str(layer) for layer in target_layers]
    if not layers:
        msg = "target_layers must name at least one CNN stage"
        raise ValueError(msg)
    check_feature_layers(encoder_name, layers)
    return layers


def cnn_token_stride(layer_strides: Sequence[int], token_stride: int | None) -> int:
    """The grid's stride: ``token_stride``, or the finest layer stride; a finer stage must pool by a whole factor.

    Raises:
        ValueError: A stride below 1, or one that a finer stage's stride does not divide.
    """
    stride = int(token_stride) if token_stride is not None else min(layer_strides)
    if stride < 1 or any(s < stride and stride % s for s in layer_strides):
        msg = (
            f"token_stride={token_stride} must be a positive multiple of every finer target layer's stride "
            f"(layer strides: {list(layer_strides)})"
        )
        raise ValueError(msg)
    return stride


def cnn_input_multiple(encoder_name: str, target_layers: Sequence[str] | None, token_stride: int | None) -> int:
    """The side every input must be a multiple of: the coarsest stage's stride and the token stride."""
    info = {entry["module"]: entry for entry in feature_layers(encoder_name)}
    strides = [int(info[layer]["reduction"]) for layer in cnn_layers(encoder_name, target_layers)]
    return math.lcm(max(strides), cnn_token_stride(strides, token_stride))


class CnnGroupEncoder(nn.Module):
    """Frozen timm CNN → target stages resized to the ``input / token_stride`` grid, one group each.

    Args:
        encoder_name: timm CNN name (``tf_efficientnet_lite0``, ``resnet18``, ...).
        encoder_weights: ``"pretrained"`` (timm download), a local timm-format file, or ``None`` (random init).
        target_layers: ``feature_info`` module names, shallow to deep; ``None``: the backbone's default.
        token_stride: Input pixels per token; ``None``: the finest stride among the target layers.
    """

    def __init__(
        self,
        encoder_name: str,
        encoder_weights: str | Path | None,
        target_layers: Sequence[str] | None = None,
        token_stride: int | None = None,
    ) -> None:
        super().__init__()
        self.layers = cnn_layers(encoder_name, target_layers)
        download = isinstance(encoder_weights, str) and encoder_weights == PRETRAINED
        self.extractor = build_feature_extractor(
            encoder_name, self.layers, pre_trained=download, weights_path=None if download else encoder_weights
        )
        info = {entry["module"]: entry for entry in feature_layers(encoder_name)}
        self.group_channels = [int(info[layer]["num_chs"]) for layer in self.layers]
        self.layer_strides = [int(info[layer]["reduction"]) for layer in self.layers]
        self.token_stride = cnn_token_stride(self.layer_strides, token_stride)
        # Inputs must tile into the coarsest stage and the token grid, so every stage maps onto whole tokens.
        self.patch_size = math.lcm(max(self.layer_strides), self.token_stride)
        self.num_prefix_tokens = 0
        self.embed_dim = sum(self.group_channels)
        mean, std = backbone_normalization(encoder_name)
        self.register_buffer("image_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        for param in self.parameters():
            param.requires_grad = False

    def train(self, mode: bool = True) -> CnnGroupEncoder:
        """Stay in eval mode (frozen BatchNorm statistics) whatever mode the model is put in."""
        del mode
        return super().train(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Normalised images (B, 3, H, W) → one map per target stage, (B, C_g, H/token_stride, W/token_stride)."""
        grid = (images.shape[-2] // self.token_stride, images.shape[-1] // self.token_stride)
        with torch.no_grad():
            features = self.extractor(images)
        maps = []
        for layer, stride in zip(self.layers, self.layer_strides, strict=True):
            feature = features[layer]
            if stride < self.token_stride:  # an exact average over whole cells (exportable, unlike adaptive pooling)
                factor = self.token_stride // stride
                feature = F.avg_pool2d(feature, kernel_size=factor, stride=factor)
            elif stride > self.token_stride:
                feature = F.interpolate(feature, size=grid, mode="bilinear", align_corners=False)
            maps.append(feature)
        return maps


class GroupHeads(nn.Module):
    """One trainable linear map per group, from the decoder's width back to the group's channels (``D_g``)."""

    def __init__(self, decoder_dim: int, group_channels: Sequence[int]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(decoder_dim, channels) for channels in group_channels)

    def forward(self, group_tokens: list[torch.Tensor]) -> list[torch.Tensor]:
        """Per group: decoder tokens (B, N, decoder_dim) → (B, N, C_g)."""
        return [head(tokens) for head, tokens in zip(self.heads, group_tokens, strict=True)]
