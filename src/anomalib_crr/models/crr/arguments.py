# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Checks of ``CRR``'s training arguments, run before anything is built.

A bad value fails at construction with a message naming the argument, rather than steps into a fit (a negative
step count, a ``stage2_batch_size`` of ``True`` that slices one image, a foreground of the wrong type). The
pre-processor's size and the official checkpoint files are checked where they are used
(:mod:`.pre_processing`, :mod:`.official_checkpoint`).
"""

from __future__ import annotations

from pathlib import Path


def check_training_arguments(
    stage1_steps: int,
    stage2_steps: int,
    stage2_batch_size: int | None,
    foreground: object,
) -> None:
    """Refuse step counts, stage-II batch sizes and foreground values ``CRR`` cannot train with.

    Args:
        stage1_steps: Stage-I optimizer steps (``>= 0``).
        stage2_steps: Stage-II optimizer steps (``>= 0``; not both 0).
        stage2_batch_size: A positive integer (not a bool) or ``None``.
        foreground: ``None``, ``"auto"`` or a folder (``str`` or ``Path``).

    Raises:
        ValueError: For step counts or a stage-II batch size out of range.
        TypeError: For a foreground that is neither ``None`` nor a string or path.
    """
    if stage1_steps < 0 or stage2_steps < 0 or stage1_steps + stage2_steps == 0:
        msg = f"stage1_steps and stage2_steps must be >= 0 and not both 0, got {stage1_steps}, {stage2_steps}"
        raise ValueError(msg)
    if stage2_batch_size is not None and (isinstance(stage2_batch_size, bool) or stage2_batch_size < 1):
        msg = f"stage2_batch_size must be a positive integer or None (the whole batch), got {stage2_batch_size!r}"
        raise ValueError(msg)
    if foreground is not None and not isinstance(foreground, str | Path):
        msg = f"foreground must be None, 'auto' or a folder of masks, got {foreground!r}"
        raise TypeError(msg)
