# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Crash-safe resume: periodic checkpoints, saved random state and distinct random streams per DDP rank.

A fit killed by the OOM killer, a pre-empted node or ``kill -9`` runs no Python cleanup, so only files that
were already on disk survive. anomalib's Engine writes ``weights/lightning/model.ckpt`` when validation
ends, which for CRR is once, after ``stage1_steps + stage2_steps`` steps. :class:`PeriodicCheckpoint`
adds a resumable ``weights/lightning/last.ckpt`` every ``every_n_steps`` optimizer steps, written at the end
of a training epoch and moved into place atomically, so that a kill during the write leaves the previous file
intact.

Why at the end of an epoch: Lightning resumes the optimizer, scheduler, step counters and model buffers
(CRR's stage and hard-mining position, MFRNet's feature statistics) from any checkpoint, but an ordinary
``DataLoader`` cannot resume in the middle of an epoch (Lightning then restarts the epoch's iterator and
warns). At an epoch boundary nothing of the data order is lost, and with :class:`RandomStateCheckpoint`
(which stores the Python, NumPy and torch random states in every checkpoint) the resumed fit draws the same
shuffles, synthetic anomalies and masks as an uninterrupted one.

With DDP every rank is seeded alike by ``seed_everything``; :class:`RandomStateCheckpoint` also gives each
rank its own stream (derived from the common one and the rank), so ranks do not synthesise identical
anomalies or masks for their different images.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint

logger = logging.getLogger(__name__)

DEFAULT_EVERY_N_STEPS = 500
RESUME_CHECKPOINT_NAME = "last.ckpt"


class PeriodicCheckpoint(Checkpoint):
    """Save a resumable checkpoint at the first epoch end after every ``every_n_steps`` optimizer steps.

    A Lightning ``Checkpoint`` (not a ``ModelCheckpoint``, so it never replaces anomalib's ``model.ckpt``
    callback): Lightning runs it after the model's own ``on_train_epoch_end`` (where MFRNet refreshes its map
    statistics), so the file holds the state the next epoch starts from.

    The file (``<default_root_dir>/weights/lightning/last.ckpt`` unless ``dirpath`` is given) is
    overwritten each time, so only the latest is kept. It is a full Lightning checkpoint: pass it to
    ``Engine.fit(..., ckpt_path=...)`` or ``anomalib train ... --ckpt_path`` to resume.

    Args:
        every_n_steps: Optimizer steps between two saves; ``0`` disables periodic saving. Fits shorter than
            this never write the file (the Engine's own ``model.ckpt`` covers them).
        dirpath: Folder of the checkpoint; ``None``: the run's ``weights/lightning`` folder, next to the
            Engine's ``model.ckpt``.
        filename: File name of the checkpoint.

    Example:
        >>> from anomalib.engine import Engine
        >>> from anomalib_crr.models.components import PeriodicCheckpoint
        >>> engine = Engine(callbacks=[PeriodicCheckpoint(every_n_steps=200)])  # replaces the models' default
    """

    def __init__(
        self,
        every_n_steps: int = DEFAULT_EVERY_N_STEPS,
        dirpath: str | Path | None = None,
        filename: str = RESUME_CHECKPOINT_NAME,
    ) -> None:
        if every_n_steps < 0:
            msg = f"every_n_steps must be >= 0 (0 disables periodic checkpoints), got {every_n_steps}"
            raise ValueError(msg)
        self.every_n_steps = every_n_steps
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.filename = filename
        self.last_saved_step: int | None = None
        self._due_mark = 0
        self._writing = False

    @property
    def state_key(self) -> str:
        """One state entry per configuration, as Lightning's own checkpoint callbacks do."""
        return self._generate_state_key(every_n_steps=self.every_n_steps, filename=self.filename)

    def path(self, trainer: pl.Trainer) -> Path:
        """Where the checkpoint is written for this trainer."""
        folder = self.dirpath or Path(trainer.default_root_dir) / "weights" / "lightning"
        return folder / self.filename

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Count periods from the step the fit starts at (0, or the resumed step)."""
        del pl_module
        self._due_mark = trainer.global_step // self.every_n_steps if self.every_n_steps else 0

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Save when at least one period boundary was crossed since the last save."""
        del pl_module
        if not self.every_n_steps or trainer.sanity_checking or trainer.fast_dev_run:
            return
        mark = trainer.global_step // self.every_n_steps
        if mark <= self._due_mark:
            return
        self._due_mark = mark
        self.save(trainer)

    def on_save_checkpoint(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Record this epoch as finished in the loop state of the file being written (not of others).

        The file is written inside ``on_train_epoch_end``, before Lightning counts the epoch as completed.
        An epoch-based fit resumed from it then starts the next epoch cleanly, but a step-based one
        (``max_steps``, as CRR's) is always "restarted" by Lightning: it re-enters the finished epoch with a
        new iterator whose batch counter already says 4 of 4, runs one batch and ends it, so the data order
        and the random stream shift from then on. Marked as completed, with the next epoch's batch counter at
        zero, both kinds resume at the start of the next epoch, as an uninterrupted fit continues.
        """
        del trainer, pl_module
        if not self._writing:
            return
        fit_loop = checkpoint.get("loops", {}).get("fit_loop")
        if not fit_loop:
            return
        epoch_progress = fit_loop["epoch_progress"]
        for scope in ("total", "current"):
            epoch_progress[scope]["completed"] = epoch_progress[scope]["processed"]
        batch_progress = fit_loop["epoch_loop.batch_progress"]
        batch_progress["current"] = dict.fromkeys(batch_progress["current"], 0)
        batch_progress["is_last_batch"] = False

    def save(self, trainer: pl.Trainer) -> Path:
        """Write the checkpoint to a temporary file and rename it, so a kill never leaves a truncated file.

        Called on every rank (``Trainer.save_checkpoint`` synchronises them); rank 0 writes.
        """
        path = self.path(trainer)
        partial = path.with_name(path.name + ".partial")
        if trainer.is_global_zero:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._writing = True
        try:
            trainer.save_checkpoint(partial)
        finally:
            self._writing = False
        if trainer.is_global_zero:
            os.replace(partial, path)
        trainer.strategy.barrier("PeriodicCheckpoint.save")
        self.last_saved_step = trainer.global_step
        logger.info("Resumable checkpoint at step %d: %s", trainer.global_step, path)
        return path


class RandomStateCheckpoint(Callback):
    """Store the random state in checkpoints and restore it on resume; distinct streams per DDP rank.

    Lightning saves model, optimizer, scheduler and loop state but not the Python/NumPy/torch random
    generators, which choose the data order, CRR's synthetic anomalies and MFRNet's masks. Restoring them
    makes a fit resumed from an epoch-end checkpoint draw exactly what the uninterrupted fit would have.

    Under DDP the checkpoint holds rank 0's state; every rank restores it and then derives its own stream
    from it and its rank, so a resumed DDP fit is reproducible and its ranks stay distinct, but its random
    draws differ from those of the uninterrupted DDP fit.
    """

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Give every DDP rank its own random stream (a resumed fit re-derives it in ``load_state_dict``)."""
        del pl_module
        if trainer.world_size > 1:
            reseed_for_rank(trainer.global_rank)

    def state_dict(self) -> dict[str, Any]:
        """The generators' states when the checkpoint is written, as types ``weights_only`` loading accepts."""
        return {"rng_states": collect_random_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the saved generators (called when a fit resumes, before its first batch is drawn)."""
        states = state_dict.get("rng_states")
        if not states:
            return
        restore_random_state(states)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed and torch.distributed.get_world_size() > 1:
            reseed_for_rank(torch.distributed.get_rank())


def collect_random_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) generator states, as tensors, lists and numbers only.

    Lightning's ``_collect_rng_states`` keeps NumPy's state as an ``ndarray``, which a ``weights_only``
    checkpoint load (anomalib 2.7's default) refuses; the NumPy key array is stored as a tensor instead.
    """
    version, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [version, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        states["torch.cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_state(states: dict[str, Any]) -> None:
    """Inverse of :func:`collect_random_state` (CUDA states are skipped on a machine without CUDA)."""
    torch.set_rng_state(states["torch"])
    version, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((version, keys.numpy().astype(np.uint32), position, has_gauss, cached_gaussian))
    version_py, internal, gauss = states["python"]
    random.setstate((version_py, tuple(internal), gauss))
    if "torch.cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["torch.cuda"])


def reseed_for_rank(rank: int) -> int:
    """Reseed Python, NumPy and torch from the current torch state and ``rank``; returns the new seed.

    All ranks hold the same torch state here (``seed_everything`` or a restored checkpoint), so the draw
    below is the same on every rank and the hash makes the per-rank seeds distinct and reproducible.
    """
    common = int(torch.randint(0, 2**62, (), dtype=torch.int64))
    digest = hashlib.sha256(f"{common}:{rank}".encode()).digest()
    seed = int.from_bytes(digest[:8], "little") >> 1
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    return seed
