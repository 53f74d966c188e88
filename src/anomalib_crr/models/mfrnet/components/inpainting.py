# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Parameter-free visible-neighbour inpainting: a Gaussian-weighted mean of the visible feature vectors.

``inpaint(F, M) = G * (F ⊙ M) / G * M`` (normalised convolution). A hidden position never contributes,
because ``F ⊙ M`` is zero there and ``M`` gives it zero weight. On frozen CNN features this guess is
already a strong restoration of normal texture, so MFRNet's restorer learns a *residual* on top of it
(its last layer starts at zero): training can only start from this baseline, never from an output of 0,
which scores nothing but the feature magnitude.
"""

from __future__ import annotations

import torch
from torch import nn


def gaussian_band_matrix(size: int, sigma: float, like: torch.Tensor) -> torch.Tensor:
    """``(size, size)`` Gaussian weights ``exp(-d²/2σ²)`` for ``|d| <= ⌊4σ + 0.5⌋``, 0 beyond (and off the map).

    ``W_h @ X @ W_wᵀ`` is a separable Gaussian convolution with zero padding, computed as two matrix products:
    on a CPU that is ~10x faster than ``conv2d`` over ``N·C`` single-channel maps, and it exports to ONNX as
    plain ``MatMul``. The weights are not normalised: the normalised convolution divides it out.
    """
    index = torch.arange(size, device=like.device, dtype=like.dtype)
    distance = index.view(-1, 1) - index.view(1, -1)
    radius = int(4.0 * sigma + 0.5)
    return torch.exp(-0.5 * (distance / sigma) ** 2) * (distance.abs() <= radius).to(like.dtype)


class VisibleNeighbourInpainting(nn.Module):
    """Fill hidden positions with the Gaussian-weighted mean of the visible ones.

    Args:
        sigma: Gaussian σ in feature positions. It should reach across one mask cell (σ ≈ cell size / 2).
        eps: Floor of the visible weight, so a position with no visible neighbour in reach gives 0 (the
            z-scored mean) instead of a division by zero.
    """

    def __init__(self, sigma: float = 1.0, eps: float = 1e-4) -> None:
        super().__init__()
        if sigma <= 0:
            msg = f"inpaint_sigma must be > 0, got {sigma}"
            raise ValueError(msg)
        self.sigma = sigma
        self.eps = eps

    def blur(self, maps: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian over the last two dimensions, zero outside the map (nothing is visible there)."""
        rows = gaussian_band_matrix(maps.shape[-2], self.sigma, maps)
        cols = gaussian_band_matrix(maps.shape[-1], self.sigma, maps)
        return rows @ maps @ cols.transpose(0, 1)

    def forward(self, features: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """Inpaint.

        Args:
            features: ``(N, C, H, W)``; values at hidden positions are ignored (multiplied by 0).
            visible: ``(N, 1, H, W)``, 1 where visible, 0 where hidden.

        Returns:
            ``(N, C, H, W)``: at every position, the weighted mean of the visible feature vectors around it.
        """
        numerator = self.blur(features * visible)
        weight = self.blur(visible.to(features.dtype))
        return numerator / weight.clamp_min(self.eps)
