# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Models of anomalib-crr."""

from .crr import CRR

__all__ = ["CRR"]
