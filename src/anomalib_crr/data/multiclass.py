# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Multi-class (unified) datamodules: one training set made of the normal images of several categories.

anomalib 2.7 datamodules take a single ``category``. These subclasses build anomalib's own per-category
datasets (``MVTecADDataset``, ``VisaDataset``, ``FolderDataset``) for every requested category, keep each
sample's category in a ``category`` column, and concatenate them; anomalib's download, validation/test
split and augmentation logic then runs unchanged on the union. Results go to
``results/<Model>/<Datamodule>/multiclass/vN``.

When such a datamodule is set up by a trainer, it adds a :class:`PerCategoryMetrics` callback, so
``engine.test`` and ``anomalib test`` also report every test metric per category and their mean.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from anomalib.data import Folder, MVTecAD, Visa
from anomalib.data.datasets.base.image import AnomalibDataset
from anomalib.data.datasets.image.folder import FolderDataset
from anomalib.data.datasets.image.mvtecad import CATEGORIES as MVTEC_CATEGORIES
from anomalib.data.datasets.image.mvtecad import MVTecADDataset
from anomalib.data.datasets.image.visa import CATEGORIES as VISA_CATEGORIES
from anomalib.data.datasets.image.visa import VisaDataset
from anomalib.data.utils import Split

from .per_category import PerCategoryMetrics

logger = logging.getLogger(__name__)

MULTICLASS = "multiclass"


def resolve_categories(
    categories: Sequence[str] | str | None,
    known: Sequence[str] | None,
    dataset: str,
    folders: Sequence[Path] = (),
) -> list[str]:
    """Validate requested categories; ``None`` means all known ones.

    A name is accepted when it is one of the dataset's official categories or a folder of that name exists in one
    of ``folders`` (a local dataset in the same layout, e.g. MVTec 3D-AD RGB images in MVTec AD layout).

    Raises:
        ValueError: For an empty list, duplicates, or a name that is neither a category nor a folder.
    """
    if categories is None:
        if not known:
            msg = f"{dataset}: pass categories explicitly (no default category list)"
            raise ValueError(msg)
        return list(known)
    requested = [categories] if isinstance(categories, str) else [str(c) for c in categories]
    if not requested:
        msg = f"{dataset}: categories must name at least one category"
        raise ValueError(msg)
    duplicates = sorted({c for c in requested if requested.count(c) > 1})
    if duplicates:
        msg = f"{dataset}: categories listed twice: {duplicates}"
        raise ValueError(msg)
    if known is not None:
        unknown = [c for c in requested if c not in known and not any((Path(f) / c).is_dir() for f in folders)]
        if unknown:
            plural = "y" if len(unknown) == 1 else "ies"
            where = f" and no such folder in {[str(f) for f in folders]}" if folders else ""
            msg = f"{dataset}: unknown categor{plural} {unknown}: not one of {list(known)}{where}"
            raise ValueError(msg)
    return requested


def _check_category(train: AnomalibDataset, test: AnomalibDataset, category: str, where: Path) -> None:
    """A category must have normal training images and anomalous test images; name it when it does not."""
    if len(train.samples) == 0:
        msg = f"Category '{category}' has no training images (looked in {where})."
        raise ValueError(msg)
    if len(test.samples) == 0 or int((test.samples["label_index"] == 1).sum()) == 0:
        msg = (
            f"Category '{category}' has no anomalous test images (looked in {where}); per-category AUROC needs "
            "both normal and anomalous test images."
        )
        raise ValueError(msg)


def _has_test_anomalies(category_root: Path) -> bool:
    """Whether an MVTec-layout category has a non-empty defect folder under ``test``."""
    test_root = category_root / "test"
    if not test_root.is_dir():
        return False
    return any(d.is_dir() and d.name != "good" and any(d.iterdir()) for d in test_root.iterdir())


def _tag_and_concatenate(datasets: list[tuple[str, AnomalibDataset]]) -> AnomalibDataset:
    """Add a ``category`` column to each dataset's samples and concatenate them (anomalib's ``+``)."""
    for category, dataset in datasets:
        samples = dataset.samples.copy()
        samples["category"] = category
        dataset.samples = samples
    combined = datasets[0][1]
    for _, dataset in datasets[1:]:
        combined = combined + dataset
    return combined


class _MultiClassMixin:
    """Shared behaviour: per-category datasets, category lookup by image path, per-category test metrics."""

    categories: list[str]
    train_data: AnomalibDataset
    test_data: AnomalibDataset
    trainer: Any

    def _build(self, split: Split, category: str) -> AnomalibDataset:
        raise NotImplementedError

    def _category_root(self, category: str) -> Path:
        raise NotImplementedError

    def _setup(self, _stage: str | None = None) -> None:
        train, test = [], []
        for category in self.categories:
            try:
                train_data, test_data = self._build(Split.TRAIN, category), self._build(Split.TEST, category)
            except (RuntimeError, FileNotFoundError, ValueError, KeyError) as exc:
                where = self._category_root(category)
                if str(exc).startswith(f"Category '{category}'"):
                    raise
                if not _has_test_anomalies(where):
                    msg = f"Category '{category}' has no anomalous test images (looked in {where / 'test'})."
                else:
                    msg = f"Category '{category}' could not be read from {where}: {exc}"
                raise ValueError(msg) from exc
            _check_category(train_data, test_data, category, self._category_root(category))
            train.append((category, train_data))
            test.append((category, test_data))
        self.train_data = _tag_and_concatenate(train)
        self.test_data = _tag_and_concatenate(test)

    def setup(self, stage: str | None = None) -> None:
        """Anomalib's setup (splits, augmentations), then register the per-category test metrics on the trainer."""
        super().setup(stage)  # type: ignore[misc]
        trainer = getattr(self, "trainer", None)
        if trainer is not None and not any(isinstance(cb, PerCategoryMetrics) for cb in trainer.callbacks):
            trainer.callbacks.append(PerCategoryMetrics())

    def category_of(self, image_paths: Sequence[str]) -> list[str]:
        """The category of each image path (every sample's category is kept in ``samples['category']``)."""
        lookup = getattr(self, "_category_by_path", None)
        if lookup is None:
            lookup = {}
            for name in ("train_data", "val_data", "test_data"):
                dataset = getattr(self, name, None)
                if dataset is not None and "category" in dataset.samples:
                    lookup.update(zip(dataset.samples["image_path"], dataset.samples["category"], strict=True))
            self._category_by_path = lookup
        return [lookup[str(path)] for path in image_paths]


class MultiClassMVTecAD(_MultiClassMixin, MVTecAD):
    """MVTec AD with several categories in one training and test set (the unified multi-class setting).

    Args:
        root: MVTec AD root (downloaded there by ``prepare_data`` if a category is missing).
        categories: Category names; ``None`` = all 15.
        **kwargs: Any other ``MVTecAD`` argument (batch sizes, workers, augmentations, split modes, seed).

    Example:
        >>> from anomalib_crr.data import MultiClassMVTecAD
        >>> datamodule = MultiClassMVTecAD(root="./datasets/MVTecAD", categories=["bottle", "cable"])
    """

    def __init__(
        self, root: Path | str = "./datasets/MVTecAD", categories: Sequence[str] | None = None, **kwargs: Any
    ) -> None:
        if "category" in kwargs:
            msg = "MultiClassMVTecAD takes `categories` (a list), not `category`"
            raise TypeError(msg)
        self.categories = resolve_categories(categories, MVTEC_CATEGORIES, "MultiClassMVTecAD", [Path(root)])
        super().__init__(root=root, category=self.categories[0], **kwargs)
        self.category = MULTICLASS

    def _category_root(self, category: str) -> Path:
        return Path(self.root) / category

    def _build(self, split: Split, category: str) -> AnomalibDataset:
        return MVTecADDataset(split=split, root=self.root, category=category)

    def prepare_data(self) -> None:
        """Download MVTec AD (once) if any requested category is missing."""
        missing = [c for c in self.categories if not (Path(self.root) / c).is_dir()]
        if missing:
            self.category = missing[0]  # anomalib's prepare_data downloads the whole dataset for a missing category
            try:
                super().prepare_data()
            finally:
                self.category = MULTICLASS


class MultiClassVisA(_MultiClassMixin, Visa):
    """VisA with several categories in one training and test set.

    Args:
        root: VisA root; anomalib's ``prepare_data`` downloads it and writes the 1-class split to ``visa_pytorch``.
        categories: Category names; ``None`` = all 12.
        **kwargs: Any other ``Visa`` argument.
    """

    def __init__(self, root: Path | str = "./datasets/visa", categories: Sequence[str] | None = None, **kwargs: Any):
        if "category" in kwargs:
            msg = "MultiClassVisA takes `categories` (a list), not `category`"
            raise TypeError(msg)
        self.categories = resolve_categories(
            categories, VISA_CATEGORIES, "MultiClassVisA", [Path(root), Path(root) / "visa_pytorch"]
        )
        super().__init__(root=root, category=self.categories[0], **kwargs)
        self.category = MULTICLASS

    def _category_root(self, category: str) -> Path:
        return Path(self.split_root) / category

    def _build(self, split: Split, category: str) -> AnomalibDataset:
        return VisaDataset(split=split, root=self.split_root, category=category)

    def prepare_data(self) -> None:
        """Download and split each requested category that is not prepared yet (anomalib's own logic)."""
        try:
            for category in self.categories:
                if not (Path(self.split_root) / category).is_dir():
                    self.category = category
                    super().prepare_data()
        finally:
            self.category = MULTICLASS


class MultiClassFolder(_MultiClassMixin, Folder):
    """Several Folder-style categories under one root, each with the same sub-folder layout.

    ``root/<category>/<normal_dir>`` holds the normal training images, ``root/<category>/<normal_test_dir>`` the
    normal test images, and so on. When ``abnormal_dir`` is ``None``, every sub-folder of ``<category>/test``
    other than ``good`` is a defect folder (MVTec layout), with masks in ``<category>/ground_truth/<defect>``
    where that folder exists.

    Args:
        name: Dataset name (used in the results path).
        root: Folder holding one sub-folder per category.
        categories: Category sub-folders; ``None`` = every sub-folder of ``root`` that has ``normal_dir``.
        normal_dir: Normal training images, relative to the category folder.
        abnormal_dir: Anomalous test images (folder or list), relative to the category folder; ``None``: auto.
        normal_test_dir: Normal test images, relative to the category folder.
        mask_dir: Masks (folder or list, paired with ``abnormal_dir``); ``None``: auto when ``abnormal_dir`` is auto.
        extensions: Image extensions (e.g. ``[".jpg"]``); ``None``: anomalib's defaults.
        val_split_mode: Defaults to ``same_as_test`` (MVTec convention) so the test set is not halved.
        **kwargs: Any other ``Folder`` argument.
    """

    def __init__(
        self,
        name: str = "multiclass_folder",
        root: Path | str = "./datasets/folder",
        categories: Sequence[str] | None = None,
        normal_dir: str = "train/good",
        abnormal_dir: str | Sequence[str] | None = None,
        normal_test_dir: str | None = "test/good",
        mask_dir: str | Sequence[str] | None = None,
        extensions: Sequence[str] | None = None,
        val_split_mode: str = "same_as_test",
        **kwargs: Any,
    ) -> None:
        if "category" in kwargs:
            msg = "MultiClassFolder takes `categories` (a list), not `category`"
            raise TypeError(msg)
        root = Path(root)
        if not root.is_dir():
            msg = f"MultiClassFolder root not found: {root}"
            raise FileNotFoundError(msg)
        if categories is None:
            found = sorted(p.name for p in root.iterdir() if (p / normal_dir).is_dir())
            if not found:
                msg = f"MultiClassFolder: no category folder with '{normal_dir}' under {root}"
                raise ValueError(msg)
        self.categories = resolve_categories(categories if categories is not None else found, None, name)
        missing = [c for c in self.categories if not (root / c).is_dir()]
        if missing:
            plural = "y" if len(missing) == 1 else "ies"
            msg = f"MultiClassFolder: unknown categor{plural} {missing}: no such folder in {root}"
            raise ValueError(msg)
        self._abnormal_dir_arg, self._mask_dir_arg = abnormal_dir, mask_dir
        super().__init__(
            name=name,
            root=root,
            normal_dir=normal_dir,
            abnormal_dir=abnormal_dir,
            normal_test_dir=normal_test_dir,
            mask_dir=mask_dir,
            extensions=tuple(extensions) if extensions is not None else None,
            val_split_mode=val_split_mode,
            **kwargs,
        )
        self.category = MULTICLASS

    def _category_root(self, category: str) -> Path:
        return Path(self.root) / category

    def _defect_dirs(self, category: str) -> tuple[list[str] | str | None, list[str] | str | None]:
        if self._abnormal_dir_arg is not None:
            return self._abnormal_dir_arg, self._mask_dir_arg
        test_root = self._category_root(category) / "test"
        defects = (
            sorted(p.name for p in test_root.iterdir() if p.is_dir() and p.name != "good") if test_root.is_dir() else []
        )
        if not defects:
            return None, None
        masks = [f"ground_truth/{d}" for d in defects]
        has_masks = all((self._category_root(category) / m).is_dir() for m in masks)
        return [f"test/{d}" for d in defects], masks if has_masks else None

    def _build(self, split: Split, category: str) -> AnomalibDataset:
        abnormal_dir, mask_dir = self._defect_dirs(category)
        category_root = self._category_root(category)
        if not (category_root / self.normal_dir).is_dir() or not any((category_root / self.normal_dir).iterdir()):
            msg = (
                f"Category '{category}' has no training images: '{category_root / self.normal_dir}' is missing or empty"
            )
            raise ValueError(msg)
        return FolderDataset(
            name=self.name,
            split=split,
            root=category_root,
            normal_dir=self.normal_dir,
            abnormal_dir=abnormal_dir,
            normal_test_dir=self.normal_test_dir,
            mask_dir=mask_dir,
            extensions=self.extensions,
        )
