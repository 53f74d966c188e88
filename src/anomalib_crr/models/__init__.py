# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Models of anomalib-crr."""

from .crr import CRR
from .mfrnet import MFRNet

__all__ = ["CRR", "MFRNet"]
