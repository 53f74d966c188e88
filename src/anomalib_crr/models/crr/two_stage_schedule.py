# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""CRR's two training stages in one ``Engine.fit``: step accounting, optimizers and which parts train when.

The official code trains CRR with two scripts: stage I (bottleneck and decoder, reconstruction + repair) and
stage II (segmentation head, everything else frozen). anomalib's Engine and CLI run one fit, so CRR runs both in
one: optimizer steps ``[0, stage1_steps)`` are stage I, ``[stage1_steps, stage1_steps + stage2_steps)`` stage II.
This module holds that accounting, apart from the Lightning hooks (it needs no trainer to be read or called):

* :class:`TwoStageSchedule`: the step split, the trainer arguments that make one fit run exactly both stages,
  the two optimizers (StableAdamW with Dinomaly's warm-up + cosine for stage I, constant Adam for stage II) and
  the message of a fit that ended early;
* :func:`with_idle_parameters`: the zero gradients DDP needs for the parts a stage does not train;
* :func:`ignore_frozen_eval_warning`: silences Lightning's eval-mode warning for the frozen encoder only.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, fields
from typing import Any

import torch
from anomalib.models.image.dinomaly.components import StableAdamW, WarmCosineScheduler
from lightning.pytorch.utilities.warnings import PossibleUserWarning


@dataclass(frozen=True)
class TwoStageSchedule:
    """Steps and optimizer settings of CRR's two stages (the values of the ``CRR`` arguments of the same names).

    Built from the module's attributes each time it is needed, so the attributes stay the one source of truth
    (they are the saved hyper-parameters, and scripts may change them after construction).

    Args:
        stage1_steps: Optimizer steps of stage I (reconstruction + repair; bottleneck and decoder).
        stage2_steps: Optimizer steps of stage II (segmentation head).
        lr: Peak stage-I learning rate.
        final_lr: Final stage-I learning rate (end of the cosine).
        warmup_steps: Stage-I warm-up steps (capped at ``stage1_steps``).
        weight_decay: Stage-I weight decay.
        seg_lr: Stage-II learning rate (constant).
    """

    stage1_steps: int
    stage2_steps: int
    lr: float = 2e-3
    final_lr: float = 2e-4
    warmup_steps: int = 100
    weight_decay: float = 1e-4
    seg_lr: float = 1e-4

    @classmethod
    def of(cls, module: object) -> TwoStageSchedule:
        """The schedule a module's attributes of the same names (``CRR.stage1_steps``, ``CRR.lr``, ...) set now."""
        return cls(**{field.name: getattr(module, field.name) for field in fields(cls)})

    @property
    def total_steps(self) -> int:
        """Optimizer steps of a full fit (stage I + stage II)."""
        return self.stage1_steps + self.stage2_steps

    def in_stage1(self, step: int) -> bool:
        """Whether the optimizer step ``step`` (counted from 0 over the whole fit) belongs to stage I."""
        return step < self.stage1_steps

    def trainer_arguments(self) -> dict[str, Any]:
        """Run exactly ``total_steps`` steps and validate once, after the last one.

        Gradient clipping is manual (stage I only, see ``CRR.on_before_optimizer_step``), so Lightning's is off.
        A validation pass costs a full seg-head pass per image and the thresholds come from the last validation,
        so validating once at the end is enough; no sanity validation either.
        """
        return {
            "max_steps": self.total_steps,
            "gradient_clip_val": None,
            "num_sanity_val_steps": 0,
            "val_check_interval": self.total_steps,
            "check_val_every_n_epoch": None,
        }

    def optimizers(
        self,
        reconstruction_params: Iterable[torch.nn.Parameter],
        seg_params: Iterable[torch.nn.Parameter],
    ) -> tuple[list[torch.optim.Optimizer], list[WarmCosineScheduler]]:
        """Stage I: StableAdamW + warm cosine (Dinomaly's, as the official code); stage II: constant Adam.

        The scheduler spans stage I only (at least one step, so ``stage1_steps=0`` still builds it); it is
        stepped by stage-I steps only, so stage II does not move it.

        Args:
            reconstruction_params: The bottleneck's and decoder's parameters (stage I).
            seg_params: The segmentation head's parameters (stage II).

        Returns:
            ``[stage-I optimizer, stage-II optimizer]`` (``CRR`` picks them by these indices, 0 and 1) and
            ``[stage-I scheduler]``.
        """
        stage1_optimizer = StableAdamW(
            list(reconstruction_params),
            lr=self.lr,
            betas=(0.9, 0.999),
            weight_decay=self.weight_decay,
            amsgrad=True,
            eps=1e-10,
        )
        stage1_total = max(self.stage1_steps, 1)
        scheduler = WarmCosineScheduler(
            stage1_optimizer,
            base_value=self.lr,
            final_value=self.final_lr,
            total_iters=stage1_total,
            warmup_iters=min(self.warmup_steps, stage1_total),
        )
        stage2_optimizer = torch.optim.Adam(seg_params, lr=self.seg_lr)
        return [stage1_optimizer, stage2_optimizer], [scheduler]

    def unfinished_fit_message(self, done: int) -> str | None:
        """How far the two stages got after ``done`` steps; ``None`` once both are done.

        Logged when the trainer ends a fit early (``max_epochs``, ``max_time``, early stopping, Ctrl-C), so the
        user knows whether the seg head ever trained, which changes what the anomaly maps are.
        """
        if done >= self.total_steps:
            return None
        if done <= self.stage1_steps:
            stage = (
                f"stage I (reconstruction + repair) reached step {done} of {self.stage1_steps} and stage II "
                "(segmentation head) never ran, so anomaly maps use the reconstruction map only"
            )
        else:
            stage = (
                f"stage II (segmentation head) reached step {done - self.stage1_steps} of {self.stage2_steps}; "
                "anomaly maps fuse the partly trained segmentation head"
            )
        return (
            f"training stopped after {done} of {self.total_steps} configured optimizer steps "
            f"(stage1_steps={self.stage1_steps}, stage2_steps={self.stage2_steps}): {stage}."
        )


def with_idle_parameters(loss: torch.Tensor, idle_modules: Iterable[torch.nn.Module], world_size: int) -> torch.Tensor:
    """Give the parameters this stage does not train a zero gradient when training with DDP.

    DDP (without ``find_unused_parameters``) waits for a gradient of every trainable parameter in every
    step; the seg head is idle in stage I, bottleneck and decoder in stage II. Their optimizer is not
    stepped in that stage, so the zero gradients change nothing. Single-process runs skip this.
    """
    if world_size <= 1:
        return loss
    return loss + 0.0 * sum(param.sum() for module in idle_modules for param in module.parameters())


def ignore_frozen_eval_warning(module: torch.nn.Module, frozen_prefix: str) -> None:
    """Silence Lightning's "modules in eval mode" warning when only the frozen part is in eval mode.

    The frozen encoder is in eval mode on purpose; the warning is kept when any other module is in eval mode,
    since that would be a bug (a trainable part without dropout/masking).
    """
    in_eval = [name for name, child in module.named_modules() if not child.training]
    if all(name == frozen_prefix or name.startswith(frozen_prefix + ".") for name in in_eval):
        message = f"Found {len(in_eval)} module(s) in eval mode at the start of training."
        warnings.filterwarnings("ignore", message=re.escape(message), category=PossibleUserWarning)
