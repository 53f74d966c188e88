# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""What a job keeps for the pictures: a few anomaly maps and every test image's score.

- **Selection** (:func:`select_samples`): per category, up to ``num_defective`` defective test images spread over
  the defect types (round-robin over the sorted types, each type's sorted paths shuffled by a generator seeded
  with the category name) and ``num_good`` good ones. It depends only on the test set's paths and labels, so
  every model of a run, in every mode and seed, is shown on the same images.
- **Maps** (``maps.npz``): the post-processed anomaly map and predicted mask of each selected image, at the
  map's resolution, float16 / bool, with the image and mask paths, categories and the normalisation used.
  anomalib's post-processor normalises maps so that 0.5 is the model's pixel threshold. The file is capped at
  :data:`MAX_MAPS_BYTES`: larger maps are halved in resolution until they fit, and the factor is recorded.
- **Scores** (``scores.csv``): every test image's path, category, defect type, label, score and predicted label.
- **Defect maps** (``defect_maps.npz``): for every test image that has a ground-truth mask, its post-processed
  anomaly map and mask reduced to at most :data:`DEFECT_MAP_SIZE` px on the longer side (see
  :func:`downsample_map_and_mask`), float16 / bool, in the order of ``scores.csv``, for the pixel metrics per
  defect type (:mod:`.defects`). About 3 bytes a pixel before compression: 1,725 MVTec AD test images at 64²
  are about 21 MB raw and a few MB compressed.
"""

from __future__ import annotations

import random
import zlib
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

MAPS = "maps.npz"
SCORES = "scores.csv"
DEFECT_MAPS = "defect_maps.npz"
DEFECT_MAP_SIZE = 64  # longest side, in pixels, of the maps and masks kept for every test image
MAX_MAPS_BYTES = 8 * 1024 * 1024  # per job: a 15-category job at 256² with 8 images each is about 16 MB raw
GOOD = "good"


def defect_type(path: str, label: int) -> str:
    """The defect type of a test image: its folder name in the MVTec layout (``good`` for normal images)."""
    return GOOD if int(label) == 0 else Path(path).parent.name


def select_samples(
    paths: Sequence[str],
    labels: Sequence[int],
    categories: Sequence[str],
    num_defective: int = 6,
    num_good: int = 2,
) -> list[str]:
    """The test images to show, per category: defects spread over their types, then good ones (see module doc)."""
    by_category: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for path, label, category in zip(paths, labels, categories, strict=True):
        by_category[category].append((str(path), int(label)))
    chosen: list[str] = []
    for category in sorted(by_category):
        rng = random.Random(zlib.crc32(category.encode()))
        items = sorted(by_category[category])
        by_type: dict[str, list[str]] = defaultdict(list)
        for path, label in items:
            if label:
                by_type[defect_type(path, label)].append(path)
        queues = []
        for kind in sorted(by_type):
            group = sorted(by_type[kind])
            rng.shuffle(group)
            queues.append(group)
        defective: list[str] = []
        while len(defective) < num_defective and any(queues):
            for queue in queues:
                if queue and len(defective) < num_defective:
                    defective.append(queue.pop(0))
        good = sorted(path for path, label in items if not label)
        chosen += defective + rng.sample(good, min(num_good, len(good)))
    return chosen


def downsample_map_and_mask(anomaly_map: Any, gt_mask: Any, size: int = DEFECT_MAP_SIZE) -> tuple[Any, Any]:
    """A batch's anomaly maps and ground-truth masks reduced to at most ``size`` px on the longer side.

    Maps are area-averaged (adaptive average pooling): each kept pixel is the mean score of the pixels it covers,
    with no aliasing of isolated peaks. Masks are max-pooled: a kept pixel is defective when any pixel it covers
    is, so a defect thinner than the pooling window (a scratch, a crack) survives instead of vanishing as it would
    with nearest-neighbour sampling; the price is that defects grow by up to one pooled pixel at their border.
    Both are pooled to the same grid, computed from the map's shape (the mask is pooled to it whatever its own
    resolution). Inputs ``(B, H, W)`` or ``(B, 1, H, W)``; returns float32 maps and bool masks, ``(B, h, w)``.
    """
    import torch

    maps = torch.as_tensor(anomaly_map).detach().float().cpu()
    masks = torch.as_tensor(gt_mask).detach().cpu().float()
    maps = maps.reshape(maps.shape[0], 1, *maps.shape[-2:])
    masks = masks.reshape(masks.shape[0], 1, *masks.shape[-2:])
    height, width = maps.shape[-2:]
    scale = min(1.0, size / max(height, width))
    target = (max(1, round(height * scale)), max(1, round(width * scale)))
    if tuple(maps.shape[-2:]) != target:
        maps = torch.nn.functional.adaptive_avg_pool2d(maps, target)
    if tuple(masks.shape[-2:]) != target:
        masks = torch.nn.functional.adaptive_max_pool2d(masks, target)
    return maps[:, 0], masks[:, 0] > 0.5


class SampleRecorder:
    """A Lightning callback's state: every test image's score, and the maps of the selected images.

    A batch is read one batch later (or at epoch end): the model's post-processor normalises each batch in
    place after the callbacks' ``on_test_batch_end`` ran, so by then it holds what the evaluator saw.
    """

    def __init__(self, job_categories: Sequence[str]) -> None:
        from lightning.pytorch import Callback

        recorder = self
        self.job_categories = list(job_categories)
        self.selected: set[str] = set()
        self.scores: list[dict[str, Any]] = []
        self.maps: dict[str, dict[str, Any]] = {}
        self.defect_maps: list[tuple[str, np.ndarray, np.ndarray]] = []  # (path, map, mask) per masked image
        self.pending: Any = None
        self.category_of: Any = None
        self.normalisation = "raw model output"
        self.mean_std: tuple[Any, Any] | None = None
        self.error: str | None = None

        class _Callback(Callback):
            def on_test_start(self, trainer: Any, pl_module: Any) -> None:
                recorder.guarded(recorder.start, trainer.datamodule, pl_module)

            def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, *args: Any) -> None:
                del trainer, pl_module, outputs, args
                recorder.guarded(recorder.flush)
                recorder.pending = batch

            def on_test_epoch_end(self, trainer: Any, pl_module: Any) -> None:
                del trainer, pl_module
                recorder.guarded(recorder.flush)

        self.callback = _Callback()

    def guarded(self, step: Any, *args: Any) -> None:
        """Run a recording step; a failure turns recording off (with the reason) instead of failing the job."""
        if self.error is not None:
            return
        try:
            step(*args)
        except Exception as exc:  # the pictures are an extra: the job's metrics must not depend on them
            self.error = f"{type(exc).__name__}: {exc}"
            self.maps.clear()
            self.defect_maps.clear()

    def start(self, datamodule: Any, model: Any) -> None:
        """Choose the images from the test set and note how the model's post-processor scales its outputs."""
        samples = datamodule.test_data.samples
        paths = [str(p) for p in samples["image_path"]]
        if hasattr(datamodule, "category_of"):
            self.category_of = dict(zip(paths, datamodule.category_of(paths), strict=True))
        else:
            self.category_of = dict.fromkeys(paths, self.job_categories[0])
        categories = [self.category_of[p] for p in paths]
        self.selected = set(select_samples(paths, list(samples["label_index"]), categories))
        self.mean_std = _normalize_constants(getattr(model, "pre_processor", None))
        post = getattr(model, "post_processor", None)
        if post is not None and getattr(post, "enable_normalization", False):
            self.normalisation = "anomalib normalised: 0.5 = the model's threshold (image and pixel)"

    def flush(self) -> None:
        """Read the previous batch (now post-processed)."""
        batch, self.pending = self.pending, None
        if batch is None:
            return
        paths = [str(p) for p in batch.image_path]
        mask_paths = list(batch.mask_path) if getattr(batch, "mask_path", None) is not None else [""] * len(paths)
        if batch.anomaly_map is not None and getattr(batch, "gt_mask", None) is not None:
            small_maps, small_masks = downsample_map_and_mask(batch.anomaly_map, batch.gt_mask)
            for index, path in enumerate(paths):
                self.defect_maps.append(
                    (path, small_maps[index].numpy().astype(np.float16), small_masks[index].numpy().astype(bool))
                )
        for index, path in enumerate(paths):
            label = int(batch.gt_label[index])
            score = float(batch.pred_score[index]) if batch.pred_score is not None else float("nan")
            predicted = int(batch.pred_label[index]) if batch.pred_label is not None else -1
            category = (self.category_of or {}).get(path, self.job_categories[0])
            self.scores.append(
                {
                    "image_path": path,
                    "category": category,
                    "defect_type": defect_type(path, label),
                    "gt_label": label,
                    "pred_score": score,
                    "pred_label": predicted,
                }
            )
            if path in self.selected and batch.anomaly_map is not None:
                mask = batch.pred_mask[index] if batch.pred_mask is not None else None
                anomaly_map = batch.anomaly_map[index].detach().float().cpu().squeeze()
                self.maps[path] = {
                    "anomaly_map": anomaly_map.numpy(),
                    "view": self._view(batch.image[index], anomaly_map.shape[-2:]),
                    "pred_mask": None if mask is None else mask.detach().cpu().numpy().squeeze().astype(bool),
                    "mask_path": str(mask_paths[index] or ""),
                    "category": category,
                    "gt_label": label,
                }

    def _view(self, image: Any, size: Any) -> np.ndarray:
        """The image as the model saw it (pre-processed, de-normalised), uint8 RGB at the map's resolution."""
        import torch

        view = image.detach().float().cpu()
        if self.mean_std is not None:
            mean, std = self.mean_std
            view = view * torch.as_tensor(std).view(-1, 1, 1) + torch.as_tensor(mean).view(-1, 1, 1)
        if tuple(view.shape[-2:]) != tuple(size):
            view = torch.nn.functional.interpolate(view[None], size=tuple(size), mode="bilinear", antialias=True)[0]
        view = view.expand(3, -1, -1) if view.shape[0] == 1 else view[:3]
        return (view.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()

    def save(self, job_dir: Path) -> dict[str, Any]:
        """Write ``scores.csv`` and ``maps.npz``; returns what the result records about them."""
        import pandas as pd

        if self.error is not None:
            return {"maps": None, "scores": None, "error": f"pictures not recorded: {self.error}"}
        pd.DataFrame(self.scores).to_csv(job_dir / SCORES, index=False)
        defect = self._save_defect_maps(job_dir)
        paths = sorted(self.maps)
        if not paths:
            return {"maps": None, "scores": SCORES, "normalisation": self.normalisation, **defect}
        maps = np.stack([self.maps[p]["anomaly_map"] for p in paths]).astype(np.float16)
        masks = [self.maps[p]["pred_mask"] for p in paths]
        pred_mask = np.stack(masks) if all(m is not None for m in masks) else np.zeros(maps.shape, bool)
        views = np.stack([self.maps[p]["view"] for p in paths])
        factor = 1
        while maps.nbytes + pred_mask.nbytes + views.nbytes > MAX_MAPS_BYTES and min(maps.shape[-2:]) > 16:
            maps, pred_mask, views = maps[:, ::2, ::2], pred_mask[:, ::2, ::2], views[:, ::2, ::2]
            factor *= 2
        np.savez_compressed(
            job_dir / MAPS,
            anomaly_map=maps,
            pred_mask=pred_mask,
            view=views,
            image_path=np.array(paths),
            mask_path=np.array([self.maps[p]["mask_path"] for p in paths]),
            category=np.array([self.maps[p]["category"] for p in paths]),
            gt_label=np.array([self.maps[p]["gt_label"] for p in paths]),
            normalisation=np.array(self.normalisation),
            downsample=np.array(factor),
        )
        return {
            "maps": MAPS,
            "scores": SCORES,
            "normalisation": self.normalisation,
            "map_downsample": factor,
            **defect,
        }

    def _save_defect_maps(self, job_dir: Path) -> dict[str, Any]:
        """Write ``defect_maps.npz`` (every masked test image's small map and mask, in ``scores.csv`` order)."""
        if not self.defect_maps or len({m.shape for _, m, _ in self.defect_maps}) != 1:
            return {"defect_maps": None}  # no masks, or maps of different sizes (not produced by anomalib)
        np.savez_compressed(
            job_dir / DEFECT_MAPS,
            anomaly_map=np.stack([m for _, m, _ in self.defect_maps]),
            gt_mask=np.stack([k for _, _, k in self.defect_maps]),
            image_path=np.array([p for p, _, _ in self.defect_maps]),
            normalisation=np.array(self.normalisation),
            max_size=np.array(DEFECT_MAP_SIZE),
        )
        return {"defect_maps": DEFECT_MAPS, "defect_map_shape": list(self.defect_maps[0][1].shape)}


def load_maps(job_dir: Path) -> dict[str, Any] | None:
    """A job's stored maps (``None`` if it kept none)."""
    path = job_dir / MAPS
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def load_defect_maps(result: dict[str, Any], run_dir: Path | None = None) -> dict[str, Any] | None:
    """A finished job's ``defect_maps.npz`` (``None`` when it kept none); looked up as :func:`read_scores` does."""
    candidates = [Path(str(result.get("log", ""))).parent / DEFECT_MAPS]
    if run_dir is not None:
        candidates.insert(0, Path(run_dir) / "jobs" / str(result.get("job_id", "")) / DEFECT_MAPS)
    for path in candidates:
        if path.is_file():
            with np.load(path, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
    return None


def _normalize_constants(pre_processor: Any) -> tuple[list[float], list[float]] | None:
    """Mean and std of the pre-processor's ``Normalize`` transform, to show images as the model saw them."""
    from torchvision.transforms import v2

    transform = getattr(pre_processor, "transform", None)
    stack = [transform]
    while stack:
        item = stack.pop()
        if isinstance(item, v2.Normalize):
            return list(item.mean), list(item.std)
        stack.extend(getattr(item, "transforms", []) or [])
    return None


def read_scores(result: dict[str, Any], run_dir: Path | None = None) -> Any:
    """A finished job's ``scores.csv`` as a DataFrame, or ``None`` when the job kept none.

    Why ``run_dir``: a run folder copied elsewhere keeps its layout (``jobs/<job id>/``) but not the absolute
    log path stored in the result, so the folder's own copy is tried first.
    """
    import pandas as pd

    candidates = [Path(str(result.get("log", ""))).parent / SCORES]
    if run_dir is not None:
        candidates.insert(0, Path(run_dir) / "jobs" / str(result.get("job_id", "")) / SCORES)
    for path in candidates:
        if path.is_file():
            frame = pd.read_csv(path)
            frame["category"] = frame["category"].astype(str)
            frame["image_path"] = frame["image_path"].astype(str)
            return frame
    return None
