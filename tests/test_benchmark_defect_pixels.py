"""Pixel AUROC and AUPRO per defect type, from the maps and masks every job keeps (``defect_maps.npz``).

The unit checks build a job folder by hand (``scores.csv`` + ``defect_maps.npz``, no training); the end-to-end
check runs one tiny PaDiM job (about 30 s on 2 CPU cores) and reads its ``results_by_defect_type.csv``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from anomalib_crr.benchmark import run
from anomalib_crr.benchmark.defects import DEFECT_COLUMNS, defect_type_lines, defect_type_rows, pixel_metrics
from anomalib_crr.benchmark.samples import DEFECT_MAP_SIZE, DEFECT_MAPS, SCORES, downsample_map_and_mask

from .helpers import PADIM_ENTRY, small_benchmark_config

SIZE = 16


def _square_mask(offset: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[offset : offset + 5, offset : offset + 5] = True
    return mask


def _job(tmp_path: Path, with_maps: bool = True) -> dict:
    """A finished job with 3 good images, 2 'perfect' images (map = mask) and 2 'inverted' ones (map = 1 - mask)."""
    rng = np.random.default_rng(0)
    job_dir = tmp_path / "jobs" / "job0"
    job_dir.mkdir(parents=True)
    rows, maps, masks = [], [], []
    for kind, count in (("good", 3), ("perfect", 2), ("inverted", 2)):
        for i in range(count):
            path = f"/data/washer/test/{kind}/{i:03d}.png"
            mask = np.zeros((SIZE, SIZE), bool) if kind == "good" else _square_mask(2 + 4 * i)
            noise = rng.uniform(0, 0.2, (SIZE, SIZE))
            if kind == "inverted":
                anomaly_map = 1.0 - mask + noise  # the defect scores lowest
            elif kind == "perfect":
                anomaly_map = mask + noise
            else:
                anomaly_map = 0.5 + noise  # good images: in between
            label = int(kind != "good")
            rows.append(
                {
                    "image_path": path,
                    "category": "washer",
                    "defect_type": kind,
                    "gt_label": label,
                    "pred_score": float(anomaly_map.max()),
                    "pred_label": label,
                }
            )
            maps.append(anomaly_map.astype(np.float16))
            masks.append(mask)
    pd.DataFrame(rows).to_csv(job_dir / SCORES, index=False)
    if with_maps:
        np.savez_compressed(
            job_dir / DEFECT_MAPS,
            anomaly_map=np.stack(maps)[::-1],  # stored order differs from scores.csv: matched by path
            gt_mask=np.stack(masks)[::-1],
            image_path=np.array([r["image_path"] for r in rows])[::-1],
        )
    return {
        "status": "ok",
        "model": "Padim",
        "dataset": "tiny",
        "mode": "per_category",
        "seed": 0,
        "job_id": "job0",
        "log": str(job_dir / "job.log"),
    }


def test_pixel_metrics_per_defect_type_separate_a_perfect_type_from_an_inverted_one(tmp_path: Path) -> None:
    result = _job(tmp_path)
    rows = {r["defect_type"]: r for r in defect_type_rows([result], tmp_path)}
    assert set(rows) == {"perfect", "inverted"}
    assert rows["perfect"]["pixel_AUROC"] == pytest.approx(1.0)
    assert rows["perfect"]["pixel_AUPRO"] == pytest.approx(1.0)
    assert rows["inverted"]["pixel_AUROC"] < 0.5
    assert rows["inverted"]["pixel_AUPRO"] < 0.1
    assert (rows["perfect"]["good_images"], rows["perfect"]["defective_images"]) == (3, 2)
    assert set(DEFECT_COLUMNS) >= {"pixel_AUROC", "pixel_AUPRO"}
    text = "\n".join(defect_type_lines(list(rows.values())))
    assert "## Pixel AUROC and AUPRO per defect type" in text
    assert "### tiny / washer: pixel AUROC" in text
    assert "| Padim | per_category | 1 | " in text.split("pixel AUROC\n")[1]
    assert "≤64 px" in text


def test_pixel_metrics_agree_with_anomalib_on_the_whole_set(tmp_path: Path) -> None:
    """The per-type numbers are anomalib's metric on the chosen images: checked against torchmetrics directly."""
    from torchmetrics.classification import BinaryAUROC

    rng = np.random.default_rng(1)
    masks = rng.uniform(size=(4, SIZE, SIZE)) > 0.8
    maps = masks * 0.3 + rng.uniform(size=masks.shape)
    value, pro = pixel_metrics(maps, masks)
    expected = BinaryAUROC()(torch.as_tensor(maps.ravel()).float(), torch.as_tensor(masks.ravel()).long())
    assert value == pytest.approx(float(expected), abs=1e-6)
    assert 0.0 < pro < 1.0
    assert all(math.isnan(v) for v in pixel_metrics(maps, np.zeros_like(masks)))  # no defective pixel


def test_a_job_without_defect_maps_gets_nan_pixel_columns(tmp_path: Path) -> None:
    rows = defect_type_rows([_job(tmp_path, with_maps=False)], tmp_path)
    assert rows
    assert all(math.isnan(r["pixel_AUROC"]) and math.isnan(r["pixel_AUPRO"]) for r in rows)
    assert all(r["image_AUROC"] == pytest.approx(1.0) for r in rows if r["defect_type"] == "perfect")
    assert "n/a everywhere" in "\n".join(defect_type_lines(rows))


def test_downsampling_keeps_thin_defects_and_caps_the_size() -> None:
    mask = torch.zeros(1, 256, 200, dtype=torch.bool)
    mask[0, 100, 10:190] = True  # a one-pixel scratch
    anomaly_map = torch.rand(1, 1, 256, 200)
    small_map, small_mask = downsample_map_and_mask(anomaly_map, mask)
    assert tuple(small_map.shape) == (1, DEFECT_MAP_SIZE, 50)  # longer side 64, aspect kept
    assert small_mask.dtype == torch.bool
    assert small_mask.any(dim=-1).sum() == 1
    assert float(small_map.mean()) == pytest.approx(float(anomaly_map.mean()), abs=1e-3)  # area average
    same_map, _same_mask = downsample_map_and_mask(anomaly_map[..., :32, :32], mask[..., :32, :32])
    assert tuple(same_map.shape) == (1, 32, 32)
    assert torch.equal(same_map, anomaly_map[:, 0, :32, :32])


def test_a_tiny_benchmark_writes_pixel_columns_per_defect_type(tiny_dataset: Path, tmp_path: Path) -> None:
    output = tmp_path / "run"
    summary = run(small_benchmark_config(tiny_dataset, [PADIM_ENTRY]), output=output, echo=lambda line: None)
    assert not summary.failed
    job_dir = output / "jobs" / "Padim__tiny__per_category__washer__seed0"
    stored = np.load(job_dir / DEFECT_MAPS)
    scores = pd.read_csv(job_dir / SCORES)
    assert list(stored["image_path"]) == list(scores["image_path"])  # every test image, in scores.csv order
    assert stored["anomaly_map"].dtype == np.float16
    assert stored["gt_mask"].dtype == bool
    assert max(stored["anomaly_map"].shape[1:]) <= DEFECT_MAP_SIZE
    frame = pd.read_csv(output / "results_by_defect_type.csv")
    assert {"pixel_AUROC", "pixel_AUPRO"} <= set(frame.columns)
    assert sorted(frame["defect_type"]) == ["scratch", "stain"]
    assert frame["pixel_AUROC"].between(0, 1).all()
    assert frame["pixel_AUPRO"].between(0, 1).all()
    # all types together, from the kept maps: the job's own full-resolution pixel AUROC (64 px: no pooling)
    whole, _ = pixel_metrics(stored["anomaly_map"], stored["gt_mask"])
    reported = pd.read_csv(output / "results.csv")
    assert whole == pytest.approx(float(reported["pixel_AUROC"].iloc[0]), abs=2e-3)
    report = (output / "report.md").read_text()
    assert "### tiny / washer: pixel AUPRO" in report
