# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Data utilities of anomalib-crr."""

from .synthetic_mvtec import SYNTHETIC_CATEGORIES, make_synthetic_mvtec

__all__ = ["SYNTHETIC_CATEGORIES", "make_synthetic_mvtec"]
