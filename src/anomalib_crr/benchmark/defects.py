# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Image AUROC, pixel AUROC and pixel AUPRO per defect type, from what each job kept (no re-inference).

A category's AUROC averages over its defect types, so a model that misses one kind of defect entirely can still
look good; papers therefore break results down per defect type. For every finished job, seed, category and
defect type, the metrics here compare the category's good test images with the images of that one defect type
(the other defect types left out):

- ``image_AUROC``: on the image scores of ``scores.csv``, with :func:`.stats.auroc`.
- ``pixel_AUROC`` and ``pixel_AUPRO``: on every pixel of those images, from ``defect_maps.npz`` (the
  post-processed anomaly map and ground-truth mask of every test image with a mask, see :mod:`.samples`), with
  anomalib's own ``AUROC`` and ``AUPRO`` (FPR limit 0.3, anomalib's default) on ``anomaly_map`` / ``gt_mask``.
  They are computed on maps and masks at ≤64 px (maps area-averaged, masks max-pooled so thin defects survive),
  so they differ slightly from the full-resolution pixel metrics in ``results.csv``. Measured on the
  whole test set (all types together): on the tests' tiny 64-px PaDiM run the maps are kept at full size and the
  pixel AUROC from ``defect_maps.npz`` matches ``results.csv`` to float16 rounding (within 2e-3, as the tests
  check); on a 128-px PaDiM run of the synthetic dataset (maps halved to 64 px) it was 0.9822 against 0.9808
  (+0.0014) and pixel AUPRO 0.9615 against 0.9608 (+0.0006). A 256 → 64 reduction (MVTec AD at 256 px) was not
  measured and may give a larger gap. They are
  NaN when the job kept no ``defect_maps.npz`` (a dataset without masks, a job from before the file existed, or
  a failure while recording) or the type's images have no defective pixel.

Each row keeps how many good and defective images it is on, because a type with three images gives a noisy number.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from .samples import GOOD, load_defect_maps, read_scores
from .stats import auroc, format_mean_std, seed_stats

DEFECTS_CSV = "results_by_defect_type.csv"
DEFECT_COLUMNS = (
    "model",
    "dataset",
    "mode",
    "seed",
    "category",
    "defect_type",
    "image_AUROC",
    "pixel_AUROC",
    "pixel_AUPRO",
    "good_images",
    "defective_images",
    "job_id",
)
PIXEL_NOTE = (
    "Pixel AUROC and AUPRO per defect type are computed on every pixel of the same images, from the anomaly maps "
    "and ground-truth masks each job keeps for every test image (`defect_maps.npz`) with anomalib's `AUROC` and "
    "`AUPRO` (FPR limit 0.3), on maps and masks at ≤64 px (maps area-averaged, masks max-pooled), so they differ "
    "slightly from the full-resolution pixel metrics in `results.csv`; they are n/a when a job kept no masks."
)
AUPRO_FPR_LIMIT = 0.3  # anomalib's default, as in the jobs' own pixel_AUPRO


def pixel_metrics(anomaly_maps: Any, gt_masks: Any) -> tuple[float, float]:
    """Pixel AUROC and pixel AUPRO of a set of images' maps ``(N, H, W)`` against their masks, with anomalib's metrics.

    NaN when there is no defective or no normal pixel, or a map value is not finite.
    """
    import torch
    from anomalib.metrics import AUPRO, AUROC

    maps = torch.as_tensor(np.asarray(anomaly_maps, dtype=np.float32))
    masks = torch.as_tensor(np.asarray(gt_masks, dtype=bool)).long()
    if maps.numel() == 0 or not torch.isfinite(maps).all() or masks.min() == masks.max():
        return math.nan, math.nan
    batch = SimpleNamespace(anomaly_map=maps, gt_mask=masks)
    values = []
    for metric in (
        AUROC(fields=["anomaly_map", "gt_mask"]),
        AUPRO(fields=["anomaly_map", "gt_mask"], fpr_limit=AUPRO_FPR_LIMIT),
    ):
        metric.update(batch)
        values.append(float(metric.compute()))
    return values[0], values[1]


def defect_type_rows(results: Sequence[dict[str, Any]], run_dir: Path | None = None) -> list[dict[str, Any]]:
    """One row per finished job, category and defect type: image and pixel metrics of good vs that type, with counts."""
    rows: list[dict[str, Any]] = []
    for result in results:
        if result.get("status") != "ok":
            continue
        frame = read_scores(result, run_dir)
        if frame is None:
            continue
        pixels = _pixels_by_row(frame, load_defect_maps(result, run_dir))
        for category, part in frame.groupby("category", sort=False):
            labels = part["gt_label"].to_numpy(int)
            scores = part["pred_score"].to_numpy(float)
            types = part["defect_type"].astype(str).to_numpy()
            good = labels == 0
            for kind in sorted(set(types[~good]) - {GOOD}):
                chosen = good | ((types == kind) & ~good)
                picked = scores[chosen]
                value = auroc(picked, labels[chosen]) if np.isfinite(picked).all() else math.nan
                pixel_auroc, pixel_aupro = math.nan, math.nan
                if pixels is not None:
                    rows_of = part.index.to_numpy()[chosen]
                    if (pixels[0][rows_of] >= 0).all():  # every chosen image has its map and mask
                        kept = pixels[0][rows_of]
                        pixel_auroc, pixel_aupro = pixel_metrics(pixels[1][kept], pixels[2][kept])
                rows.append(
                    {
                        "model": result["model"],
                        "dataset": result["dataset"],
                        "mode": result["mode"],
                        "seed": result["seed"],
                        "category": str(category),
                        "defect_type": kind,
                        "image_AUROC": value,
                        "pixel_AUROC": pixel_auroc,
                        "pixel_AUPRO": pixel_aupro,
                        "good_images": int(good.sum()),
                        "defective_images": int(chosen.sum() - good.sum()),
                        "job_id": result["job_id"],
                    }
                )
    return rows


def _pixels_by_row(frame: Any, stored: dict[str, Any] | None) -> tuple[np.ndarray, Any, Any] | None:
    """For each row of ``scores.csv`` (by frame index), its position in ``defect_maps.npz`` (-1: none), maps, masks."""
    if stored is None:
        return None
    position = {str(path): i for i, path in enumerate(stored["image_path"])}
    where = np.array([position.get(str(path), -1) for path in frame["image_path"]], dtype=int)
    lookup = np.full(int(frame.index.max()) + 1 if len(frame) else 0, -1, dtype=int)
    lookup[frame.index.to_numpy()] = where
    return lookup, stored["anomaly_map"], stored["gt_mask"]


def write_defect_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """``results_by_defect_type.csv``: the rows of :func:`defect_type_rows` (one per job, seed, category, type)."""
    import pandas as pd

    pd.DataFrame(list(rows), columns=list(DEFECT_COLUMNS)).to_csv(path, index=False)
    return path


def defect_type_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The report sections: per dataset and category, (model, mode) × defect type, mean ± std over seeds, n.

    First image AUROC, then pixel AUROC and pixel AUPRO (one table each per category, only where some job kept
    ``defect_maps.npz``). Each defect type's column header gives its image counts (good/defective), so a reader
    sees which cells rest on a handful of images (counts that differ between jobs are all listed). They are in the
    header, not in a row, so that sorting the HTML table keeps them in place.
    """
    if not rows:
        return []
    lines = [
        "",
        "## Image AUROC per defect type",
        "",
        "Good test images of the category against the images of one defect type (the other types left out), "
        "from each job's `scores.csv`; mean ± std over seeds, n = seeds; each column header gives the type's "
        f"image counts (good/defective). Every row per seed is in `{DEFECTS_CSV}`; pixel AUROC and AUPRO per "
        "defect type are in the next section.",
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["dataset"], row["category"])].append(row)
    for (dataset, category), members in groups.items():
        lines += ["", f"### {dataset} / {category}", "", *_metric_table(members, "image_AUROC")]
    lines += ["", "## Pixel AUROC and AUPRO per defect type", "", f"The same images, every pixel. {PIXEL_NOTE}"]
    pixel_groups = {key: members for key, members in groups.items() if _any_finite(members)}
    if not pixel_groups:
        lines += ["", "No job kept `defect_maps.npz` (no ground-truth masks): n/a everywhere."]
    for (dataset, category), members in pixel_groups.items():
        lines += ["", f"### {dataset} / {category}: pixel AUROC", "", *_metric_table(members, "pixel_AUROC")]
        lines += ["", f"### {dataset} / {category}: pixel AUPRO", "", *_metric_table(members, "pixel_AUPRO")]
    return lines


def _any_finite(members: Sequence[dict[str, Any]]) -> bool:
    """Whether some row has a pixel value (a job kept maps and masks for these images)."""
    return any(math.isfinite(float(r.get(key, math.nan))) for r in members for key in ("pixel_AUROC", "pixel_AUPRO"))


def _metric_table(members: Sequence[dict[str, Any]], metric: str) -> list[str]:
    """One category's (model, mode) × defect type table of ``metric``, mean ± std over seeds."""
    kinds = sorted({r["defect_type"] for r in members})
    counts = []
    for kind in kinds:
        seen = sorted({(r["good_images"], r["defective_images"]) for r in members if r["defect_type"] == kind})
        counts.append("; ".join(f"{g}/{d}" for g, d in seen))
    header = ["model", "mode", "n", *(f"{kind} ({count})" for kind, count in zip(kinds, counts, strict=True))]
    body = []
    for model, mode in dict.fromkeys((r["model"], r["mode"]) for r in members):
        mine = [r for r in members if r["model"] == model and r["mode"] == mode]
        cells = []
        for kind in kinds:
            mean, std, _ = seed_stats([r.get(metric, math.nan) for r in mine if r["defect_type"] == kind])
            cells.append(format_mean_std(mean, std))
        body.append([model, mode, str(len({r["seed"] for r in mine})), *cells])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(cells) + " |" for cells in body]
