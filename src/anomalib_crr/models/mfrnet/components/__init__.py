# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Building blocks of MFRNet."""

from anomalib_crr.models.components.cnn_backbone import load_backbone_weights

from .aggregator import DEFAULT_LAYERS, LEGACY_LAYERS, FeatureNorm, MultiScaleFeatureAggregator
from .envelope import ImageScore, NormalEnvelope
from .inpainting import VisibleNeighbourInpainting
from .masks import check_divisible, crossed_masks, fixed_masks, fixed_structured_masks, structured_masks
from .restorer import MfrRestorer

__all__ = [
    "DEFAULT_LAYERS",
    "LEGACY_LAYERS",
    "FeatureNorm",
    "ImageScore",
    "MfrRestorer",
    "MultiScaleFeatureAggregator",
    "NormalEnvelope",
    "VisibleNeighbourInpainting",
    "check_divisible",
    "crossed_masks",
    "fixed_masks",
    "fixed_structured_masks",
    "load_backbone_weights",
    "structured_masks",
]
