# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""CRR: Collaborative Reconstruction and Repair (arXiv:2512.11401) as an anomalib model."""

from .lightning_model import CRR
from .torch_model import CrrModel

__all__ = ["CRR", "CrrModel"]
