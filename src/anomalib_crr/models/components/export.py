# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Export sizes: what an export ``input_size`` becomes inside the model, and refusing one the model cannot take.

The export mixins (opset 18, inference-only torch files, working INT8) live in :mod:`anomalib_crr.deploy.export`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

# How far from a refused export size the nearest accepted sides are searched (in pixels, each way).
SIZE_SEARCH_RADIUS = 64


class ExportSizeError(ValueError):
    """The export's ``input_size`` is one the model cannot take; the message names the nearest sizes it can."""


def model_input_size(model: Any, input_size: tuple[int, int]) -> tuple[int, int]:
    """The size the model's torch module sees for an exported input of ``input_size`` (after the pre-processor)."""
    import torch

    pre_processor = getattr(model, "pre_processor", None)
    probe = torch.zeros(1, 3, *input_size)
    if callable(pre_processor):
        with torch.no_grad():
            probe = pre_processor(probe)
    return int(probe.shape[-2]), int(probe.shape[-1])


def _size_problem(model: Any, input_size: tuple[int, int]) -> str | None:
    """The model's own message for an export size it cannot take, or ``None`` when it takes it.

    Uses the torch module's ``check_input_size`` (CRR takes ``height, width``, MFRNet one ``(height, width)``
    tuple) on the size after the pre-processor, so no forward pass runs. Models without such a check are not judged.
    """
    inner = getattr(model, "model", None)
    own_problem = getattr(inner, "_size_problem", None)  # the reason alone, without the model's own size advice
    if own_problem is not None:
        return own_problem(model_input_size(model, input_size))
    check = getattr(inner, "check_input_size", None)
    if check is None:
        return None
    size = model_input_size(model, input_size)
    try:
        try:
            check(size)
        except TypeError:
            check(*size)
    except ValueError as error:
        return str(error)
    return None


def nearest_side(accepts: Callable[[int], bool], side: int, step: int) -> int | None:
    """The nearest side from ``side`` in direction ``step`` (+1/-1) that ``accepts``, within the search radius."""
    for offset in range(1, SIZE_SEARCH_RADIUS + 1):
        candidate = side + step * offset
        if candidate > 0 and accepts(candidate):
            return candidate
    return None


def nearest_sizes_phrase(accepts: Callable[[int], bool], height: int, width: int) -> str:
    """``"[248,248]" or "[256,256]"``: the nearest accepted sizes below and above, each side searched separately."""
    below = [side if accepts(side) else nearest_side(accepts, side, -1) or side for side in (height, width)]
    above = [side if accepts(side) else nearest_side(accepts, side, +1) or side for side in (height, width)]
    return " or ".join(f'"[{h},{w}]"' for h, w in dict.fromkeys([tuple(below), tuple(above)]))


def check_export_input_size(model: Any, input_size: Sequence[int] | None) -> None:
    """Refuse an export ``input_size`` the model cannot take, naming the nearest sizes it can.

    Why: anomalib traces the graph at ``input_size`` and writes an IR that fails (or silently computes a map of
    another size) only when deployed. Checking before the export names the problem and the fix at once.

    Raises:
        ExportSizeError: With the model's reason and the nearest accepted sizes (each side searched separately).
    """
    if input_size is None:
        return
    height, width = (int(side) for side in input_size)
    problem = _size_problem(model, (height, width))
    if problem is None:
        return
    options = nearest_sizes_phrase(lambda side: _size_problem(model, (side, side)) is None, height, width)
    reason = problem.strip().rstrip(".")
    msg = f"--input_size [{height},{width}] cannot be exported: {reason}. Nearest sizes it takes: {options}."
    raise ExportSizeError(msg)
