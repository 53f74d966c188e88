# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Spread over seeds and a bootstrap interval for the report.

A table cell that averages over seeds must say how much the seeds disagree and how many there were, or two
runs that differ by seed noise read as a real difference. :func:`seed_stats` gives mean, sample standard
deviation (n - 1) and n; :func:`bootstrap_image_auroc` gives a 95 % percentile interval for the image AUROC
averaged over categories and seeds, resampling the seeds *and*, within each (seed, category), the test images
(from each job's ``scores.csv``), so it covers both sources of variation. Pixel metrics have no interval: the
jobs keep per-image scores, not every pixel.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0  # a fixed generator: the same result files give the same interval


def seed_stats(values: Sequence[Any]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (n - 1; NaN for one value) and n of the finite values."""
    numbers = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    n = len(numbers)
    if n == 0:
        return math.nan, math.nan, 0
    mean = sum(numbers) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in numbers) / (n - 1)) if n > 1 else math.nan
    return mean, std, n


def format_mean_std(mean: float, std: float, digits: int = 3) -> str:
    """``0.785 ± 0.095``; the mean alone when there is no spread to give (one seed); ``n/a`` for no value."""
    if mean is None or math.isnan(mean):
        return "n/a"
    if std is None or math.isnan(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties counted half); NaN without both classes."""
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return math.nan
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, dtype=float)
    sorted_scores = scores[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(average, counts)
    return float((ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def bootstrap_image_auroc(
    per_seed: Mapping[Any, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float, float]:
    """Point estimate and 95 % percentile interval of image AUROC, mean over categories then over seeds.

    Each bootstrap sample draws the seeds with replacement, then, for every drawn seed and category, that
    category's test images with replacement (good and defective images separately, so every resample has
    both classes and the class balance of the test set).

    Args:
        per_seed: ``{seed: {category: (scores, labels)}}``.
        samples: Number of bootstrap samples.
        seed: Seed of the generator (the interval is reproducible).

    Returns:
        ``(estimate, low, high)``; NaNs when no seed has a category with both classes.
    """
    seeds = [s for s, cats in per_seed.items() if cats]
    if not seeds:
        return math.nan, math.nan, math.nan
    estimate = _mean_auroc([per_seed[s] for s in seeds])
    rng = np.random.default_rng(seed)
    draws = np.empty(samples)
    for index in range(samples):
        chosen = [per_seed[seeds[i]] for i in rng.integers(0, len(seeds), len(seeds))]
        draws[index] = _mean_auroc([_resample(categories, rng) for categories in chosen])
    finite = draws[np.isfinite(draws)]
    if finite.size == 0:
        return estimate, math.nan, math.nan
    low, high = np.percentile(finite, [2.5, 97.5])
    return estimate, float(low), float(high)


def _resample(
    categories: Mapping[str, tuple[np.ndarray, np.ndarray]], rng: np.random.Generator
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Every category's images drawn with replacement, within each class."""
    out = {}
    for category, (scores, labels) in categories.items():
        picks = [rng.choice(np.flatnonzero(labels == value), int((labels == value).sum())) for value in (0, 1)]
        index = np.concatenate(picks)
        out[category] = (scores[index], labels[index])
    return out


def _mean_auroc(seeds: Sequence[Mapping[str, tuple[np.ndarray, np.ndarray]]]) -> float:
    """Mean over seeds of the mean over categories of image AUROC."""
    per_seed = [_finite_mean([auroc(s, lab) for s, lab in cats.values()]) for cats in seeds]
    return _finite_mean(per_seed)


def _finite_mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan
