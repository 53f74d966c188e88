# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Qualitative pictures of a run: comparison grids and score distributions per category (matplotlib).

- ``grid_<dataset>_<category>.png`` (and ``_p2.png``, ... when there are more than :data:`MODELS_PER_PAGE` model
  columns; all pages in one ``.pdf``). Rows are the selected test images (see :mod:`.samples`, the same for
  every job). Columns are the input, the input with the ground-truth outline, then one column per job: the
  image as that model saw it (after its resize/crop) with its anomaly map overlaid. Every map column uses one
  colour scale: anomalib's normalised map, 0 to 1, where 0.5 is the model's threshold (marked on the colour
  bar). A model whose post-processor does not normalise is drawn min-max over its column and says so in its
  header. A failed job gets a grey "failed" column, and a job not run yet a "not run" column.
- ``scores_<dataset>_<category>.png``: per job, the image scores of good and defective test images as two
  overlaid histograms, with the threshold line.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.backends.backend_pdf import PdfPages

from .config import JobSpec
from .samples import SCORES, defect_type, load_maps

MODELS_PER_PAGE = 6
CELL_INCHES = 1.45
CMAP = "jet"
THRESHOLD = 0.5


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in text)


def _column_label(job: JobSpec, jobs: Sequence[JobSpec]) -> str:
    """The model name, with the mode when the same model runs in several modes."""
    modes = {j.mode for j in jobs if j.model.name == job.model.name}
    return f"{job.model.name} ({job.mode})" if len(modes) > 1 else job.model.name


def picture_columns(
    dataset: str, category: str, jobs: Sequence[JobSpec], results: dict[str, dict]
) -> list[dict[str, Any]]:
    """One entry per (model, mode) covering this category: its status, maps, metrics and the seed they are from.

    The column shows the first seed that finished (else the first seed), and its header names that seed: the
    tables average over seeds, so an unnamed seed's numbers would disagree with them silently.
    """
    chosen: dict[tuple[str, str], JobSpec] = {}
    for job in jobs:
        if job.dataset.name == dataset and category in job.categories:
            key = (job.model.name, job.mode)
            finished = (results.get(job.job_id) or {}).get("status") == "ok"
            if key not in chosen or (finished and (results.get(chosen[key].job_id) or {}).get("status") != "ok"):
                chosen[key] = job
    covering = list(chosen.values())
    columns = []
    for job in covering:
        result = results.get(job.job_id)
        status = "not run" if result is None else ("ok" if result.get("status") == "ok" else "failed")
        column: dict[str, Any] = {
            "label": _column_label(job, covering),
            "status": status,
            "job": job,
            "seed": job.seed,
        }
        if status == "ok":
            column["metrics"] = result["categories"].get(category, {})
            column["maps"] = load_maps(Path(result["log"]).parent)
            column["normalisation"] = (result.get("pictures") or {}).get("normalisation", "")
        columns.append(column)
    return columns


def _rows(columns: Sequence[dict[str, Any]], category: str) -> list[str]:
    """The selected image paths of this category (the same in every job that kept maps)."""
    for column in columns:
        maps = column.get("maps")
        if maps is not None:
            return [str(p) for p, c in zip(maps["image_path"], maps["category"], strict=True) if str(c) == category]
    return []


def _header(column: dict[str, Any]) -> str:
    name = "\n".join(textwrap.wrap(column["label"], 20, break_long_words=False)) or column["label"]
    seed = f"seed {column['seed']}"
    if column["status"] != "ok":
        return f"{name}\n{seed}\n{column['status'].upper()}"
    metrics = column["metrics"]
    scale = "" if column["normalisation"].startswith("anomalib normalised") else "\n(raw, min-max)"
    auroc, aupro = metrics.get("image_AUROC", math.nan), metrics.get("pixel_AUPRO", math.nan)
    return f"{name}\n{seed}\nI-AUROC {auroc:.3f}\nAUPRO {aupro:.3f}{scale}"


def _read_image(path: str) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError):
        return None


def _read_mask(path: str, shape: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if not path:
        return np.zeros(shape, bool)
    try:
        with Image.open(path) as mask:
            return np.asarray(mask.convert("L").resize((shape[1], shape[0]))) > 127
    except (OSError, ValueError):
        return np.zeros(shape, bool)


def _map_cell(ax: Any, column: dict[str, Any], path: str) -> None:
    """One model's map of one row's image; a grey "not in test set" cell when this job never saw that image.

    A job whose test set differs (e.g. anomalib's ``val_split_mode=from_test`` moved the image to validation)
    has no map for it; that must show as a gap, not end the report.
    """
    maps = column.get("maps")
    index = _index_of(maps, path)
    if index is None:
        ax.set_facecolor("0.85")
        ax.text(0.5, 0.5, "not in this\njob's test set", ha="center", va="center", fontsize=5, transform=ax.transAxes)
        return
    anomaly_map = maps["anomaly_map"][index].astype(np.float32)
    if not column["normalisation"].startswith("anomalib normalised"):
        low, high = float(maps["anomaly_map"].min()), float(maps["anomaly_map"].max())
        anomaly_map = (anomaly_map - low) / max(high - low, 1e-12)
    ax.imshow(maps["view"][index])
    ax.imshow(anomaly_map, cmap=CMAP, vmin=0.0, vmax=1.0, alpha=0.5)


def _index_of(maps: dict[str, Any] | None, path: str) -> int | None:
    """The position of ``path`` in a job's stored maps, or ``None`` if the job kept no map of it."""
    if maps is None:
        return None
    paths = [str(p) for p in maps["image_path"]]
    return paths.index(path) if path in paths else None


def _draw_page(
    title: str,
    rows: Sequence[str],
    columns: Sequence[dict[str, Any]],
    gt: dict[str, tuple[np.ndarray, np.ndarray, int]],
) -> Any:
    n_cols = 2 + len(columns)
    figure, axes = plt.subplots(
        len(rows),
        n_cols,
        figsize=(CELL_INCHES * n_cols + 1.4, CELL_INCHES * len(rows) + 0.9),
        squeeze=False,
        gridspec_kw={"wspace": 0.04, "hspace": 0.06},
    )
    figure.suptitle(title, fontsize=9)
    headers = ["input", "ground truth", *(_header(c) for c in columns)]
    for col, header in enumerate(headers):
        axes[0, col].set_title(header, fontsize=6.5)
    for row, path in enumerate(rows):
        image, mask, label = gt[path]
        axes[row, 0].imshow(image)
        axes[row, 0].set_ylabel(defect_type(path, label), fontsize=6.5)
        axes[row, 1].imshow(image)
        if mask.any():
            axes[row, 1].contour(mask, levels=[0.5], colors="lime", linewidths=0.8)
        for col, column in enumerate(columns, start=2):
            ax = axes[row, col]
            if column["status"] == "ok":
                _map_cell(ax, column, path)
            else:
                ax.set_facecolor("0.75")
                ax.text(0.5, 0.5, column["status"], ha="center", va="center", fontsize=7, transform=ax.transAxes)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    mappable = matplotlib.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0, 1), cmap=CMAP)
    bar = figure.colorbar(mappable, ax=axes.ravel().tolist(), fraction=0.02, pad=0.01)
    bar.set_ticks([0.0, THRESHOLD, 1.0])
    bar.set_ticklabels(["0", "threshold", "1"], fontsize=6)
    bar.ax.axhline(THRESHOLD, color="white", linewidth=1.5)
    return figure


def write_grid(out: Path, dataset: str, category: str, jobs: Sequence[JobSpec], results: dict[str, dict]) -> list[Path]:
    """The comparison grid of one category: PNG page(s) and one PDF; returns the PNG paths ([] without maps)."""
    columns = picture_columns(dataset, category, jobs, results)
    rows = _rows(columns, category)
    if not rows:
        return []
    gt = {}
    for path in rows:
        image = _read_image(path)
        if image is None:
            image = np.full((64, 64, 3), 200, np.uint8)
        mask_path, label = "", 0
        for maps in (c["maps"] for c in columns if c.get("maps") is not None):
            paths = [str(p) for p in maps["image_path"]]
            if path in paths:
                mask_path, label = str(maps["mask_path"][paths.index(path)]), int(maps["gt_label"][paths.index(path)])
                break
        gt[path] = (image, _read_mask(mask_path, image.shape[:2]), label)
    stem = f"grid_{_slug(dataset)}_{_slug(category)}"
    pages = [columns[i : i + MODELS_PER_PAGE] for i in range(0, max(len(columns), 1), MODELS_PER_PAGE)]
    pngs = []
    with PdfPages(out / f"{stem}.pdf") as pdf:
        for number, page in enumerate(pages, start=1):
            suffix = f" (page {number}/{len(pages)})" if len(pages) > 1 else ""
            title = (
                f"{dataset} / {category}: anomaly maps of the seed named in each header, one colour scale "
                f"(0.5 = each model's threshold){suffix}"
            )
            figure = _draw_page(title, rows, page, gt)
            png = out / (f"{stem}.png" if number == 1 else f"{stem}_p{number}.png")
            figure.savefig(png, dpi=110, bbox_inches="tight")
            pdf.savefig(figure, bbox_inches="tight")
            plt.close(figure)
            pngs.append(png)
    return pngs


def write_scores(
    out: Path, dataset: str, category: str, jobs: Sequence[JobSpec], results: dict[str, dict]
) -> Path | None:
    """Good vs defective image scores per model (histograms) with the threshold line."""
    import pandas as pd

    columns = [c for c in picture_columns(dataset, category, jobs, results) if c["status"] == "ok"]
    frames = []
    for column in columns:
        path = Path(results[column["job"].job_id]["log"]).parent / SCORES
        if path.is_file():
            frame = pd.read_csv(path)
            frames.append((column, frame[frame["category"].astype(str) == category]))
    if not frames:
        return None
    per_row = min(4, len(frames))
    n_rows = math.ceil(len(frames) / per_row)
    figure, axes = plt.subplots(n_rows, per_row, figsize=(3.0 * per_row, 2.3 * n_rows), squeeze=False)
    for ax, (column, frame) in zip(axes.flat, frames, strict=False):
        good = frame.loc[frame["gt_label"] == 0, "pred_score"].to_numpy(float)
        bad = frame.loc[frame["gt_label"] == 1, "pred_score"].to_numpy(float)
        values = np.concatenate([good, bad])
        finite = values[np.isfinite(values)]
        low, high = (min(0.0, finite.min()), max(1.0, finite.max())) if finite.size else (0.0, 1.0)
        bins = np.linspace(low, high, 21)
        ax.hist(good, bins=bins, alpha=0.6, color="tab:green", label=f"good ({good.size})")
        ax.hist(bad, bins=bins, alpha=0.6, color="tab:red", label=f"defective ({bad.size})")
        if column["normalisation"].startswith("anomalib normalised"):
            ax.axvline(THRESHOLD, color="black", linestyle="--", linewidth=1, label="threshold")
        ax.set_title(column["label"], fontsize=8)
        ax.set_xlabel("image score", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(frames) :]:
        ax.axis("off")
    figure.suptitle(f"{dataset} / {category}: image scores of good and defective test images", fontsize=9)
    figure.tight_layout()
    path = out / f"scores_{_slug(dataset)}_{_slug(category)}.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_pictures(
    out: Path, jobs: Sequence[JobSpec], results: Sequence[dict[str, Any]]
) -> dict[tuple[str, str], dict[str, Any]]:
    """Grids and score plots for every (dataset, category) of the run's jobs."""
    by_id = {r["job_id"]: r for r in results}
    pictures: dict[tuple[str, str], dict[str, Any]] = {}
    for dataset, category in dict.fromkeys((j.dataset.name, c) for j in jobs for c in j.categories):
        grids = write_grid(out, dataset, category, jobs, by_id)
        scores = write_scores(out, dataset, category, jobs, by_id)
        if grids or scores:
            pictures[(dataset, category)] = {"grids": grids, "scores": scores}
    return pictures
