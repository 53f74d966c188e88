# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Synthetic anomalies on [0, 1] images: CRR's repair targets, shared with MFRNet's ``repair`` option.

Perlin masks (:mod:`.perlin`), the three random ops (:mod:`.augmentation`), foreground masks
(:mod:`.foreground`) and the batched synthesiser that blends a texture or a self-augmented copy into the
image (:mod:`.synthesizer`). Shared here because both models train on the same defects; neither model is
imported.
"""

from .foreground import ForegroundMaskFolder, estimate_foreground
from .synthesizer import CrrAnomalySynthesizer, SyntheticAnomalies, grid_shuffle

__all__ = [
    "CrrAnomalySynthesizer",
    "ForegroundMaskFolder",
    "SyntheticAnomalies",
    "estimate_foreground",
    "grid_shuffle",
]
