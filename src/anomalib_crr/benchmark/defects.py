# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Image AUROC per defect type, from each job's ``scores.csv`` (no re-inference).

A category's AUROC averages over its defect types, so a model that misses one kind of defect entirely can still
look good; papers therefore break results down per defect type. For every finished job, seed, category and
defect type, the AUROC here is that of the category's good test images against the images of that one defect
type (the other defect types left out), computed with :func:`.stats.auroc` on the scores the job recorded. Each
row keeps how many good and defective images it is on, because a type with three images gives a noisy number.

Pixel AUROC and AUPRO per defect type are not computed: a job keeps anomaly maps only for the few images the
pictures show (``maps.npz``, up to 8 per category), not for every test image, so they would need the jobs to
run inference again.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .samples import GOOD, read_scores
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
    "good_images",
    "defective_images",
    "job_id",
)
PIXEL_NOTE = (
    "Pixel AUROC and AUPRO per defect type are not given: jobs keep anomaly maps only for the images the pictures "
    "show (`maps.npz`), not for every test image, so they would need a new inference pass."
)


def defect_type_rows(results: Sequence[dict[str, Any]], run_dir: Path | None = None) -> list[dict[str, Any]]:
    """One row per finished job, category and defect type: image AUROC of good vs that type, with counts."""
    rows: list[dict[str, Any]] = []
    for result in results:
        if result.get("status") != "ok":
            continue
        frame = read_scores(result, run_dir)
        if frame is None:
            continue
        for category, part in frame.groupby("category", sort=False):
            labels = part["gt_label"].to_numpy(int)
            scores = part["pred_score"].to_numpy(float)
            types = part["defect_type"].astype(str).to_numpy()
            good = labels == 0
            for kind in sorted(set(types[~good]) - {GOOD}):
                chosen = good | ((types == kind) & ~good)
                picked = scores[chosen]
                value = auroc(picked, labels[chosen]) if np.isfinite(picked).all() else math.nan
                rows.append(
                    {
                        "model": result["model"],
                        "dataset": result["dataset"],
                        "mode": result["mode"],
                        "seed": result["seed"],
                        "category": str(category),
                        "defect_type": kind,
                        "image_AUROC": value,
                        "good_images": int(good.sum()),
                        "defective_images": int(chosen.sum() - good.sum()),
                        "job_id": result["job_id"],
                    }
                )
    return rows


def write_defect_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """``results_by_defect_type.csv``: the rows of :func:`defect_type_rows` (one per job, seed, category, type)."""
    import pandas as pd

    pd.DataFrame(list(rows), columns=list(DEFECT_COLUMNS)).to_csv(path, index=False)
    return path


def defect_type_lines(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The report section: per dataset and category, (model, mode) × defect type, mean ± std over seeds, n.

    Each defect type's column header gives its image counts (good/defective), so a reader sees which cells
    rest on a handful of images (counts that differ between jobs are all listed). They are in the header, not
    in a row, so that sorting the HTML table keeps them in place.
    """
    if not rows:
        return []
    lines = [
        "",
        "## Image AUROC per defect type",
        "",
        "Good test images of the category against the images of one defect type (the other types left out), "
        "from each job's `scores.csv`; mean ± std over seeds, n = seeds; each column header gives the type's "
        "image counts (good/defective). Every row per seed is in "
        f"`{DEFECTS_CSV}`. {PIXEL_NOTE}",
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["dataset"], row["category"])].append(row)
    for (dataset, category), members in groups.items():
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
                mean, std, _ = seed_stats([r["image_AUROC"] for r in mine if r["defect_type"] == kind])
                cells.append(format_mean_std(mean, std))
            body.append([model, mode, str(len({r["seed"] for r in mine})), *cells])
        lines += ["", f"### {dataset} / {category}", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return lines
