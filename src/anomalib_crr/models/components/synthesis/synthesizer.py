# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Anomaly synthesis for CRR's repair task, batched on [0, 1] images on the training device.

Every training image gets a synthetic defect (probability 1.0): a binarised, rotated Perlin mask ``A``
(optionally multiplied by a foreground mask, so the defect lands on the object) and a source ``T``
blended as ``x̃ = x(1 − A) + w·T·A + (1 − w)·x·A`` with ``w ~ U[0.2, 0.8)``. The source is, with equal
odds, a texture (a DTD image, or a Perlin-noise texture when no DTD folder is given) or the image itself;
either gets three random ops, and the image source is then grid-shuffled (MemSeg-style
self-augmentation), in the official order.

Everything works on the whole batch at once: Perlin noise for all images in one evaluation (a scale pair
and a rotation per image), masks that come out empty are redrawn together (one host synchronisation
per retry round, not per image), the three ops run per op on the images that drew it, the grid shuffle
is one gather, and textures are decoded and resized once into a cache.

The noise, the textures and the random ops are defined on a ``canvas``: the official code synthesises at
the resized size (448) before centre-cropping to 392, so CRR passes its pre-processor's resize size and
the defects are the centre window, with the official blob and texture scale.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from anomalib.data.utils.generators import PerlinAnomalyGenerator
from torch import nn
from torchvision import io
from torchvision.transforms.v2 import functional as TF  # noqa: N812

from .augmentation import BatchedRandomAugment
from .perlin import MAX_SCALE_EXPONENT, perlin_noise, random_perlin_scales

MAX_MASK_RETRIES = 50
# Evaluate Perlin noise at >= this many pixels per cell of the finest lattice (32 cells), interpolate between.
SAMPLES_PER_FINEST_CELL = 7


def _noise_step(canvas: tuple[int, int]) -> int:
    """Pixel step of the noise evaluation: 2 at the official 448² canvas (14 px cells), 1 below 224²."""
    return max(1, min(canvas) // (2 ** (MAX_SCALE_EXPONENT - 1) * SAMPLES_PER_FINEST_CELL))


DEFAULT_TEXTURE_CACHE_BYTES = 4 * 1024**3  # DTD (5,640 images) at 448² in uint8 is 3.4 GB


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


def _strip_bounds(size: int, grid: int) -> list[tuple[int, int]]:
    """Strips of ``int(size / grid)`` pixels from the start; a remainder makes a short extra strip (``np.split``)."""
    step = max(1, size // grid)
    starts = list(range(0, size, step))
    return [(start, min(start + step, size)) for start in starts]


def _strip_order(count: int, shuffle_all_first: bool) -> list[int]:
    """Official order: (optionally) shuffle all strips, then shuffle the even and the odd positions, evens first."""
    order = list(range(count))
    if shuffle_all_first:
        order = [order[i] for i in torch.randperm(count).tolist()]
    evens, odds = order[0::2], order[1::2]
    evens = [evens[i] for i in torch.randperm(len(evens)).tolist()]
    odds = [odds[i] for i in torch.randperm(len(odds)).tolist()]
    return evens + odds


def _strip_permutation(size: int, grid: int, shuffle_all_first: bool) -> list[int]:
    bounds = _strip_bounds(size, grid)
    return [index for strip in _strip_order(len(bounds), shuffle_all_first) for index in range(*bounds[strip])]


def grid_shuffle(image: torch.Tensor, grid: int = 8) -> torch.Tensor:
    """Shuffle ``grid`` column strips, then ``grid`` row strips, of each image (C, H, W) or (B, C, H, W).

    The official (MemSeg-style) order: columns are split into even- and odd-position strips, each group
    permuted and the evens placed first; rows are first permuted as a whole and then split and permuted
    the same way, so any row strip can end up in the top half. Each image gets its own permutation,
    drawn on the CPU; the shuffle is one gather per axis.
    """
    batched = image.dim() == 4
    x = image if batched else image.unsqueeze(0)
    batch, channels, height, width = x.shape
    columns = torch.tensor([_strip_permutation(width, grid, shuffle_all_first=False) for _ in range(batch)])
    rows = torch.tensor([_strip_permutation(height, grid, shuffle_all_first=True) for _ in range(batch)])
    columns = columns.to(x.device, non_blocking=True).view(batch, 1, 1, width).expand(batch, channels, height, width)
    rows = rows.to(x.device, non_blocking=True).view(batch, 1, height, 1).expand(batch, channels, height, width)
    shuffled = x.gather(-1, columns).gather(-2, rows)
    return shuffled if batched else shuffled[0]


def _centre_crop(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    top, left = (images.shape[-2] - height) // 2, (images.shape[-1] - width) // 2
    return images[..., top : top + height, left : left + width]


class TextureBank:
    """DTD textures decoded and resized once, kept as uint8 on the CPU.

    The first draw of a texture decodes it and resizes it to the canvas (the official code resizes every
    texture to the resized image size, 448², before the centre crop); later draws reuse it. Past
    ``max_bytes`` textures are decoded per draw instead of cached.

    Args:
        paths: Texture image files.
        max_bytes: Cache budget in bytes.
    """

    def __init__(self, paths: list[Path], max_bytes: int = DEFAULT_TEXTURE_CACHE_BYTES) -> None:
        self.paths = list(paths)
        self.max_bytes = max_bytes
        self._cache: dict[tuple[int, int, int], torch.Tensor] = {}
        self._bytes = 0

    def __len__(self) -> int:
        return len(self.paths)

    def get(self, index: int, size: tuple[int, int]) -> torch.Tensor:
        """Texture ``index`` as uint8 (3, H, W) at ``size``."""
        key = (index, *size)
        texture = self._cache.get(key)
        if texture is None:
            path = self.paths[index]
            try:
                texture = io.decode_image(io.read_file(str(path)), mode=io.ImageReadMode.RGB)
            except RuntimeError as exc:
                msg = f"cannot read texture image '{path}': {exc}"
                raise RuntimeError(msg) from exc
            texture = TF.resize(texture, list(size), antialias=True)
            if self._bytes + texture.numel() <= self.max_bytes:
                self._cache[key] = texture
                self._bytes += texture.numel()
        return texture

    def draw(self, count: int, size: tuple[int, int], device: torch.device) -> torch.Tensor:
        """``count`` random textures (count, 3, H, W) in [0, 1] on ``device``."""
        indices = torch.randint(len(self.paths), (count,)).tolist()
        stacked = torch.stack([self.get(index, size) for index in indices])
        return stacked.to(device, non_blocking=True).float() / 255.0


class CrrAnomalySynthesizer(nn.Module):
    """Generate CRR's synthetic anomalies for a batch of [0, 1] images.

    Args:
        dtd_dir: Folder with texture images (e.g. DTD). ``None`` uses Perlin-noise textures: fully offline.
        blend_factor: Range of the blend weight ``w`` of the source inside the mask.
        texture_probability: Probability of the texture branch (else self-augmentation + grid shuffle).
        shuffle_grid: Number of strips per side in the self-augmentation shuffle.
        canvas_size: Size (H, W) the noise and textures are defined on, of which the images are the centre
            window (the pre-processor's resize size); ``None`` = the image size.
        max_retries: Redraws of a Perlin mask that is empty (after the foreground restriction).
        texture_cache_bytes: Memory budget of the decoded-texture cache.
    """

    def __init__(
        self,
        dtd_dir: str | Path | None = None,
        blend_factor: tuple[float, float] = (0.2, 0.8),
        texture_probability: float = 0.5,
        shuffle_grid: int = 8,
        canvas_size: tuple[int, int] | None = None,
        max_retries: int = MAX_MASK_RETRIES,
        texture_cache_bytes: int = DEFAULT_TEXTURE_CACHE_BYTES,
    ) -> None:
        super().__init__()
        low, high = blend_factor
        if not 0.0 <= low <= high <= 1.0:
            msg = f"blend_factor must satisfy 0 <= low <= high <= 1, got {blend_factor}"
            raise ValueError(msg)
        if not 0.0 <= texture_probability <= 1.0:
            msg = f"texture_probability must be in [0, 1], got {texture_probability}"
            raise ValueError(msg)
        if shuffle_grid < 1 or max_retries < 1:
            msg = f"shuffle_grid and max_retries must be >= 1, got {shuffle_grid}, {max_retries}"
            raise ValueError(msg)
        self.blend_factor = (float(low), float(high))
        self.texture_probability = texture_probability
        self.shuffle_grid = shuffle_grid
        self.canvas_size = tuple(canvas_size) if canvas_size is not None else None
        self.max_retries = max_retries
        # anomalib's generator collects the texture file list; its augmenter slot holds the batched
        # three-op augmenter (per-image parameters, the official op list). Its constructor draws a solarize
        # threshold for the augmenter replaced here; that draw is kept off the global stream, because CRR
        # builds the synthesiser in ``on_fit_start``, after Lightning restored a resumed fit's random state,
        # and a draw there would shift every later shuffle and anomaly of the resumed fit.
        with torch.random.fork_rng(devices=[]):
            self.generator = PerlinAnomalyGenerator(
                anomaly_source_path=dtd_dir,
                probability=1.0,
                blend_factor=self.blend_factor,
            )
        self.generator.augmenters = BatchedRandomAugment(num_ops=3)
        self.textures = TextureBank(self.generator.anomaly_source_paths, max_bytes=texture_cache_bytes)

    @property
    def texture_paths(self) -> list[Path]:
        """Texture images found under ``dtd_dir``."""
        return self.textures.paths

    def _canvas(self, height: int, width: int) -> tuple[int, int]:
        if self.canvas_size is None:
            return height, width
        canvas_h, canvas_w = self.canvas_size
        return max(canvas_h, height), max(canvas_w, width)

    def perlin_masks(
        self,
        batch: int,
        height: int,
        width: int,
        device: torch.device,
        foreground: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Binary rotated Perlin masks (B, 1, H, W), times ``foreground`` if given.

        Scales stay fixed per image; masks that are empty are redrawn (new gradients and rotation) together,
        up to ``max_retries`` times, as the official code does per image. An image whose foreground is empty
        keeps an empty mask.
        """
        canvas = self._canvas(height, width)
        scales = random_perlin_scales(batch).to(device)
        masks = torch.zeros(batch, 1, height, width, device=device)
        pending = torch.arange(batch)
        for _ in range(self.max_retries):
            rows = pending.to(device, non_blocking=True)
            angles = torch.empty(len(pending), device=device).uniform_(-90.0, 90.0)
            noise = perlin_noise(scales[rows], height, width, canvas=canvas, angles=angles, step=_noise_step(canvas))
            mask = (noise > 0.5).float()
            mask = mask.unsqueeze(1)
            if foreground is not None:
                mask = mask * foreground[rows]
            masks[rows] = mask
            empty = ~mask.flatten(1).any(dim=1)
            pending = pending[empty.cpu()]
            if len(pending) == 0:
                break
        return masks

    def texture_batch(self, count: int, height: int, width: int, device: torch.device) -> torch.Tensor:
        """``count`` texture sources (count, 3, H, W): DTD images, or Perlin-noise textures without a texture folder."""
        canvas = self._canvas(height, width)
        if len(self.textures):
            return _centre_crop(self.textures.draw(count, canvas, device), height, width)
        scales = random_perlin_scales(count).to(device)
        noise = perlin_noise(scales, height, width, canvas=canvas, step=_noise_step(canvas))
        return (noise * 0.5 + 0.25).clamp(0.0, 1.0).unsqueeze(1).expand(count, 3, height, width)

    def texture_source(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        """One texture source (3, H, W)."""
        return self.texture_batch(1, height, width, device)[0]

    def forward(self, images: torch.Tensor, foreground: torch.Tensor | None = None) -> SyntheticAnomalies:
        """Corrupt every image of ``images`` (B, C, H, W), which must be in [0, 1].

        Args:
            images: Clean images.
            foreground: Optional foreground masks (B, 1, H, W) in {0, 1}; the Perlin masks are multiplied by them.
        """
        batch, channels, height, width = images.shape
        device = images.device
        if foreground is not None and (foreground.shape[0] != batch or foreground.shape[-2:] != images.shape[-2:]):
            msg = f"foreground masks {tuple(foreground.shape)} do not match the images {tuple(images.shape)}"
            raise ValueError(msg)
        mask = self.perlin_masks(batch, height, width, device, foreground)
        # Branch per image, drawn on the CPU: texture (DTD / noise) or the image itself.
        use_texture = torch.rand(batch) < self.texture_probability
        texture_rows = use_texture.nonzero().flatten()
        image_rows = (~use_texture).nonzero().flatten()
        source = images.float().expand(batch, 3, height, width).clone() if channels == 1 else images.float().clone()
        if len(texture_rows):
            source[texture_rows.to(device)] = self.texture_batch(len(texture_rows), height, width, device)
        # Official order: three random ops first, then (image source only) the strip shuffle.
        source = self.generator.augmenters(source.clamp(0.0, 1.0))
        if len(image_rows):
            rows = image_rows.to(device)
            source[rows] = grid_shuffle(source[rows], self.shuffle_grid)
        if source.shape[1] != channels:
            source = source.mean(dim=1, keepdim=True).expand(batch, channels, height, width)
        low, high = self.blend_factor
        weight = low + (high - low) * torch.rand(batch, device=device)
        # One batched blend: x̃ = x(1 − A) + w·T·A + (1 − w)·x·A
        w = weight.view(-1, 1, 1, 1)
        corrupted = images * (1 - mask) + w * source * mask + (1 - w) * images * mask
        return SyntheticAnomalies(corrupted.to(images.dtype), mask, weight)
