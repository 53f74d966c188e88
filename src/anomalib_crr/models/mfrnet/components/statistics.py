# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""MFRNet's normal statistics, each from one pass over the training images' features.

Three passes fit what the map and the image score need from normal data (see the model README):

1. :func:`feature_statistics`: per-channel mean and std of the aggregated features (standardisation);
2. :func:`residual_statistics`: per cell size k, the residual second moment ``Σ_k = E[r rᵀ]`` (whitening and the
   mean squared-error term) and the mean ``1 − SSIM`` under the test partitions;
3. :func:`envelope_maximum`: each position's maximum of the smoothed discrepancy (``image_score="envelope"``).

Each takes an iterable of feature batches and a ``reduce(tensor, op)`` that sums (or maxes) across DDP ranks, so the
math lives here and the Lightning module only feeds batches and names its strategy's reduction. Sums run in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

#: ``reduce(tensor, op)`` with ``op`` "sum" or "max": across DDP ranks, or the identity on one process.
Reduce = Callable[[torch.Tensor, str], torch.Tensor]


def no_reduce(tensor: torch.Tensor, op: str) -> torch.Tensor:
    """The single-process :data:`Reduce`."""
    del op
    return tensor


@torch.no_grad()
def feature_statistics(
    feature_batches: Iterable[torch.Tensor], channels: int, device: torch.device, reduce: Reduce = no_reduce
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-channel mean and std over every image and position of the raw (unstandardised) features.

    Returns:
        ``(mean, std, positions)``; mean and std float32.

    Raises:
        RuntimeError: If there were no features (an empty training dataloader).
    """
    total = torch.zeros(channels, dtype=torch.float64, device=device)
    total_sq = torch.zeros_like(total)
    count = torch.zeros((), dtype=torch.float64, device=device)
    for features in feature_batches:
        features = features.double()  # noqa: PLW2901
        total += features.sum(dim=(0, 2, 3))
        total_sq += features.pow(2).sum(dim=(0, 2, 3))
        count += features.shape[0] * features.shape[2] * features.shape[3]
    total, total_sq, count = (reduce(tensor, "sum") for tensor in (total, total_sq, count))
    if count == 0:
        msg = "The training dataloader is empty: MFRNet needs normal training images to compute feature statistics."
        raise RuntimeError(msg)
    mean = total / count
    variance = (total_sq / count - mean.pow(2)).clamp_min(0)
    return mean.float(), variance.sqrt().float(), int(count)


@torch.no_grad()
def residual_statistics(
    model: Any, feature_batches: Iterable[torch.Tensor], device: torch.device, reduce: Reduce = no_reduce
) -> bool:
    """Fit ``model``'s per-k residual whitening and map means (``MFRNetModel.set_residual_statistics``).

    Args:
        model: The ``MFRNetModel`` (in eval mode: fixed test partitions).
        feature_batches: Standardised features of the training images.
        device: Where the running sums live.
        reduce: Sum across DDP ranks.

    Returns:
        bool: ``False`` when there were no images (nothing set).
    """
    num_k, channels = len(model.cell_sizes), model.num_channels
    moments = torch.zeros(num_k, channels, channels, dtype=torch.float64, device=device)
    structural = torch.zeros(num_k, dtype=torch.float64, device=device)
    images = torch.zeros((), dtype=torch.float64, device=device)
    positions = torch.zeros((), dtype=torch.float64, device=device)
    for features in feature_batches:
        repeated, restored = model.test_restorations(features)
        residual = (repeated.float() - restored.float()).view(num_k, -1, channels, *features.shape[-2:])
        vectors = residual.permute(0, 1, 3, 4, 2).reshape(num_k, -1, channels)
        moments += (vectors.transpose(1, 2) @ vectors).double()  # float32 products, float64 running sum
        terms = model.loss.per_term(repeated, restored).view(num_k, -1, 2, *features.shape[-2:])
        structural += terms[:, :, 1].double().mean(dim=(-2, -1)).sum(dim=1)  # summed over phases and images
        images += features.shape[0] * model.num_test_phases
        positions += vectors.shape[1]
    moments, structural, images, positions = (reduce(t, "sum") for t in (moments, structural, images, positions))
    if images == 0:
        return False
    squared_mean = model.set_residual_statistics(moments / positions)
    model.set_map_statistics(torch.stack([squared_mean, (structural / images).float()], dim=1))
    return True


@torch.no_grad()
def envelope_maximum(model: Any, feature_batches: Iterable[torch.Tensor], reduce: Reduce = no_reduce) -> None:
    """Set ``model``'s normal envelope to each position's maximum smoothed discrepancy (needs the map statistics).

    Why the maximum and not a mean/σ: the per-position z-score ranked magnetic tile's images, and tire's away from
    the border, less well than the margin over the maximum (README, W26-W27), and a maximum needs no σ floor.
    """
    envelope = model.normal_envelope
    maximum = None
    for features in feature_batches:
        batch_max = envelope.smooth(model.discrepancy(features).float()).amax(dim=0)
        maximum = batch_max if maximum is None else torch.maximum(maximum, batch_max)
    if maximum is not None:
        envelope.set_envelope(reduce(maximum, "max"))


@torch.no_grad()
def map_statistics(
    model: Any, feature_batches: Callable[[], Iterable[torch.Tensor]], device: torch.device, reduce: Reduce = no_reduce
) -> None:
    """Fit everything the map and the image score read from normal images, with ``model`` in eval mode.

    :func:`residual_statistics`, then, for ``image_score="envelope"``, :func:`envelope_maximum` (it scores with the
    statistics just fitted, so it is a second pass). ``feature_batches`` makes a fresh iterable per pass.
    """
    was_training = model.training
    model.eval()
    fitted = residual_statistics(model, feature_batches(), device, reduce)
    if fitted and model.image_score.value == "envelope":
        envelope_maximum(model, feature_batches(), reduce)
    model.train(was_training)
