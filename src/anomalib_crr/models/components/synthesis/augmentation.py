# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Batched "three random ops" augmenter of CRR's anomaly synthesis, with per-image parameters.

The official code draws, per image, three distinct ops from ten imgaug augmenters and applies them in
the drawn order to the anomaly source (a DTD texture or the image itself). Applying torchvision v2
transforms to a batch would give every image the same parameters, and looping over images costs a
Python round trip per image; here every op works on the sub-batch that drew it, with a parameter per
image, so a batch needs at most ``3 × 10`` small batched calls and no host synchronisation (the op
choice is drawn on the CPU).

The ten ops follow the official list (imgaug defaults where the official passes none): per-channel
gamma contrast (0.5–2), brightness ``Y·mul + add`` (mul 0.8–1.2, add ±30/255), sharpness (factor 0–2),
hue and saturation shifts (±50/255 each, drawn independently), solarize (p 0.5, threshold 32–128/255),
posterize (1–8 bits), invert, autocontrast (cutoff 0–20 %), histogram equalisation, rotation (±45°).
Kornia provides the colour conversions, equalisation and rotation.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F  # noqa: N812
from kornia.color import hsv_to_rgb, rgb_to_hsv, rgb_to_ycbcr, ycbcr_to_rgb
from kornia.enhance import equalize
from kornia.geometry.transform import rotate
from torch import nn


def _uniform(n: int, low: float, high: float, like: torch.Tensor, *shape: int) -> torch.Tensor:
    return torch.empty(n, *shape, device=like.device, dtype=like.dtype).uniform_(low, high)


def gamma_contrast(x: torch.Tensor) -> torch.Tensor:
    """``x ** γ``, γ ∈ [0.5, 2] per image and channel (imgaug ``GammaContrast(per_channel=True)``)."""
    return x.clamp_min(0) ** _uniform(x.shape[0], 0.5, 2.0, x, x.shape[1], 1, 1)


def brightness(x: torch.Tensor) -> torch.Tensor:
    """Luma ``Y·mul + add`` in YCbCr, mul ∈ [0.8, 1.2], add ∈ [−30, 30]/255 (``MultiplyAndAddToBrightness``)."""
    ycbcr = rgb_to_ycbcr(x)
    mul = _uniform(x.shape[0], 0.8, 1.2, x, 1, 1)
    add = _uniform(x.shape[0], -30 / 255, 30 / 255, x, 1, 1)
    luma = ycbcr[:, 0] * mul + add
    return ycbcr_to_rgb(torch.cat([luma.unsqueeze(1), ycbcr[:, 1:]], dim=1))


def sharpen(x: torch.Tensor) -> torch.Tensor:
    """PIL-style sharpness, factor ∈ [0, 2] per image (``pillike.EnhanceSharpness``).

    Blends the image with PIL's 3×3 smoothing filter (weights 1, centre 5, /13; border pixels kept), as
    kornia's ``sharpness`` does, with a factor per image. The filter is ``(9·box3×3 + 4·x) / 13``, computed
    with an average pool (much faster on CPUs than a depthwise convolution).
    """
    box = F.avg_pool2d(x, 3, stride=1, padding=0)
    smooth = x.clone()
    smooth[..., 1:-1, 1:-1] = (9 * box + 4 * x[..., 1:-1, 1:-1]) / 13
    factor = _uniform(x.shape[0], 0.0, 2.0, x, 1, 1, 1)
    return torch.lerp(smooth, x, factor)


def hue_saturation(x: torch.Tensor) -> torch.Tensor:
    """Hue and saturation shifts, each ∈ [−50, 50]/255 of the full range, drawn independently per image.

    Done in HSV (kornia), as imgaug's ``AddToHueAndSaturation(per_channel=True)``.
    """
    hsv = rgb_to_hsv(x.clamp(0, 1))
    hue_shift = _uniform(x.shape[0], -50 / 255, 50 / 255, x, 1, 1) * 2 * math.pi
    sat_shift = _uniform(x.shape[0], -50 / 255, 50 / 255, x, 1, 1)
    hue = torch.remainder(hsv[:, 0] + hue_shift, 2 * math.pi)
    sat = (hsv[:, 1] + sat_shift).clamp(0, 1)
    return hsv_to_rgb(torch.stack([hue, sat, hsv[:, 2]], dim=1))


def solarize(x: torch.Tensor) -> torch.Tensor:
    """With probability 0.5 per image, invert the values above a threshold ∈ [32, 128]/255."""
    threshold = _uniform(x.shape[0], 32 / 255, 128 / 255, x, 1, 1, 1)
    apply = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5
    return torch.where(apply & (x >= threshold), 1 - x, x)


def posterize(x: torch.Tensor) -> torch.Tensor:
    """Keep the top 1–8 bits of each 8-bit value, bits drawn per image (imgaug ``Posterize()``)."""
    bits = torch.randint(1, 9, (x.shape[0], 1, 1, 1), device=x.device)
    step = (2 ** (8 - bits)).to(x.dtype)
    return torch.floor(torch.round(x.clamp(0, 1) * 255) / step) * step / 255


def invert(x: torch.Tensor) -> torch.Tensor:
    """``1 − x``."""
    return 1 - x


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """PIL-style autocontrast (``pillike.Autocontrast``), with a cutoff ∈ [0, 0.2) per image.

    Per channel, ``cutoff`` of the 256-bin histogram is cut at each end and the rest stretched to [0, 1].
    """
    batch, channels = x.shape[:2]
    levels = (x.clamp(0, 1) * 255).round().long().flatten(2)  # (B, C, N)
    histogram = torch.zeros(batch, channels, 256, device=x.device, dtype=x.dtype)
    histogram.scatter_add_(2, levels, torch.ones_like(levels, dtype=x.dtype))
    cdf = histogram.cumsum(dim=2) / levels.shape[-1]
    cutoff = _uniform(batch, 0.0, 0.2, x, 1, 1)
    low = (cdf <= cutoff).sum(dim=2, keepdim=True).clamp(max=255).to(x.dtype).unsqueeze(-1) / 255
    high = (cdf < 1 - cutoff).sum(dim=2, keepdim=True).clamp(max=255).to(x.dtype).unsqueeze(-1) / 255
    scale = torch.where(high > low, 1 / (high - low).clamp_min(1e-6), torch.ones_like(high))
    stretched = ((x - low) * scale).clamp(0, 1)
    return torch.where(high > low, stretched, x)


def equalise(x: torch.Tensor) -> torch.Tensor:
    """Per-channel histogram equalisation (kornia)."""
    return equalize(x.clamp(0, 1))


def rotate45(x: torch.Tensor) -> torch.Tensor:
    """Rotate by an angle ∈ [−45°, 45°] per image, bilinear, zero fill (imgaug ``Affine(rotate=(-45, 45))``)."""
    return rotate(x, _uniform(x.shape[0], -45.0, 45.0, x), mode="bilinear", padding_mode="zeros")


AUGMENTATIONS: tuple[Callable[[torch.Tensor], torch.Tensor], ...] = (
    gamma_contrast,
    brightness,
    sharpen,
    hue_saturation,
    solarize,
    posterize,
    invert,
    autocontrast,
    equalise,
    rotate45,
)


class BatchedRandomAugment(nn.Module):
    """Apply ``num_ops`` distinct ops, drawn per image in random order, to a batch (B, 3, H, W) in [0, 1].

    Args:
        num_ops: Ops per image (3 in the official code).
        ops: The op pool; each maps a sub-batch to a sub-batch and draws its own per-image parameters.
    """

    def __init__(self, num_ops: int = 3, ops: tuple[Callable[[torch.Tensor], torch.Tensor], ...] = AUGMENTATIONS):
        super().__init__()
        if not 0 <= num_ops <= len(ops):
            msg = f"num_ops must be in [0, {len(ops)}], got {num_ops}"
            raise ValueError(msg)
        self.num_ops = num_ops
        self.ops = ops

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Augment ``images``; the op choice is drawn on the CPU so that no step waits for the device."""
        batch = images.shape[0]
        if batch == 0 or self.num_ops == 0:
            return images
        choice = torch.rand(batch, len(self.ops)).argsort(dim=1)[:, : self.num_ops]  # distinct ops, random order
        out = images.float().clone()
        for position in range(self.num_ops):
            for op_index, op in enumerate(self.ops):
                rows = (choice[:, position] == op_index).nonzero().flatten()
                if rows.numel() == 0:
                    continue
                rows = rows.to(images.device, non_blocking=True)
                out[rows] = op(out[rows]).clamp(0, 1)
        return out
