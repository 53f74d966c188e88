# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Data utilities of anomalib-crr: multi-class datamodules, per-category metrics, a synthetic dataset generator."""

from .multiclass import MultiClassFolder, MultiClassMVTecAD, MultiClassVisA
from .per_category import PerCategoryMetrics
from .synthetic_mvtec import SYNTHETIC_CATEGORIES, make_synthetic_mvtec

__all__ = [
    "SYNTHETIC_CATEGORIES",
    "MultiClassFolder",
    "MultiClassMVTecAD",
    "MultiClassVisA",
    "PerCategoryMetrics",
    "make_synthetic_mvtec",
]
