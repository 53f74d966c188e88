# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Helpers shared by the models: hub access, local weight files, pre-processor checks, fit-end validation, resume."""

from .blur import SeparableGaussianBlur2d, separable_blurs
from .checkpointing import PeriodicCheckpoint, RandomStateCheckpoint
from .fit_end import ValidateAtFitEnd, ValidatesAtFitEnd
from .hub import hub_id, offline_hub_if_unreachable
from .transforms import flatten_transforms, transform_output_size

__all__ = [
    "PeriodicCheckpoint",
    "RandomStateCheckpoint",
    "SeparableGaussianBlur2d",
    "ValidateAtFitEnd",
    "ValidatesAtFitEnd",
    "flatten_transforms",
    "hub_id",
    "offline_hub_if_unreachable",
    "separable_blurs",
    "transform_output_size",
]
