# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""What each CRR training stage feeds the network, besides the batch's images.

* :func:`batch_foreground`: where synthetic anomalies may land (``foreground`` argument of ``CRR``);
* :func:`stage2_images`: the sub-batch stage II trains on (``stage2_batch_size``, official: 8 of 16);
* :func:`stage2_target`: the seg head's target, the synthetic mask binarised as the official code does.

Kept out of the Lightning module so the training steps read as the algorithm and these choices are named.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import Batch

from anomalib_crr.models.components.synthesis import ForegroundMaskFolder, estimate_foreground


def batch_foreground(
    foreground: str | None, masks: ForegroundMaskFolder | None, batch: Batch, images: torch.Tensor
) -> torch.Tensor | None:
    """Foreground masks (B, 1, H, W) for the images of ``batch`` (``images`` may be its first rows).

    Args:
        foreground: ``None`` (anomalies anywhere), ``"auto"`` (estimated from each image) or a mask folder.
        masks: The opened mask folder (a folder ``foreground`` only).
        batch: The training batch; a mask folder is looked up by its ``image_path``.
        images: The images the masks are for.

    Raises:
        ValueError: If masks come from a folder but the batch carries no image paths.
    """
    if foreground is None:
        return None
    if foreground == "auto":
        return estimate_foreground(images)
    paths = getattr(batch, "image_path", None)
    if paths is None:
        msg = "foreground is a mask folder, but the training batches carry no image_path to find the masks by"
        raise ValueError(msg)
    assert masks is not None
    return masks(list(paths)[: images.shape[0]], tuple(images.shape[-2:]), images.device)


def stage2_images(images: torch.Tensor, stage2_batch_size: int | None) -> torch.Tensor:
    """The first ``stage2_batch_size`` images of a (shuffled) batch, which stage II trains on (``None``: all).

    The official code trains stage II at batch 8 against stage I's 16; one fit has one data loader, so stage II
    takes the first images of each batch instead (the loader shuffles, so they are a random subset).
    """
    return images if stage2_batch_size is None else images[:stage2_batch_size]


def stage2_target(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """The synthetic mask at the seg head's size, binarised as the official code does (``< 0.5`` → 0)."""
    return F.interpolate(mask, size=size, mode="bilinear", align_corners=False) >= 0.5
