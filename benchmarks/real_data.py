# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""MFRNet vs PatchCore vs PaDiM on a real industrial set (same frozen weights), plus MFRNet vs RD inference speed.

Accuracy: each model is trained and tested with anomalib's Engine on the same datamodule, image size and metric
set (image AUROC, pixel AUROC, pixel AUPRO at FPR <= 30 %), for several seeds; the table gives mean and standard
deviation over the seeds and the fit time. ``image_AUROC_inner`` ranks images by the map's maximum away from the
border (a band of 1/16 of each side left out): on ``tire`` no defect touches that band, yet the band separates
defective from good test images (the background differs between acquisitions), so the plain image AUROC can reward
a model for firing on the border; the inner score shows how well the defects themselves are found.
``pixel_AUPRO_location_only`` is the AUPRO of one map given to every test image, the mean of the model's maps over
the good test images: it knows where the object usually is and nothing about the image at hand. On ``tire`` it is
already high (the tyre sits at the same place in every image), so a model's AUPRO is best read as its margin over
this reference. All three use the offline ImageNet EfficientNet-Lite0
(``shared/weights/tf_efficientnet_lite0.in1k.safetensors``), inputs normalised with mean = std = 0.5:

* MFRNet: its defaults (``blocks.2`` + ``blocks.4`` on a stride-8 grid), the weights file, and the number of
  epochs of ``configs/model/mfrnet.yaml``.
* PatchCore: ``blocks.2`` + ``blocks.4`` (PatchCore's layer2 + layer3 analogue), coreset ratio ``--coreset``
  (default 0.1 of the 90·32·32 ≈ 92 k patches at 256²).
* PaDiM: ``blocks.1`` + ``blocks.2`` + ``blocks.4`` (PaDiM's layer1-3 analogue, 176 channels), 100 random features.

Speed: MFRNet (current defaults, and the first release's defaults for reference) and anomalib's Reverse
Distillation are built on the *same* ResNet backbone (random init: weights do not change the cost), in one
process, and timed round-robin at batch 1 on the CPU (median per image); MACs per image are counted with
``torch.utils.flop_counter.FlopCounterMode`` (MAC = FLOP / 2).

Usage::

    python benchmarks/real_data.py                       # tire, 3 seeds, accuracy + speed
    python benchmarks/real_data.py --skip-accuracy --runs 15
    python benchmarks/real_data.py --dataset mt --models MFRNet PatchCore --seeds 0
    python benchmarks/real_data.py --models MFRNet --mfrnet-test-grids shifted aligned   # one fit, two scorings

Writes ``<output>/real_data_<dataset>.csv``/``.md`` (mean ± std), ``real_data_<dataset>_runs.csv`` (every run)
and ``<output>/mfrnet_vs_rd_speed.csv``/``.md``.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    BORDER_FRACTION,
    DATASETS,
    MODELS,
    RESULTS,
    WEIGHTS,
    build_datamodule,
    build_model,
    count_parameters,
    default_mfrnet_epochs,
    interleaved_medians,
    typed_row,
    write_table,
)
from benchmarks.mfrnet_image_score import dump_discrepancies, inner_envelope_auroc

# The first release's defaults, for the "before" row of the cost table.
FIRST_RELEASE = {
    "feature_stride": 4,
    "mask_cell_size": (2, 4, 8),
    "partition": "random",
    "stem_dim": 256,
    "embed_dim": 512,
    "depth": 8,
    "num_heads": 8,
    "patch_size": 4,
    "residual": False,
    "map_norm": "none",
    "whiten_residual": False,
    "lambda_ssim": 1.0,
}
FIRST_RELEASE_LAYERS = {"resnet18": ["layer1", "layer2", "layer3"], "wide_resnet50_2": ["layer1", "layer2", "layer3"]}


METRIC_KEYS = {  # result column: evaluator metric name
    "image_AUROC": "image_AUROC",
    "image_AUROC_inner": "image_InnerMaxAUROC",
    "pixel_AUROC": "pixel_AUROC",
    "pixel_AUPRO": "pixel_AUPRO",
    "pixel_AUPRO_location_only": "pixel_LocationOnlyAUPRO",
}


def fit_timed(engine: Any, model: Any, datamodule: Any) -> tuple[float, float]:
    """``engine.fit``; returns its wall time (s) and the 1-minute load average when it started."""
    load = os.getloadavg()[0]
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    return time.perf_counter() - start, load


def run_accuracy(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train and test every requested model for every seed; one row per run."""
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    rows = []
    for seed in args.seeds:
        for name in args.models:
            seed_everything(seed, workers=True)
            model, info = build_model(name, args)
            datamodule = build_datamodule(args.dataset, args.batch_size, args.num_workers)
            engine = Engine(
                default_root_dir=args.output / "runs",
                max_epochs=info["epochs"],
                accelerator=args.accelerator,
                devices=1,
                logger=False,
                enable_progress_bar=False,
            )
            start = time.perf_counter()
            fit_s, load = fit_timed(engine, model, datamodule)
            metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
            run = {"model": name, "seed": seed, **info, "fit_s": fit_s, "load_avg_1min_at_start": load}
            rows.append(result_row(run, metrics, time.perf_counter() - start))
            if name.startswith("MFRNet"):
                mfrnet_envelope_inner(rows[-1], model, datamodule, args, seed)
            print(rows[-1], flush=True)
            if name != "MFRNet":
                continue
            default_grid = model.model.test_grid.value
            for grid in dict.fromkeys(args.mfrnet_test_grids or []):
                if grid == default_grid:
                    continue
                rescore_start = time.perf_counter()
                _use_test_grid(model, grid, datamodule)
                metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
                config = info["config"].replace(f"{default_grid} test grid", f"{grid} test grid")
                rows.append(result_row({**run, "config": config}, metrics, time.perf_counter() - rescore_start))
                print(rows[-1], flush=True)
    return rows


def mfrnet_envelope_inner(
    row: dict[str, Any], model: Any, datamodule: Any, args: argparse.Namespace, seed: int
) -> None:
    """MFRNet's envelope score away from the border band, and the dump of its discrepancies for the ablation.

    ``image_AUROC_inner`` of the other models is the map's maximum inside the band; MFRNet's image score is not
    read from the map, so its inner counterpart is the same envelope score with the band's feature positions left
    out (``mfrnet_image_score.envelope_score``). The map-maximum version stays as ``image_AUROC_inner_map_max``.
    """
    from anomalib_crr.models.mfrnet.components import ImageScore

    dump = dump_discrepancies(model, datamodule, image_size=args.image_size, fit_s=row["fit_s"])
    if args.dump_dir is not None:
        args.dump_dir.mkdir(parents=True, exist_ok=True)
        torch.save(dump, args.dump_dir / f"{args.dataset}_s{seed}_e{row['epochs']}.pt")
    if model.model.image_score is ImageScore.ENVELOPE:
        row["image_AUROC_inner_map_max"] = row["image_AUROC_inner"]
        row["image_AUROC_inner"] = inner_envelope_auroc(model.model.normal_envelope, dump, BORDER_FRACTION)


def result_row(run: dict[str, Any], metrics: dict[str, Any], total_s: float) -> dict[str, Any]:
    """One run's row: its description, the test metrics and the time."""
    scores = {key: float(metrics[metric]) for key, metric in METRIC_KEYS.items()}
    return {**run, **scores, "total_s": total_s}


def _use_test_grid(model: Any, grid: str, datamodule: Any) -> None:
    """Score a trained MFRNet with another test grid: its map statistics are refitted under that grid."""
    from anomalib_crr.models.mfrnet.torch_model import TestGrid

    model.model.test_grid = TestGrid(grid)
    model.hparams["test_grid"] = grid
    model.compute_map_statistics(datamodule.train_dataloader())


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds, per model, configuration and number of epochs."""
    summary = []
    for name, config, epochs in dict.fromkeys((row["model"], row["config"], row["epochs"]) for row in rows):
        runs = [row for row in rows if (row["model"], row["config"], row["epochs"]) == (name, config, epochs)]
        entry: dict[str, Any] = {"model": name, "config": config, "epochs": epochs}
        entry["seeds"] = " ".join(str(row["seed"]) for row in runs)
        for key in (*METRIC_KEYS, "image_AUROC_inner_map_max", "fit_s"):
            values = [row[key] for row in runs if row.get(key) not in (None, "")]
            if not values:
                continue
            entry[f"{key}_mean"] = statistics.fmean(values)
            entry[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        summary.append(entry)
    return summary


def count_macs(model: torch.nn.Module, images: torch.Tensor) -> float:
    """Multiply-accumulates of one forward pass per image (FlopCounterMode: MAC = FLOP / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(images)
    return counter.get_total_flops() / 2 / images.shape[0]


def run_speed(args: argparse.Namespace) -> list[dict[str, Any]]:
    """CPU inference per image (batch 1) of MFRNet vs RD on the same ResNet backbone, round-robin medians."""
    from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode
    from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel

    from anomalib_crr.models.mfrnet import MFRNetModel

    torch.set_num_threads(args.threads)
    size = (args.image_size, args.image_size)
    images = torch.rand(1, 3, *size)
    rows = []
    for backbone in args.speed_backbones:
        mfrnet = MFRNetModel(backbone=backbone, pre_trained=False, image_size=size).eval()
        first = MFRNetModel(
            backbone=backbone,
            layers=FIRST_RELEASE_LAYERS[backbone],
            pre_trained=False,
            image_size=size,
            **FIRST_RELEASE,
        ).eval()
        rd = ReverseDistillationModel(
            backbone=backbone,
            input_size=size,
            layers=["layer1", "layer2", "layer3"],
            anomaly_map_mode=AnomalyMapGenerationMode.ADD,
            pre_trained=False,
        ).eval()
        candidates = {"MFRNet": lambda m=mfrnet: m(images), "ReverseDistillation": lambda m=rd: m(images)}
        if args.time_first_release:
            candidates["MFRNet_first_release"] = lambda m=first: m(images)
        load = os.getloadavg()[0]
        medians = interleaved_medians(candidates, runs=args.runs, warmup=2, synchronize=lambda: None)
        row = {
            "backbone": backbone,
            "image_size": args.image_size,
            "threads": args.threads,
            "runs": args.runs,
            "mfrnet_ms": medians["MFRNet"] * 1e3,
            "rd_ms": medians["ReverseDistillation"] * 1e3,
            "ratio": medians["MFRNet"] / medians["ReverseDistillation"],
            "mfrnet_params_M": count_parameters(mfrnet) / 1e6,
            "mfrnet_restorer_params_M": count_parameters(mfrnet.restorer) / 1e6,
            "mfrnet_GMAC": count_macs(mfrnet, images) / 1e9,
            "rd_params_M": count_parameters(rd) / 1e6,
            "rd_GMAC": count_macs(rd, images) / 1e9,
            "first_release_params_M": count_parameters(first) / 1e6,
            "first_release_GMAC": count_macs(first, images) / 1e9,
        }
        if args.time_first_release:
            row["first_release_ms"] = medians["MFRNet_first_release"] * 1e3
        row["load_avg_1min_at_start"] = load
        rows.append(row)
        print(row, flush=True)
    return rows


def main() -> None:
    """Parse arguments, run the accuracy comparison and the speed comparison, write the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="tire")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--mfrnet-epochs", type=int, default=None, help="default: configs/model/mfrnet.yaml")
    parser.add_argument("--coreset", type=float, default=0.1, help="PatchCore coreset sampling ratio")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--speed-backbones", nargs="*", default=["resnet18", "wide_resnet50_2"])
    parser.add_argument("--runs", type=int, default=15, help="timed runs per model (speed section)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--time-first-release", action="store_true", help="also time the first release's MFRNet")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument(
        "--mfrnet-test-grids",
        nargs="+",
        choices=["shifted", "aligned", "average"],
        default=None,
        help="also score each trained MFRNet with these test grids (statistics refitted; one extra row each)",
    )
    parser.add_argument(
        "--from-runs",
        nargs="+",
        type=Path,
        default=None,
        help="summarise these real_data_<dataset>_runs.csv files (e.g. one per seed, run in parallel) instead of "
        "training",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--dump-dir",
        type=Path,
        default=None,
        help="store each MFRNet fit's training and test discrepancies here (for benchmarks/mfrnet_image_score.py)",
    )
    args = parser.parse_args()
    if args.mfrnet_epochs is None:
        args.mfrnet_epochs = default_mfrnet_epochs()
    if not WEIGHTS.is_file():
        msg = f"EfficientNet-Lite0 weights not found at {WEIGHTS}"
        raise SystemExit(msg)

    if args.from_runs:
        rows = [typed_row(row) for path in args.from_runs for row in csv.DictReader(path.open())]
        args.seeds = sorted({row["seed"] for row in rows})
        mfrnet_epochs = sorted({int(row["epochs"]) for row in rows if row["model"] == "MFRNet"})
        args.mfrnet_epochs = " / ".join(map(str, mfrnet_epochs)) or args.mfrnet_epochs
    elif not args.skip_accuracy:
        rows = run_accuracy(args)
    if args.from_runs or not args.skip_accuracy:
        name = f"real_data_{args.dataset}"
        write_table(rows, args.output / f"{name}_runs", f"{args.dataset}, {args.image_size}², every run")
        title = (
            f"{args.dataset}, {args.image_size}x{args.image_size}, EfficientNet-Lite0 ImageNet weights, "
            f"seeds {args.seeds}: mean and std over seeds"
        )
        notes = (
            "CPU, 2 cores shared with other jobs: fit_s depends on the load (load_avg_1min_at_start in the "
            f"_runs table). MFRNet epochs: {args.mfrnet_epochs}; PatchCore coreset ratio {args.coreset}."
        )
        write_table(summarize(rows), args.output / name, title, notes)
    if args.speed_backbones:
        speed = run_speed(args)
        title = (
            f"CPU inference per image, batch 1, {args.threads} threads, {args.image_size}x{args.image_size}, "
            f"median of {args.runs} round-robin runs"
        )
        notes = (
            "Same backbone for both (random init). first_release_* = MFRNet's first-release defaults (layer1-3 on a "
            "stride-4 grid, restorer d256/D512/L8, k = 2/4/8) on the same backbone."
        )
        write_table(speed, args.output / "mfrnet_vs_rd_speed", title, notes)


if __name__ == "__main__":
    main()
