# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""The seven metrics of the multi-class papers and their mean (mAD), built from anomalib's metric classes.

Image AUROC, image AP, image F1-max, pixel AUROC, pixel AP, pixel F1-max and pixel AUPRO (FPR <= 0.3); mAD is
their mean (the ADer benchmark's summary figure). AUROC, F1-max and AUPRO are anomalib's own classes. anomalib
has no average-precision class (its ``AUPR`` is the trapezoidal area under the PR curve, which differs from the
step-wise AP that the papers report), so ``AP`` wraps torchmetrics' exact ``BinaryAveragePrecision`` with
anomalib's own factory mechanism (``AnomalibMetric``), which makes it read fields from anomalib batches.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from anomalib.metrics import AUPRO, AUROC, AnomalibMetric, Evaluator
from anomalib.metrics.f1_score import _F1Max
from torchmetrics.classification import BinaryAveragePrecision
from torchmetrics.utilities import dim_zero_cat

IMAGE_FIELDS = ["pred_score", "gt_label"]
PIXEL_FIELDS = ["anomaly_map", "gt_mask"]
METRICS = (
    "image_AUROC",
    "image_AP",
    "image_F1Max",
    "pixel_AUROC",
    "pixel_AP",
    "pixel_F1Max",
    "pixel_AUPRO",
)
MAD = "mAD"
AUPRO_FPR_LIMIT = 0.3


class _FlatAveragePrecision(BinaryAveragePrecision):
    """Exact binary AP on flattened inputs (a ``(B, 1)`` score against ``(B,)`` labels, as anomalib's AUROC)."""

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        """Flatten, then accumulate."""
        super().update(preds.flatten(), target.flatten())


class _FlatF1Max(_F1Max):
    """anomalib's F1-max on flattened inputs.

    anomalib's AUROC and AUPR flatten, its F1Max does not, so PaDiM's ``(B, 1)`` image scores would fail
    against ``(B,)`` labels.
    """

    def update(self, preds: torch.Tensor, target: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Flatten, then accumulate."""
        super().update(preds.flatten(), target.flatten(), *args, **kwargs)


class F1Max(AnomalibMetric, _FlatF1Max):  # type: ignore[misc]
    """anomalib's ``F1Max`` (maximum F1 over all thresholds) that also accepts ``(B, 1)`` scores.

    Example:
        >>> F1Max(fields=["pred_score", "gt_label"], prefix="image_").name
        'image_F1Max'
    """


class AP(AnomalibMetric, _FlatAveragePrecision):  # type: ignore[misc]
    """Average precision (step-wise, as scikit-learn and the papers) on anomalib batches.

    Example:
        >>> ap = AP(fields=["pred_score", "gt_label"], prefix="image_")
        >>> ap.name
        'image_AP'
    """


class LocationOnlyAUPRO(AUPRO):
    """AUPRO of one map shared by every test image: the mean of the model's maps over the good test images.

    A reference for reading AUPRO, not a score of the model: on objects that sit at the same place in every image
    (MVTec 3D-AD ``tire``), a map that only knows where the object is, and nothing about the image at hand, already
    reaches a high AUPRO (0.85 for MFRNet's mean map on ``tire``). A model's AUPRO above its location-only AUPRO
    is what it finds in the image itself. Good images are those whose ground-truth mask is empty.

    Example:
        >>> LocationOnlyAUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", fpr_limit=0.3).name
        'pixel_LocationOnlyAUPRO'
    """

    def _compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The PRO curve with every stored map replaced by the good images' mean map."""
        maps = dim_zero_cat(self.preds)
        good = dim_zero_cat(self.target).flatten(1).amax(dim=1) == 0
        if not bool(good.any()):
            msg = "LocationOnlyAUPRO needs at least one good test image (an empty ground-truth mask)."
            raise ValueError(msg)
        stored = self.preds
        self.preds = [maps[good].float().mean(dim=0, keepdim=True).expand_as(maps)]
        try:
            return super()._compute()
        finally:
            self.preds = stored


def build_metrics() -> list[AnomalibMetric]:
    """Fresh instances of the seven metrics, named as in :data:`METRICS`."""
    return [
        AUROC(fields=IMAGE_FIELDS, prefix="image_"),
        AP(fields=IMAGE_FIELDS, prefix="image_"),
        F1Max(fields=IMAGE_FIELDS, prefix="image_"),
        AUROC(fields=PIXEL_FIELDS, prefix="pixel_"),
        AP(fields=PIXEL_FIELDS, prefix="pixel_"),
        F1Max(fields=PIXEL_FIELDS, prefix="pixel_"),
        AUPRO(fields=PIXEL_FIELDS, prefix="pixel_", fpr_limit=AUPRO_FPR_LIMIT),
    ]


def build_evaluator() -> Evaluator:
    """An anomalib ``Evaluator`` with the seven metrics as test metrics (validation keeps none)."""
    return Evaluator(test_metrics=build_metrics())


def mad(row: Mapping[str, Any]) -> float:
    """Mean of the seven metrics of ``row`` (NaN when one is missing or NaN)."""
    values = [float(row.get(name, math.nan)) for name in METRICS]
    return sum(values) / len(values) if not any(math.isnan(v) for v in values) else math.nan


def with_mad(row: Mapping[str, Any]) -> dict[str, float]:
    """The seven metrics of ``row`` as floats plus ``mAD``."""
    out = {name: float(row.get(name, math.nan)) for name in METRICS}
    out[MAD] = mad(out)
    return out


def mean_rows(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean over categories of each metric and of mAD (the multi-class convention)."""
    names = [*METRICS, MAD]
    return {name: sum(float(r[name]) for r in rows) / len(rows) for name in names}
