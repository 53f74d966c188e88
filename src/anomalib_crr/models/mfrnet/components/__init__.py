# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Building blocks of MFRNet."""

from .aggregator import DEFAULT_LAYERS, FeatureNorm, MultiScaleFeatureAggregator, load_backbone_weights
from .masks import check_divisible, crossed_masks, fixed_masks
from .restorer import MfrRestorer

__all__ = [
    "DEFAULT_LAYERS",
    "FeatureNorm",
    "MfrRestorer",
    "MultiScaleFeatureAggregator",
    "check_divisible",
    "crossed_masks",
    "fixed_masks",
    "load_backbone_weights",
]
