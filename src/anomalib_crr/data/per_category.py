# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Per-category test metrics for multi-class datamodules, and their mean (the multi-class papers' convention).

Multi-class papers report the mean of per-category metrics, not one AUROC pooled over all test images.
This callback keeps one copy of each of the model's test metrics per category, feeds every test batch's
images to the copies of their own category, and at the end logs ``<category>/<metric>`` and
``mean/<metric>``, prints a table and writes ``per_category_metrics.csv`` and ``.json`` to the run's folder.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

logger = logging.getLogger(__name__)

MEAN = "mean"
FILENAME = "per_category_metrics"


def select_samples(batch: Any, indices: Sequence[int]) -> SimpleNamespace:
    """The batch's fields restricted to ``indices`` (tensors and lists indexed on their first dimension)."""
    size = len(batch.image_path)
    index = torch.as_tensor(list(indices), dtype=torch.long)
    selected: dict[str, Any] = {}
    for name in getattr(batch, "__dataclass_fields__", {}):
        value = getattr(batch, name)
        if isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == size:
            value = value[index.to(value.device)]
        elif isinstance(value, list) and len(value) == size:
            value = [value[i] for i in indices]
        selected[name] = value
    return SimpleNamespace(**selected)


class PerCategoryMetrics(Callback):
    """Compute every test metric of the model's evaluator per category, plus the mean over categories.

    It is active only when the trainer's datamodule has ``categories`` and ``category_of(image_paths)`` (the
    multi-class datamodules of :mod:`anomalib_crr.data` add it themselves) and the model has an evaluator.

    Args:
        output_dir: Where to write the CSV/JSON; ``None`` = the trainer's ``default_root_dir`` (the run folder).
    """

    def __init__(self, output_dir: str | Path | None = None) -> None:
        super().__init__()
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self._metrics: dict[str, list[Any]] = {}
        self._pending: Any = None
        self._datamodule: Any = None
        self.results: dict[str, dict[str, float]] = {}

    def on_test_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Fresh copies of the model's test metrics for every category of the datamodule."""
        datamodule = getattr(trainer, "datamodule", None)
        evaluator = getattr(pl_module, "evaluator", None)
        metrics = list(getattr(evaluator, "test_metrics", []) or [])
        self._metrics, self._pending, self._datamodule = {}, None, datamodule
        if not hasattr(datamodule, "category_of") or not metrics:
            return
        if MEAN in datamodule.categories:
            msg = f"A category may not be called '{MEAN}': that row holds the mean over categories"
            raise ValueError(msg)
        for category in datamodule.categories:
            copies = [copy.deepcopy(metric) for metric in metrics]
            for metric in copies:
                metric.reset()
            self._metrics[category] = copies

    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Remember the batch; it is read at the next batch start or at epoch end.

        Callbacks that the datamodule adds run before the model's own (pre-/post-processor, evaluator), so the
        post-processor has not yet set ``pred_label``/``pred_mask`` here. It updates the same batch object in
        place, so reading it one hook later sees exactly what the evaluator sees.
        """
        del trainer, pl_module, outputs, batch_idx, dataloader_idx
        if self._metrics:
            self._flush()
            self._pending = batch

    def on_test_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        """Process the previous batch, now post-processed."""
        del pl_module, batch, batch_idx, dataloader_idx
        self._datamodule = trainer.datamodule
        self._flush()

    def _flush(self) -> None:
        """Send each image of the pending (post-processed) batch to the metrics of its category."""
        batch, self._pending = self._pending, None
        if batch is None:
            return
        categories = self._datamodule.category_of(batch.image_path)
        for category in dict.fromkeys(categories):
            indices = [i for i, c in enumerate(categories) if c == category]
            subset = select_samples(batch, indices)
            for metric in self._metrics[category]:
                metric.update(subset)

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Compute, log, print and save the per-category metrics and their mean."""
        if not self._metrics:
            return
        self._flush()
        results: dict[str, dict[str, float]] = {}
        for category, metrics in self._metrics.items():
            results[category] = {metric.name: float(metric.compute()) for metric in metrics}
        names = list(next(iter(results.values())))
        results[MEAN] = {name: sum(row[name] for row in results.values()) / len(results) for name in names}
        self.results = results
        for category, row in results.items():
            for name, value in row.items():
                pl_module.log(f"{category}/{name}", value, sync_dist=False)
        if trainer.is_global_zero:
            self._print(results, names)
            self._save(results, names, Path(self.output_dir or trainer.default_root_dir))

    @staticmethod
    def _print(results: dict[str, dict[str, float]], names: list[str]) -> None:
        header = ["category", *names]
        rows = [[category, *(f"{row[name]:.4f}" for name in names)] for category, row in results.items()]
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]
        lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
        lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        print("\nPer-category test metrics (mean = mean over categories)\n" + "\n".join(lines) + "\n")

    @staticmethod
    def _save(results: dict[str, dict[str, float]], names: list[str], folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / f"{FILENAME}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["category", *names])
            for category, row in results.items():
                writer.writerow([category, *(row[name] for name in names)])
        (folder / f"{FILENAME}.json").write_text(json.dumps(results, indent=2))
        logger.info("Per-category metrics written to %s", folder / f"{FILENAME}.csv")
