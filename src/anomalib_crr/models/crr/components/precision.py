# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""The ``inference_dtype`` argument: which reduced precision CRR's eval forwards may autocast to.

Shared by the torch model (which autocasts) and the Lightning module (which checks the value before anything is
built, so a typo fails at once instead of after the encoder download).
"""

from __future__ import annotations

import torch

INFERENCE_DTYPES = {
    "float32": None,
    "fp32": None,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_inference_dtype(inference_dtype: str | torch.dtype | None) -> torch.dtype | None:
    """Map ``None``/``"float32"`` to ``None`` (full precision), ``"bfloat16"``/``"float16"`` (bf16/fp16) to dtypes."""
    if inference_dtype is None or isinstance(inference_dtype, torch.dtype):
        return None if inference_dtype == torch.float32 else inference_dtype
    key = str(inference_dtype).lower().removeprefix("torch.")
    if key not in INFERENCE_DTYPES:
        msg = f"inference_dtype must be None or one of {sorted(INFERENCE_DTYPES)}, got {inference_dtype!r}"
        raise ValueError(msg)
    return INFERENCE_DTYPES[key]
