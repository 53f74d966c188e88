# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""MFRNet's hybrid loss: pixel (MSE) + structural (1 - SSIM) discrepancy between features and restoration.

The paper uses one hybrid loss both to train and to score, so the same per-position discrepancy is
averaged into the training loss and kept as a map at test time.
"""

from __future__ import annotations

import torch
from kornia.metrics import ssim
from torch import nn


class HybridLoss(nn.Module):
    """``λ_pix · MSE(F, F̂) + λ_ssim · (1 − SSIM(F, F̂))``, SSIM per channel with an 11x11 Gaussian window (σ 1.5).

    Args:
        lambda_pix: Weight of the squared error.
        lambda_ssim: Weight of the structural term.
        window_size: Side of SSIM's Gaussian window (σ is fixed at 1.5 by kornia).
        data_range: Dynamic range ``L`` in SSIM's constants ``C1 = (0.01 L)²``, ``C2 = (0.03 L)²``; 1 suits
            z-scored features.
    """

    def __init__(
        self,
        lambda_pix: float = 1.0,
        lambda_ssim: float = 1.0,
        window_size: int = 11,
        data_range: float = 1.0,
    ) -> None:
        super().__init__()
        if window_size < 1 or window_size % 2 == 0:
            msg = f"SSIM window_size must be a positive odd number, got {window_size}"
            raise ValueError(msg)
        self.lambda_pix = lambda_pix
        self.lambda_ssim = lambda_ssim
        self.window_size = window_size
        self.data_range = data_range

    def per_position(self, features: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
        """Discrepancy at every feature position, averaged over channels: ``(B, H, W)``."""
        terms = self.per_term(features, restored)
        return self.lambda_pix * terms[:, 0] + self.lambda_ssim * terms[:, 1]

    def per_term(
        self,
        features: torch.Tensor,
        restored: torch.Tensor,
        whitener: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The two unweighted terms at every position, ``(B, 2, H, W)``: squared error and ``1 − SSIM``.

        Args:
            features: ``(B, C, H, W)``.
            restored: ``(B, C, H, W)``.
            whitener: Optional ``(C, C)`` matrix ``W`` with ``W Wᵀ = Σ⁻¹`` for the residual covariance ``Σ`` on
                normal images: the squared error becomes the Mahalanobis distance ``|Wᵀ(F − F̂)|² / C``. Channels
                whose restoration error is large on normal images too (texture) then weigh less than channels
                that normal context predicts well.
        """
        # Computed in float32 (autocast off): SSIM's variance terms cancel badly in half precision.
        device_type = features.device.type
        if torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type, enabled=False):
                return self.per_term(features.float(), restored.float(), whitener)
        features, restored = features.float(), restored.float()
        residual = features - restored
        if whitener is not None:
            residual = (residual.permute(0, 2, 3, 1) @ whitener.float()).permute(0, 3, 1, 2).contiguous()
        squared = residual.pow(2).mean(dim=1)
        if self.lambda_ssim:
            structural = 1.0 - ssim(features, restored, window_size=self.window_size, max_val=self.data_range)
            structural = structural.mean(dim=1)
        else:
            structural = torch.zeros_like(squared)
        return torch.stack([squared, structural], dim=1)

    def forward(self, features: torch.Tensor, restored: torch.Tensor) -> torch.Tensor:
        """Mean discrepancy over batch, channels and positions (the training loss)."""
        return self.per_position(features, restored).mean()
