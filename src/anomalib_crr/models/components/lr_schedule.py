# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Learning-rate factors per optimizer step, for ``torch.optim.lr_scheduler.LambdaLR``.

Counted in optimizer steps (``trainer.estimated_stepping_batches``), not epochs, so a schedule is right for any
``max_epochs`` or ``max_steps``. CRR uses Dinomaly's ``WarmCosineScheduler`` (the official schedule); MFRNet uses this.
"""

from __future__ import annotations

import math
from collections.abc import Callable


def check_schedule_arguments(warmup_fraction: float, final_ratio: float, decay_at: float | None) -> None:
    """Reject schedule arguments :func:`lr_factor_schedule` cannot honour, naming the argument (at init, not step 1).

    Raises:
        ValueError: ``warmup_fraction`` outside [0, 1), ``final_lr_ratio`` outside [0, 1], or ``lr_decay_at`` outside
            (0, 1].
    """
    if not 0 <= warmup_fraction < 1:
        msg = f"warmup_fraction must be in [0, 1), got {warmup_fraction}"
        raise ValueError(msg)
    if not 0 <= final_ratio <= 1:
        msg = f"final_lr_ratio must be in [0, 1], got {final_ratio}"
        raise ValueError(msg)
    if decay_at is not None and not 0 < decay_at <= 1:
        msg = f"lr_decay_at must be in (0, 1] or None, got {decay_at}"
        raise ValueError(msg)


def lr_factor_schedule(
    total_steps: int,
    warmup_fraction: float,
    final_ratio: float,
    decay_at: float | None = None,
) -> Callable[[int], float]:
    """Learning-rate factor per optimizer step for ``LambdaLR``.

    Warm-up + cosine: linear from ``1/warmup`` to 1 over the first ``warmup_fraction`` of the steps, then cosine to
    exactly ``final_ratio`` at the last step (``total_steps - 1``). Legacy (``decay_at``): 1, then 0.1 from step
    ``round(decay_at · total)``. Counting steps (not epochs) keeps both right for any run length.
    """
    total_steps = max(1, int(total_steps))
    if decay_at is not None:
        milestone = max(1, round(decay_at * total_steps))
        return lambda step: 1.0 if step < milestone else 0.1
    warmup = min(int(warmup_fraction * total_steps), total_steps - 1)
    decay_steps = total_steps - 1 - warmup  # the last step, total_steps - 1, ends the decay

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = min(1.0, (step - warmup) / decay_steps) if decay_steps > 0 else 1.0
        return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor
