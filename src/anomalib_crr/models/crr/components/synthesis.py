# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Anomaly synthesis for CRR's repair task, on [0, 1] images.

Every training image gets a synthetic defect (probability 1.0): a binarised, rotated Perlin mask
``A`` and a source ``T`` blended as ``x̃ = x(1 − A) + w·T·A + (1 − w)·x·A`` with ``w ~ U[0.2, 0.8)``.
The source is, with equal odds, a texture (a DTD image, or anomalib's Perlin-noise texture when no
DTD folder is given) or the image itself, augmented and grid-shuffled (MemSeg-style
self-augmentation), each after three random photometric/geometric ops.

The Perlin noise, its rotation and the three-op augmenter are anomalib's
(:class:`anomalib.data.utils.generators.PerlinAnomalyGenerator`); this module adds the
self-augmentation branch, the retry loop and exposes the blend weights and masks for the tests.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
from anomalib.data.utils.generators import PerlinAnomalyGenerator
from anomalib.data.utils.generators.perlin import generate_perlin_noise
from torch import nn
from torchvision import io
from torchvision.transforms.v2 import functional as TF  # noqa: N812

MAX_MASK_RETRIES = 50


@dataclass
class SyntheticAnomalies:
    """A batch of synthetic anomalies.

    Attributes:
        image: Corrupted images (B, C, H, W) in [0, 1].
        mask: Binary anomaly masks (B, 1, H, W).
        weight: Blend weight ``w`` of the source inside the mask, per image (B,).
    """

    image: torch.Tensor
    mask: torch.Tensor
    weight: torch.Tensor


def grid_shuffle(image: torch.Tensor, grid: int = 8) -> torch.Tensor:
    """Cut ``image`` (C, H, W) into ``grid`` column strips and permute them, then the same for rows.

    Even and odd strips are permuted separately and the evens placed first (MemSeg's scheme), which
    breaks the global structure while keeping local texture statistics of the object.
    """

    def shuffle_strips(x: torch.Tensor, dim: int) -> torch.Tensor:
        strips = list(torch.tensor_split(x, grid, dim=dim))
        evens, odds = strips[0::2], strips[1::2]
        random.shuffle(evens)
        random.shuffle(odds)
        return torch.cat(evens + odds, dim=dim)

    return shuffle_strips(shuffle_strips(image, dim=-1), dim=-2)


class CrrAnomalySynthesizer(nn.Module):
    """Generate CRR's synthetic anomalies for a batch of [0, 1] images.

    Args:
        dtd_dir: Folder with texture images (e.g. DTD). ``None`` uses Perlin-noise textures: fully offline.
        blend_factor: Range of the blend weight ``w`` of the source inside the mask.
        texture_probability: Probability of the texture branch (else self-augmentation + grid shuffle).
        shuffle_grid: Number of strips per side in the self-augmentation shuffle.
    """

    def __init__(
        self,
        dtd_dir: str | Path | None = None,
        blend_factor: tuple[float, float] = (0.2, 0.8),
        texture_probability: float = 0.5,
        shuffle_grid: int = 8,
    ) -> None:
        super().__init__()
        low, high = blend_factor
        if not 0.0 <= low <= high <= 1.0:
            msg = f"blend_factor must satisfy 0 <= low <= high <= 1, got {blend_factor}"
            raise ValueError(msg)
        self.blend_factor = (float(low), float(high))
        self.texture_probability = texture_probability
        self.shuffle_grid = shuffle_grid
        # anomalib's generator provides the Perlin rotation, the 3-op augmenter and the DTD file list.
        self.generator = PerlinAnomalyGenerator(
            anomaly_source_path=dtd_dir,
            probability=1.0,
            blend_factor=self.blend_factor,
        )

    @property
    def texture_paths(self) -> list[Path]:
        """Texture images found under ``dtd_dir`` (anomalib's generator collects them)."""
        return self.generator.anomaly_source_paths

    def perlin_mask(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """Binary rotated Perlin mask (1, H, W), resampled up to ``MAX_MASK_RETRIES`` times until non-empty."""
        mask = torch.zeros(1, height, width, device=device)
        for _ in range(MAX_MASK_RETRIES):
            noise = generate_perlin_noise(height, width, device=device).unsqueeze(0)
            noise = self.generator.perlin_rotation_transform(noise)
            mask = (noise > 0.5).float()
            if mask.any():
                break
        return mask

    def texture_source(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """A DTD image resized to (H, W), or a Perlin-noise texture if no texture folder is set."""
        if self.texture_paths:
            path = self.texture_paths[random.randrange(len(self.texture_paths))]
            texture = io.read_image(str(path), mode=io.ImageReadMode.RGB).float().to(device) / 255.0
            return TF.resize(texture, [height, width], antialias=True)
        noise = generate_perlin_noise(height, width, device=device)
        return (noise * 0.5 + 0.25).clamp(0.0, 1.0).unsqueeze(0).repeat(3, 1, 1)

    def forward(self, images: torch.Tensor) -> SyntheticAnomalies:
        """Corrupt every image of ``images`` (B, C, H, W), which must be in [0, 1]."""
        _, channels, height, width = images.shape
        device = images.device
        low, high = self.blend_factor
        sources, masks, weights = [], [], []
        for image in images:
            mask = self.perlin_mask(height, width, device)
            if random.random() < self.texture_probability:
                source = self.texture_source(height, width, device)
            else:
                source = grid_shuffle(image.float(), self.shuffle_grid)
            source = self.generator.augmenters(source.clamp(0.0, 1.0))
            if source.shape[0] != channels:
                source = source.mean(dim=0, keepdim=True).expand(channels, -1, -1)
            sources.append(source)
            masks.append(mask)
            weights.append(low + (high - low) * torch.rand((), device=device))
        # One batched blend: x̃ = x(1 − A) + w·T·A + (1 − w)·x·A
        source, mask, weight = torch.stack(sources), torch.stack(masks), torch.stack(weights)
        w = weight.view(-1, 1, 1, 1)
        corrupted = images * (1 - mask) + w * source * mask + (1 - w) * images * mask
        return SyntheticAnomalies(corrupted.to(images.dtype), mask, weight)
