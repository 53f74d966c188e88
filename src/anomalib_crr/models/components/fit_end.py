# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Validate once at the end of a fit that stopped without validating its last weights.

anomalib computes the image/pixel thresholds and the normalisation statistics during validation, and
its Engine's ``ModelCheckpoint`` writes ``weights/lightning/model.ckpt`` when validation ends. Lightning
only validates on its own schedule (every epoch, or every ``val_check_interval`` steps) and when a
callback sets ``trainer.should_stop``. A fit that ends between two scheduled validations (``max_epochs``
or ``max_steps`` reached first, a ``KeyboardInterrupt``) therefore leaves no threshold and no checkpoint,
so it cannot be tested, predicted or exported. CRR, whose single validation comes after
``stage1_steps + stage2_steps``, hits this whenever a user caps the run; MFRNet hits it when
``max_steps`` ends an epoch early.

:class:`ValidateAtFitEnd` closes that gap with Lightning's own validation loop, so every other
callback (post-processor, evaluator, checkpoint) runs exactly as in a scheduled validation. Models get it
through the :class:`ValidatesAtFitEnd` mixin.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn

from .input_checks import ChecksInputs, allow_plugin_enums

logger = logging.getLogger(__name__)


class ValidateAtFitEnd(Callback):
    """Run one validation when a fit ends (or is interrupted with Ctrl-C) after the last validated step.

    A model may define ``unfinished_fit_message() -> str | None``: a description of how far its own
    schedule got (e.g. CRR's stages), returned only when the fit ended before that schedule was done.
    It is logged as a warning whether or not a validation is added.

    Runs that validate after their last optimizer step (every ordinary epoch-based fit, and a CRR fit
    that reaches its configured steps) are left untouched.
    """

    def __init__(self) -> None:
        self._validated_at_step: int | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Forget any validation of an earlier fit with the same model."""
        del trainer, pl_module
        self._validated_at_step = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Remember the optimizer step whose weights the last fit-time validation saw."""
        del pl_module
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking:
            self._validated_at_step = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """The training loop is done (limits reached, early stop, time limit): validate if needed."""
        self._finish(trainer, pl_module, reason="the trainer stopped")

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """A graceful interrupt (Ctrl-C) still leaves a validated checkpoint; real errors are left alone.

        After a ``KeyboardInterrupt`` the model is intact (the interrupt lands between Python operations),
        so its weights are as usable as at any step. Other exceptions may leave it half-updated and are
        re-raised by Lightning without an extra validation.
        """
        if isinstance(exception, KeyboardInterrupt) and trainer.state.fn == TrainerFn.FITTING:
            self._finish(trainer, pl_module, reason="the fit was interrupted (KeyboardInterrupt)")

    def _finish(self, trainer: pl.Trainer, pl_module: pl.LightningModule, reason: str) -> None:
        describe: Any = getattr(pl_module, "unfinished_fit_message", None)
        message = describe() if callable(describe) else None
        if message:
            logger.warning("%s: %s", type(pl_module).__name__, message)
        if self._validated_at_step == trainer.global_step or not trainer.enable_validation:
            return
        logger.warning(
            "%s: %s at step %d without validating the last weights; validating once now so that thresholds "
            "and normalisation statistics exist and a checkpoint is written.",
            type(pl_module).__name__,
            reason,
            trainer.global_step,
        )
        run_validation_loop(trainer)


def run_validation_loop(trainer: pl.Trainer) -> None:
    """Run the fit loop's validation exactly as Lightning's training epoch loop does between batches.

    Using the fit loop's own ``val_loop`` (not ``trainer.validate``, which cannot be called during a fit)
    keeps the trainer in its fitting state, so the logged metrics belong to this fit and checkpoint
    callbacks that save on validation end save now.

    Args:
        trainer: The trainer of the fit that is ending.
    """
    saved_before = {
        id(cb): cb._last_global_step_saved for cb in trainer.checkpoint_callbacks if isinstance(cb, ModelCheckpoint)
    }
    trainer.lightning_module.zero_grad(set_to_none=True)  # free gradient memory, as Lightning does
    trainer.validating = True
    try:
        trainer.fit_loop.epoch_loop.val_loop.run()  # restores each submodule's train/eval mode itself
    finally:
        trainer.training = True
    _save_validated_checkpoints(trainer, saved_before)


def _save_validated_checkpoints(trainer: pl.Trainer, saved_before: dict[int, int]) -> None:
    """Make every ``ModelCheckpoint`` hold the validated state of this step.

    A checkpoint callback that saves at the end of training epochs (Lightning's choice when validation
    runs every epoch, as for MFRNet) either already wrote this step *before* the validation, without
    thresholds, or, after an interrupt, never wrote it. Both get the validated state now, at the same
    file names (an existing file of this step is overwritten, nothing of an earlier step is touched).
    Callbacks that saved during the validation are left alone. Saving goes through the callback's own
    top-k and ``last`` logic (Lightning 2.6 private methods, the ones its ``on_validation_end`` calls), so
    file names, ``monitor`` and ``save_last`` settings are the user's; the tests pin this behaviour.
    """
    step = trainer.global_step
    for callback in trainer.checkpoint_callbacks:
        if not isinstance(callback, ModelCheckpoint):
            continue
        saved_during_validation = callback._last_global_step_saved == step and saved_before[id(callback)] != step
        if saved_during_validation or trainer.fast_dev_run:
            continue
        callback._last_global_step_saved = -1  # allow saving this step again
        candidates = callback._monitor_candidates(trainer)
        callback._save_topk_checkpoint(trainer, candidates)
        callback._save_last_checkpoint(trainer, candidates)


class ValidatesAtFitEnd(ChecksInputs):
    """Mixin for ``AnomalibModule`` subclasses: fit-end validation, crash-safe resume, input checks.

    Adds :class:`ValidateAtFitEnd`, :class:`~.checkpointing.RandomStateCheckpoint`, a default
    :class:`~.checkpointing.PeriodicCheckpoint`, :class:`~anomalib_crr.data.validation.InputFileCheck` and
    :class:`~anomalib_crr.predict.PredictionTable` (scores per file after a prediction), and
    (from :class:`~.input_checks.ChecksInputs`) rejects non-finite input tensors and explains checkpoints
    that do not fit. Lightning lets a model's callbacks replace the trainer's
    callbacks of the same (or a parent) type, so a resume callback the user already passed to the Engine
    or Trainer (e.g. ``PeriodicCheckpoint(every_n_steps=100)``) is kept and the default is not added.
    """

    def configure_callbacks(self) -> list[Callback]:
        """Anomalib's component callbacks, validation at the end of a cut-short fit, resume callbacks."""
        from anomalib_crr.data.validation import InputFileCheck
        from anomalib_crr.predict import PredictionTable

        from .checkpointing import PeriodicCheckpoint, RandomStateCheckpoint

        allow_plugin_enums()  # before the trainer restores a --ckpt_path, which may be the other model's
        callbacks = super().configure_callbacks()  # type: ignore[misc]
        callbacks = [*(callbacks if isinstance(callbacks, Sequence) else [callbacks]), ValidateAtFitEnd()]
        trainer = getattr(self, "_trainer", None)
        present = [type(callback) for callback in (trainer.callbacks if trainer is not None else [])]
        for default in (RandomStateCheckpoint, PeriodicCheckpoint, InputFileCheck, PredictionTable):
            if not any(issubclass(kind, default) for kind in present):
                callbacks.append(default())
        return callbacks
