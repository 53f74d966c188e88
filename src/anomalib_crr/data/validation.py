# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Check a run's image and mask files before it starts, and name the file when one is unusable.

anomalib reads every image with ``PIL.Image.open(path).convert("RGB")`` inside a dataloader worker. That
converts grayscale, palette and RGBA images correctly (they are accepted here), but:

* a truncated file fails mid-fit with ``OSError: image file is truncated``, without the file's name;
* a zero-byte or non-image file fails with a worker traceback (PIL names the file);
* a 16-bit grayscale PNG (PIL mode ``I;16``) is *clipped* to 255 by the conversion: a silently white image;
* a mask whose size differs from its image fails deep inside the metrics with a shape error;
* an empty training folder makes Lightning skip training ("No training batches") and leave no checkpoint.

:class:`InputFileCheck` finds all of these when a fit, test or prediction starts and raises one
:class:`InvalidInputError` that lists every bad file with its problem.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

# PIL modes that ``convert("RGB")`` clips instead of scaling (16-bit and 32-bit integer / float images).
CLIPPED_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
MAX_LISTED = 20


class InvalidInputError(ValueError):
    """One or more input files cannot be used; the message names each file and its problem."""


def check_image(path: str | Path, decode: bool = True) -> tuple[str | None, tuple[int, int] | None]:
    """Return ``(problem, (width, height))`` for one image file; ``problem`` is ``None`` when it is usable.

    Args:
        path: Image file.
        decode: Decode the whole file (finds truncated JPEGs; PNGs are also checked without it).
    """
    path = Path(path)
    try:
        if not path.is_file():
            return "file does not exist", None
        if path.stat().st_size == 0:
            return "file is empty (0 bytes)", None
        with Image.open(path) as image:
            size, mode = image.size, image.mode
            if mode in CLIPPED_MODES:
                return (
                    f"{mode} ({'16-bit' if mode.startswith('I;16') else 'high bit-depth'}) image: anomalib's "
                    "reader (PIL convert('RGB')) clips values above 255 instead of scaling them; convert it to "
                    "8 bits first, e.g. (array / 257).astype('uint8') for 16-bit",
                    size,
                )
            if decode:
                image.load()
            else:
                image.verify()
    except UnidentifiedImageError:
        return "not a readable image (unknown format or corrupt header)", None
    except (OSError, SyntaxError, ValueError) as exc:
        return f"corrupt or truncated image ({exc})", None
    return None, size


def check_samples(
    image_paths: Iterable[str | Path],
    mask_paths: Iterable[str | Path | None] | None = None,
    decode: bool = True,
    workers: int | None = None,
) -> list[str]:
    """Problems of a list of images (and their masks, ``None``/empty for images without one), one line each."""
    images = [str(path) for path in image_paths]
    masks = [str(path) if path else "" for path in mask_paths] if mask_paths is not None else [""] * len(images)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL decodes without holding the GIL
        image_results = list(pool.map(lambda p: check_image(p, decode), images))
        mask_results = list(pool.map(lambda p: check_image(p, decode) if p else (None, None), masks))
    problems = []
    for image, mask, (image_problem, image_size), (mask_problem, mask_size) in zip(
        images, masks, image_results, mask_results, strict=True
    ):
        if image_problem:
            problems.append(f"{image}: {image_problem}")
        if mask_problem and not (mask_size and "bit" in mask_problem):  # a 16-bit mask is still binary
            problems.append(f"{mask} (mask of {image}): {mask_problem}")
        if image_size and mask_size and image_size != mask_size:
            problems.append(
                f"{mask}: mask is {mask_size[0]}x{mask_size[1]} but its image {image} is "
                f"{image_size[0]}x{image_size[1]} (width x height); masks must match their images"
            )
    return problems


def dataset_files(dataset: Any) -> tuple[list[str], list[str | None]] | None:
    """Image and mask paths of an anomalib dataset (``samples``) or ``PredictDataset``; ``None`` if unknown."""
    samples = getattr(dataset, "samples", None)
    if samples is not None and "image_path" in getattr(samples, "columns", ()):
        masks = list(samples["mask_path"]) if "mask_path" in samples.columns else None
        return list(samples["image_path"]), masks or [None] * len(samples)
    filenames = getattr(dataset, "image_filenames", None)
    if filenames is not None:
        return [str(path) for path in filenames], [None] * len(filenames)
    return None


def _datasets(dataloaders: Any) -> Iterator[Any]:
    if dataloaders is None:
        return
    for loader in dataloaders if isinstance(dataloaders, list | tuple) else [dataloaders]:
        dataset = getattr(loader, "dataset", None)
        if dataset is not None:
            yield dataset


def describe_datamodule(datamodule: Any) -> str:
    """Where a datamodule reads its images from, for error messages."""
    parts = [type(datamodule).__name__]
    for name in ("root", "category", "categories", "normal_dir"):
        value = getattr(datamodule, name, None)
        if value not in (None, "", []):
            parts.append(f"{name}={value}")
    return " ".join(parts)


class InputFileCheck(Callback):
    """Check every image and mask of a fit, test or prediction before the first batch.

    Args:
        decode: Decode each file completely (finds truncated JPEGs). About 10-30 ms per megapixel image,
            spread over up to 8 threads; ``False`` checks headers and PNG checksums only.
    """

    def __init__(self, decode: bool = True) -> None:
        self.decode = decode

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Before a fit: the training set must not be empty, and its files (and validation files) must be usable."""
        del pl_module
        datamodule = getattr(trainer, "datamodule", None)
        if stage != "fit" or datamodule is None:
            return
        train = getattr(datamodule, "train_data", None)
        if train is not None and len(train) == 0:
            msg = (
                f"No training images: {describe_datamodule(datamodule)} yields an empty training set "
                "(check the folder of normal training images and the file extensions)."
            )
            raise InvalidInputError(msg)
        self._check([train, getattr(datamodule, "val_data", None)], "fit")

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Before testing: every test image and mask."""
        del pl_module
        self._check(_datasets(trainer.test_dataloaders), "test")

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Before predicting: every image."""
        del pl_module
        self._check(_datasets(trainer.predict_dataloaders), "predict")

    def _check(self, datasets: Iterable[Any], stage: str) -> None:
        images: list[str] = []
        masks: list[str | None] = []
        for dataset in datasets:
            files = dataset_files(dataset) if dataset is not None else None
            if files is not None:
                images.extend(files[0])
                masks.extend(files[1])
        if not images:
            return
        problems = check_samples(images, masks, decode=self.decode)
        if problems:
            listed = "\n  ".join(problems[:MAX_LISTED])
            more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
            msg = f"{len(problems)} unusable input file(s) for {stage}:\n  {listed}{more}"
            raise InvalidInputError(msg)
        logger.debug("Checked %d %s images", len(images), stage)
