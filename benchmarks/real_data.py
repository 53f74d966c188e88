# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""MFRNet vs PatchCore vs Reverse Distillation on a real industrial set, side by side, plus CPU inference time.

Each model is trained and tested with anomalib's Engine on the same datamodule, image size and metric set
(image AUROC, pixel AUROC, pixel AUPRO at FPR <= 30 %). The backbone is the offline ImageNet EfficientNet-Lite0
(``shared/weights/tf_efficientnet_lite0.in1k.safetensors``) wherever the model accepts it:

* MFRNet: ``tf_efficientnet_lite0`` with its default layers (blocks.1/2/4), the weights file, default restorer.
* PatchCore: ``tf_efficientnet_lite0`` layers blocks.2/blocks.4 (strides 8/16, PatchCore's layer2/layer3
  analogue), the same weights loaded into its extractor, inputs normalised with mean = std = 0.5.
* Reverse Distillation: anomalib's RD only has decoders for ResNets, so it cannot take EfficientNet-Lite0; with
  no offline ResNet weights it runs with a random-init ``resnet18`` encoder (``--rd-backbone``). Its numbers
  therefore measure RD without its pretrained teacher and are not a fair accuracy comparison.

The timing section builds MFRNet and RD on the *same* ResNet backbone (random init: weights do not change the
cost) and times the torch models round-robin at batch 1 on CPU (median per image).

Usage::

    python benchmarks/real_data.py --dataset tire --epochs 10
    python benchmarks/real_data.py --dataset mt --models MFRNet PatchCore --epochs 5

Writes ``<output>/real_data_<dataset>.csv``/``.md`` and ``<output>/mfrnet_vs_rd_speed.csv``/``.md``.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference_speed import count_parameters, interleaved_medians

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATASETS = {
    "tire": {"root": SHARED / "data" / "mvtec3d_rgb", "category": "tire"},
    "mt": {"root": SHARED / "data" / "magnetic_tile" / "mt", "category": "mt"},
}
WEIGHTS = SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"
MODELS = ("MFRNet", "PatchCore", "ReverseDistillation")


def _evaluator() -> Any:
    from anomalib.metrics import AUPRO, AUROC, Evaluator

    return Evaluator(
        test_metrics=[
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_"),
            AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", fpr_limit=0.3),
        ]
    )


def build_datamodule(dataset: str, image_size: int, batch_size: int, num_workers: int) -> Any:
    """MVTecAD for tire (PNG); Folder for magnetic tile (grayscale JPEG, converted to RGB by anomalib's reader)."""
    from anomalib.data import Folder, MVTecAD

    info = DATASETS[dataset]
    if not Path(info["root"]).is_dir():
        msg = f"Dataset folder not found: {info['root']}"
        raise SystemExit(msg)
    common = {"train_batch_size": batch_size, "eval_batch_size": batch_size, "num_workers": num_workers}
    if dataset == "tire":
        return MVTecAD(root=info["root"], category=info["category"], **common)
    root = Path(info["root"])
    defects = sorted(p.name for p in (root / "test").iterdir() if p.is_dir() and p.name != "good")
    return Folder(
        name="magnetic_tile",
        root=root,
        normal_dir="train/good",
        normal_test_dir="test/good",
        abnormal_dir=[f"test/{d}" for d in defects],
        mask_dir=[f"ground_truth/{d}" for d in defects],
        extensions=(".jpg", ".JPG", ".png"),
        **common,
    )


def build_model(name: str, image_size: int, rd_backbone: str) -> tuple[Any, dict[str, Any]]:
    """A model for the comparison and a description of its backbone."""
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    from anomalib_crr import MFRNet
    from anomalib_crr.models.mfrnet.components import load_backbone_weights

    size = (image_size, image_size)
    if name == "MFRNet":
        model = MFRNet(
            backbone="tf_efficientnet_lite0",
            pre_trained=False,
            weights_path=WEIGHTS,
            pre_processor=MFRNet.configure_pre_processor(size),
            evaluator=_evaluator(),
        )
        return model, {"backbone": "tf_efficientnet_lite0 (ImageNet, local file)"}
    if name == "PatchCore":
        from anomalib.models import Patchcore

        lite_norm = Compose([Resize(size, antialias=True), Normalize(mean=[0.5] * 3, std=[0.5] * 3)])
        model = Patchcore(
            backbone="tf_efficientnet_lite0",
            layers=("blocks.2", "blocks.4"),
            pre_trained=False,
            pre_processor=PreProcessor(transform=lite_norm),
            evaluator=_evaluator(),
        )
        load_backbone_weights(model.model.feature_extractor.feature_extractor, WEIGHTS)
        return model, {"backbone": "tf_efficientnet_lite0 (ImageNet, local file)"}
    if name == "ReverseDistillation":
        from anomalib.models import ReverseDistillation

        imagenet = Compose([Resize(size, antialias=True), Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
        model = ReverseDistillation(
            backbone=rd_backbone,
            pre_trained=False,
            pre_processor=PreProcessor(transform=imagenet),
            evaluator=_evaluator(),
        )
        return model, {"backbone": f"{rd_backbone} (random init: RD has no EfficientNet decoder)"}
    msg = f"Unknown model {name!r}; choose from {MODELS}"
    raise SystemExit(msg)


def run_accuracy(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Train and test every requested model; one result row per model."""
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    rows = []
    for name in args.models:
        seed_everything(args.seed, workers=True)
        model, info = build_model(name, args.image_size, args.rd_backbone)
        datamodule = build_datamodule(args.dataset, args.image_size, args.batch_size, args.num_workers)
        # PatchCore memorises features in one epoch; the trained models get --epochs.
        epochs = 1 if name == "PatchCore" else args.epochs
        engine = Engine(
            default_root_dir=args.output / "runs",
            max_epochs=epochs,
            accelerator=args.accelerator,
            devices=1,
            logger=False,
            enable_progress_bar=False,
        )
        start = time.perf_counter()
        engine.fit(model=model, datamodule=datamodule)
        fit_s = time.perf_counter() - start
        metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
        rows.append(
            {
                "model": name,
                **info,
                "epochs": epochs,
                "image_AUROC": float(metrics["image_AUROC"]),
                "pixel_AUROC": float(metrics["pixel_AUROC"]),
                "pixel_AUPRO": float(metrics["pixel_AUPRO"]),
                "trainable_params_M": count_parameters(model) / 1e6
                if name == "PatchCore"
                else sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6,
                "fit_s": fit_s,
                "total_s": time.perf_counter() - start,
            }
        )
        print(rows[-1], flush=True)
    return rows


def run_speed(args: argparse.Namespace) -> list[dict[str, Any]]:
    """CPU inference per image (batch 1) of MFRNet vs RD on the same ResNet backbone, round-robin medians."""
    from anomalib.models.image.reverse_distillation.anomaly_map import AnomalyMapGenerationMode
    from anomalib.models.image.reverse_distillation.torch_model import ReverseDistillationModel

    from anomalib_crr.models.mfrnet import MFRNetModel

    torch.set_num_threads(args.threads)
    images = torch.rand(1, 3, args.image_size, args.image_size)
    rows = []
    for backbone in args.speed_backbones:
        layers = ["layer1", "layer2", "layer3"]
        mfrnet = MFRNetModel(backbone=backbone, pre_trained=False, image_size=(args.image_size,) * 2).eval()
        rd = ReverseDistillationModel(
            backbone=backbone,
            input_size=(args.image_size, args.image_size),
            layers=layers,
            anomaly_map_mode=AnomalyMapGenerationMode.ADD,
            pre_trained=False,
        )
        rd.eval()
        medians = interleaved_medians(
            {"MFRNet": lambda m=mfrnet: m(images), "ReverseDistillation": lambda m=rd: m(images)},
            runs=args.runs,
            warmup=2,
            synchronize=lambda: None,
        )
        rows.append(
            {
                "backbone": backbone,
                "image_size": args.image_size,
                "threads": args.threads,
                "runs": args.runs,
                "mfrnet_ms": medians["MFRNet"] * 1e3,
                "rd_ms": medians["ReverseDistillation"] * 1e3,
                "ratio": medians["MFRNet"] / medians["ReverseDistillation"],
                "mfrnet_params_M": count_parameters(mfrnet) / 1e6,
                "mfrnet_restorer_params_M": count_parameters(mfrnet.restorer) / 1e6,
                "rd_params_M": count_parameters(rd) / 1e6,
            }
        )
        print(rows[-1], flush=True)
    return rows


def _write(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_suffix(".csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    keys = list(rows[0])
    lines = [f"# {title}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    """Parse arguments, run the accuracy comparison and the speed comparison, write the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="tire")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=10, help="epochs of MFRNet and RD (PatchCore needs one)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--rd-backbone", default="resnet18")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speed-backbones", nargs="*", default=["resnet18", "wide_resnet50_2"])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per model (speed section)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if not WEIGHTS.is_file():
        msg = f"EfficientNet-Lite0 weights not found at {WEIGHTS}"
        raise SystemExit(msg)

    if not args.skip_accuracy:
        rows = run_accuracy(args)
        title = f"{args.dataset}, {args.image_size}x{args.image_size}, MFRNet/RD {args.epochs} epochs"
        _write(rows, args.output / f"real_data_{args.dataset}", title)
    if args.speed_backbones:
        speed = run_speed(args)
        title = f"CPU inference per image, batch 1, {args.threads} threads, {args.image_size}x{args.image_size}"
        _write(speed, args.output / "mfrnet_vs_rd_speed", title)


if __name__ == "__main__":
    main()
