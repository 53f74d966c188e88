# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Building blocks of CRR: encoder loading, masked bottleneck, segmentation head, anomaly synthesis."""

from anomalib_crr.models.components.synthesis import CrrAnomalySynthesizer, SyntheticAnomalies, grid_shuffle

from .bottleneck import MaskAtInference, MaskedNoisyBottleneck, MaskGranularity
from .cnn_encoder import CnnGroupEncoder, GroupHeads, cnn_input_multiple, is_cnn_encoder
from .encoder import build_encoder, dino_architecture
from .seg_head import CrrSegHead

__all__ = [
    "CnnGroupEncoder",
    "CrrAnomalySynthesizer",
    "CrrSegHead",
    "GroupHeads",
    "MaskAtInference",
    "MaskGranularity",
    "MaskedNoisyBottleneck",
    "SyntheticAnomalies",
    "build_encoder",
    "cnn_input_multiple",
    "dino_architecture",
    "grid_shuffle",
    "is_cnn_encoder",
]
