# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""MFRNet: Multi-feature Reconstruction Network using crossed-mask restoration (arXiv:2404.13273)."""

from .lightning_model import MFRNet
from .loss import HybridLoss
from .torch_model import MFRNetModel

__all__ = ["HybridLoss", "MFRNet", "MFRNetModel"]
