# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Masked noisy bottleneck: element-wise feature masking in front of Dinomaly's dropout MLP.

CRR zeroes a random 40 % of the fused encoder features (per batch element, token and channel, no
rescaling) before the bottleneck MLP, so the decoder must restore features from partial local
information instead of copying them. The official code leaves the random mask on at inference,
which makes scores stochastic; ``mask_at_inference`` makes that choice explicit.
"""

from __future__ import annotations

from enum import Enum

import torch
from anomalib.models.image.dinomaly.components import DinomalyMLP
from torch import nn


class MaskAtInference(str, Enum):
    """What the feature mask does when the bottleneck is in eval mode.

    * ``EXPECTATION``: multiply by ``1 - mask_ratio``, the mask's expected value (deterministic, exportable).
    * ``RANDOM``: sample a fresh Bernoulli mask, as the official code does.
    * ``OFF``: pass features unmasked (changes their scale by ``1 / (1 - mask_ratio)`` w.r.t. training).
    """

    EXPECTATION = "expectation"
    RANDOM = "random"
    OFF = "off"


class MaskGranularity(str, Enum):
    """Unit that the training mask drops: single feature elements (official) or whole tokens."""

    ELEMENT = "element"
    TOKEN = "token"


class MaskedNoisyBottleneck(nn.Module):
    """Bernoulli feature mask followed by ``DinomalyMLP`` with input dropout.

    Args:
        dim: Token dimension.
        hidden_dim: Hidden width of the MLP.
        dropout: Dropout on the MLP input, after the activation and after the output layer.
        mask_ratio: Fraction ``λ`` of masked elements during training.
        mask_at_inference: Eval-mode behaviour of the mask, see :class:`MaskAtInference`.
        granularity: Masked unit, see :class:`MaskGranularity`.
        out_dim: Output width (``None``: ``dim``). A CNN encoder's concatenated stages (``dim``) feed a decoder of
            another width; the ViT path keeps ``dim``.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        dropout: float = 0.4,
        mask_ratio: float = 0.4,
        mask_at_inference: MaskAtInference | str = MaskAtInference.EXPECTATION,
        granularity: MaskGranularity | str = MaskGranularity.ELEMENT,
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            msg = f"mask_ratio must be in [0, 1), got {mask_ratio}"
            raise ValueError(msg)
        self.mask_ratio = mask_ratio
        self.mask_at_inference = MaskAtInference(mask_at_inference)
        self.granularity = MaskGranularity(granularity)
        self.mlp = DinomalyMLP(
            in_features=dim,
            hidden_features=hidden_dim,
            out_features=out_dim or dim,
            act_layer=nn.GELU,
            drop=dropout,
            bias=True,
            apply_input_dropout=True,
        )

    def random_mask(self, features: torch.Tensor) -> torch.Tensor:
        """Sample the keep-mask ``M = 1[u <= 1 - λ]`` with the shape the granularity asks for."""
        shape = features.shape if self.granularity == MaskGranularity.ELEMENT else (*features.shape[:-1], 1)
        uniform = torch.rand(shape, device=features.device, dtype=features.dtype)
        return (uniform <= 1.0 - self.mask_ratio).to(features.dtype)

    def apply_mask(self, features: torch.Tensor) -> torch.Tensor:
        """Mask ``features`` (B, N, C) according to the current mode; kept elements are not rescaled."""
        if self.mask_ratio == 0.0:
            return features
        if self.training or self.mask_at_inference == MaskAtInference.RANDOM:
            return features * self.random_mask(features)
        if self.mask_at_inference == MaskAtInference.EXPECTATION:
            return features * (1.0 - self.mask_ratio)
        return features

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Mask the fused tokens and run the bottleneck MLP."""
        return self.mlp(self.apply_mask(features))
