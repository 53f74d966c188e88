# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Foreground masks that keep CRR's synthetic anomalies on the object.

The official code multiplies every Perlin mask by a foreground mask (DIS saliency masks, thresholded,
one file per training image, in a tree that mirrors the dataset; DiffusionAD publishes such masks for
MVTec AD and VisA). Without it, on object categories much of the repair and segmentation supervision
lands on the background. Two sources are offered:

* :func:`estimate_foreground` ("auto"): the object is what differs from the background colour, taken as
  the per-channel median of the image border, by more than the border's own (noise/texture) level; the
  mask is cleaned with a morphological opening and closing, and an estimate that is degenerate (nearly
  empty, or the image has no contrast) falls back to the whole image. Batched, on the images' device.
* :class:`ForegroundMaskFolder`: per-image mask files in a folder that mirrors the dataset tree, brought
  to the training image's geometry with the same pre-processing transform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torchvision import io
from torchvision.datasets.folder import IMG_EXTENSIONS

# Below this share of the image, or with less contrast to the background than this, the estimate is unusable.
MIN_FOREGROUND_FRACTION = 0.02
MIN_CONTRAST = 0.05
# Object pixels differ from the border colour by more than BORDER_MARGIN × the border's own 99th percentile
# difference (its noise and texture), and by at least MIN_THRESHOLD.
BORDER_MARGIN = 1.5
MIN_THRESHOLD = 0.02


def _odd(value: float) -> int:
    return max(3, int(value) // 2 * 2 + 1)


def _dilate(mask: torch.Tensor, size: int) -> torch.Tensor:
    """Square dilation as two 1-D max pools (a square's max is separable): O(size) per pixel, not O(size²)."""
    mask = F.max_pool2d(mask, (size, 1), stride=1, padding=(size // 2, 0))
    return F.max_pool2d(mask, (1, size), stride=1, padding=(0, size // 2))


def _erode(mask: torch.Tensor, size: int) -> torch.Tensor:
    return -_dilate(-mask, size)


def _frame(x: torch.Tensor, border: int) -> torch.Tensor:
    """The values of a ``border``-pixel frame of (B, C, H, W), as (B, C, N)."""
    return torch.cat(
        [
            x[..., :border, :].flatten(2),
            x[..., -border:, :].flatten(2),
            x[..., border:-border, :border].flatten(2),
            x[..., border:-border, -border:].flatten(2),
        ],
        dim=2,
    )


def estimate_foreground(images: torch.Tensor, border: int = 4) -> torch.Tensor:
    """Estimate a binary foreground mask (B, 1, H, W) for images (B, C, H, W) in [0, 1].

    The background colour is the per-channel median of a ``border``-pixel frame. The largest channel
    difference to it is box-smoothed (about 1/50 of the image side, so sensor noise and fine background
    texture average out while uniform object regions, even dark ones, stay), and a pixel is object when
    that difference exceeds ``BORDER_MARGIN`` times the 99th percentile of the frame's own smoothed
    difference (at least ``MIN_THRESHOLD``): the threshold adapts to how noisy or textured the background
    is. An opening (square, about 1/40 of the side) removes speckle, a closing (about 1/16 of the side)
    fills dark parts of the object such as tread grooves, without closing large holes (a washer's); a final
    erosion by the smoothing box takes back the margin that smoothing adds outside strong edges.
    Images whose estimate covers less than ``MIN_FOREGROUND_FRACTION`` of the image, or that nowhere
    differ from their border colour by ``MIN_CONTRAST``, get the whole image instead.

    Args:
        images: Images in [0, 1].
        border: Width of the frame the background colour and noise level are read from.
    """
    batch, channels, height, width = images.shape
    x = images.float()
    background = _frame(x, border).median(dim=2).values.view(batch, channels, 1, 1)
    difference = (x - background).abs().amax(dim=1, keepdim=True)  # (B, 1, H, W)
    blur = _odd(min(height, width) / 50)
    smoothed = F.avg_pool2d(difference, (blur, 1), stride=1, padding=(blur // 2, 0), count_include_pad=False)
    smoothed = F.avg_pool2d(smoothed, (1, blur), stride=1, padding=(0, blur // 2), count_include_pad=False)
    noise = _frame(smoothed, border).flatten(1).quantile(0.99, dim=1)
    threshold = (noise * BORDER_MARGIN).clamp_min(MIN_THRESHOLD).view(batch, 1, 1, 1)
    mask = (smoothed > threshold).float()
    opening, closing = _odd(min(height, width) / 40), _odd(min(height, width) / 16)
    mask = _dilate(_erode(mask, opening), opening)
    mask = _erode(_dilate(mask, closing), closing)
    mask = _erode(mask, blur)  # smoothing spread strong edges outwards by up to half the box: take it back
    usable = (mask.flatten(1).mean(dim=1) >= MIN_FOREGROUND_FRACTION) & (
        difference.flatten(1).amax(dim=1) >= MIN_CONTRAST
    )
    return torch.where(usable.view(batch, 1, 1, 1), mask, torch.ones_like(mask))


class ForegroundMaskFolder(nn.Module):
    """Per-image foreground masks from a folder that mirrors the dataset tree.

    For an image ``…/tire/train/good/000.png`` the mask is the first existing file among
    ``<root>/tire/train/good/000.<ext>``, ``<root>/train/good/000.<ext>``, ``<root>/good/000.<ext>`` and
    ``<root>/000.<ext>`` (``<ext>``: the image's own extension, then any image extension), also with
    ``train`` replaced by ``DISthresh`` (DiffusionAD's layout, ``<category>/DISthresh/good/000.png``). A
    mask is a grey image, foreground > 0.5 after scaling to [0, 1]; it is read once, passed through
    ``transform`` (the pre-processor's Resize/CenterCrop, so it lines up with the training image) and
    cached.

    Args:
        root: The mask folder.
        transform: Geometry transform applied to each (1, 1, H, W) mask, e.g. the pre-processor's transform.

    Raises:
        FileNotFoundError: If ``root`` is not a folder.
    """

    def __init__(self, root: str | Path, transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        self.root = Path(root)
        if not self.root.is_dir():
            msg = f"foreground mask folder '{self.root}' does not exist or is not a folder"
            raise FileNotFoundError(msg)
        self.transform = transform
        self._cache: dict[str, torch.Tensor] = {}

    def candidates(self, image_path: str | Path) -> list[Path]:
        """Mask files that may belong to ``image_path``, most specific first."""
        parts = Path(image_path).parts
        suffixes = [parts[start:] for start in range(max(0, len(parts) - 4), len(parts))]
        extensions = [Path(image_path).suffix, *(ext for ext in IMG_EXTENSIONS if ext != Path(image_path).suffix)]
        paths = []
        for suffix in suffixes:
            variants = [suffix, tuple("DISthresh" if part == "train" else part for part in suffix)]
            for variant in dict.fromkeys(variants):
                stem = self.root.joinpath(*variant).with_suffix("")
                paths.extend(stem.with_suffix(ext) for ext in extensions)
        return paths

    def load(self, image_path: str | Path, size: tuple[int, int]) -> torch.Tensor:
        """The binary mask (1, H, W) of one image, at the training image size ``size``."""
        key = f"{image_path}|{size}"
        if key not in self._cache:
            found = next((path for path in self.candidates(image_path) if path.is_file()), None)
            if found is None:
                tried = ", ".join(str(path) for path in self.candidates(image_path)[:4])
                msg = f"no foreground mask for '{image_path}' in '{self.root}' (tried {tried}, …)"
                raise FileNotFoundError(msg)
            mask = io.read_image(str(found), mode=io.ImageReadMode.GRAY).float().unsqueeze(0) / 255.0
            if self.transform is not None:
                mask = self.transform(mask)
            if tuple(mask.shape[-2:]) != tuple(size):
                msg = (
                    f"foreground mask '{found}' is {tuple(mask.shape[-2:])} after the pre-processing transform, "
                    f"but the training images are {tuple(size)}"
                )
                raise ValueError(msg)
            self._cache[key] = (mask[0] > 0.5).to(torch.uint8)
        return self._cache[key]

    def forward(self, image_paths: Sequence[str | Path], size: tuple[int, int], device: torch.device) -> torch.Tensor:
        """Masks (B, 1, H, W) of a batch, float on ``device``."""
        masks = torch.stack([self.load(path, size) for path in image_paths])
        return masks.to(device, non_blocking=True).float()
