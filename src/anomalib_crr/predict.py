# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""A per-file table of prediction scores and labels, written next to anomalib's prediction images.

anomalib's ``Engine.predict`` / ``anomalib predict`` return the predictions in memory and its visualiser
writes one image per file, but nothing writes the scores and labels to disk. :class:`PredictionTable`
adds ``predictions.csv`` and ``predictions.json`` to the run folder (``trainer.default_root_dir``, a new
``vN`` folder for each run, so an earlier run's table is never overwritten). CRR and MFRNet add it to
every prediction by default; other anomalib models can use it through ``Engine(callbacks=[...])``.

Example:
    >>> from anomalib.engine import Engine
    >>> from anomalib_crr import CRR
    >>> model = CRR.load_from_checkpoint("results/CRR/MVTecAD/bottle/latest/weights/lightning/model.ckpt")
    >>> Engine().predict(model=model, data_path="path/to/images")  # doctest: +SKIP
    >>> # -> results/CRR/latest/predictions.csv: image_path,pred_score,pred_label,anomaly_map_max
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

logger = logging.getLogger(__name__)

COLUMNS = ("image_path", "pred_score", "pred_label", "anomaly_map_max", "gt_label")
# What one prediction writes into its folder: the table and anomalib's prediction images.
PREDICTION_OUTPUTS = ("predictions.csv", "predictions.json", "images")


def fresh_version_dir(parent: str | Path) -> Path:
    """Create and return a new ``parent/vN`` folder (``N`` one above the highest there), never an existing one.

    Why: predictions were written to the run's ``latest`` folder, so each call overwrote the previous table and
    images. ``mkdir`` without ``exist_ok`` makes two calls at once take different folders. Unlike anomalib's
    ``create_versioned_dir`` this moves no ``latest`` link, so a failed call changes nothing that others read.
    """
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    numbers = [int(path.name[1:]) for path in parent.glob("v*") if path.name[1:].isdigit()]
    number = max(numbers, default=-1) + 1
    while True:
        folder = parent / f"v{number}"
        try:
            folder.mkdir()
        except FileExistsError:
            number += 1
            continue
        return folder


def _values(tensor: Any, size: int) -> list[Any]:
    """One Python value per image from a ``(B,)``/``(B, 1)`` tensor (``None`` when absent)."""
    if tensor is None:
        return [None] * size
    flat = torch.as_tensor(tensor).detach().flatten(1) if torch.as_tensor(tensor).dim() > 1 else tensor
    values = flat.reshape(size, -1)[:, 0] if flat.dim() > 1 else flat
    return [value.item() for value in values.cpu()]


def batch_rows(batch: Any) -> list[dict[str, Any]]:
    """Table rows of one anomalib prediction batch."""
    paths = list(getattr(batch, "image_path", None) or [])
    size = len(paths)
    if size == 0:
        return []
    anomaly_map = getattr(batch, "anomaly_map", None)
    map_max = _values(anomaly_map.flatten(1).amax(dim=1), size) if anomaly_map is not None else [None] * size
    labels = _values(getattr(batch, "pred_label", None), size)
    truths = _values(getattr(batch, "gt_label", None), size)
    rows = []
    for path, score, label, peak, truth in zip(
        paths, _values(batch.pred_score, size), labels, map_max, truths, strict=True
    ):
        rows.append(
            {
                "image_path": str(path),
                "pred_score": float(score),
                "pred_label": None if label is None else int(bool(label)),
                "anomaly_map_max": None if peak is None else float(peak),
                "gt_label": None if truth is None else int(truth),
            }
        )
    return rows


class PredictionTable(Callback):
    """Write ``predictions.csv`` and ``predictions.json`` (one row per image) at the end of a prediction.

    Scores and labels are the post-processed ones (normalised score in [0, 1], label from the image
    threshold), as in ``Engine.predict``'s return value and the prediction images.

    Args:
        dirpath: Output folder; ``None``: the run folder (``trainer.default_root_dir``).
        filename: Stem of the two files.
    """

    def __init__(self, dirpath: str | Path | None = None, filename: str = "predictions") -> None:
        self.dirpath = Path(dirpath) if dirpath is not None else None
        self.filename = filename
        self.rows: list[dict[str, Any]] = []
        self.paths: list[Path] = []

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Start an empty table."""
        del trainer, pl_module
        self.rows, self.paths = [], []

    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Collect the batch's rows (``outputs`` is the updated batch anomalib's ``predict_step`` returns)."""
        del trainer, pl_module, batch_idx, dataloader_idx
        self.rows.extend(batch_rows(outputs if outputs is not None else batch))

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Gather the rows of all ranks and write both files from rank 0."""
        del pl_module
        rows = self.rows
        if trainer.world_size > 1 and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        if not trainer.is_global_zero or not rows:
            return
        folder = self.dirpath or Path(trainer.default_root_dir)
        folder.mkdir(parents=True, exist_ok=True)
        csv_path, json_path = folder / f"{self.filename}.csv", folder / f"{self.filename}.json"
        with csv_path.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(rows)
        json_path.write_text(json.dumps(rows, indent=1))
        self.paths = [csv_path, json_path]
        logger.info("Wrote %d predictions to %s and %s", len(rows), csv_path, json_path)
