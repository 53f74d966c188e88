# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""``anomalib-crr demo``: generate a small synthetic dataset, train and test CRR or MFRNet on it, write anomaly maps.

The demo runs the same path a user runs on MVTec AD (``MVTecAD`` datamodule, ``Engine.fit``,
``Engine.test`` with anomalib's metrics and visualiser), only on a procedurally generated dataset and
with a small configuration that finishes in a few minutes on two CPU cores:

* ``--model CRR`` (default): ViT-S, 4 blocks, 112² crops, 60 + 40 steps.
* ``--model MFRNet``: EfficientNet-Lite0 features at 128² (16² grid), the small residual restorer, 10 epochs.

With internet access the backbone starts from pretrained weights; ``--weights none`` runs fully
offline from a random-init backbone (a pipeline check: the numbers then say little about the method),
and ``--weights PATH`` loads a local checkpoint.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SMOKE_MODEL_ARGS: dict[str, Any] = {
    "encoder_name": "vit_small_patch14_reg4_dinov2",
    "target_layers": [0, 1, 2, 3],
    "decoder_depth": 4,
    "fuse_layer_encoder": [[0, 1], [2, 3]],
    "fuse_layer_decoder": [[0, 1], [2, 3]],
    "seg_base_width": 32,
    "seg_output_size": 128,
    "warmup_steps": 10,
    "dtd_dir": None,
}

# MFRNet's defaults (EfficientNet-Lite0 blocks.2 + blocks.4, stride-8 grid, small residual restorer), stated here
# so the demo stays small even if the defaults grow.
SMOKE_MFRNET_ARGS: dict[str, Any] = {
    "backbone": "tf_efficientnet_lite0",
    "stem_dim": 32,
    "embed_dim": 128,
    "depth": 2,
    "num_heads": 4,
}

MODELS = ("CRR", "MFRNet")


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="anomalib-crr demo",
        description="Train and test CRR or MFRNet on a generated MVTec-style dataset (offline with --weights none).",
    )
    parser.add_argument("--model", choices=MODELS, default="CRR", help="model to train (default CRR)")
    parser.add_argument("--output", type=Path, default=Path("demo_output"), help="folder for data and results")
    parser.add_argument(
        "--weights",
        "--encoder-weights",
        dest="weights",
        default="pretrained",
        help="backbone weights: 'pretrained' (download, default), 'none' (random init, offline) or a local file",
    )
    parser.add_argument("--categories", nargs="+", default=["weave", "washer"], help="synthetic categories")
    parser.add_argument("--stage1-steps", type=int, default=60, help="CRR stage-I steps")
    parser.add_argument("--stage2-steps", type=int, default=40, help="CRR stage-II steps")
    parser.add_argument("--epochs", type=int, default=10, help="MFRNet epochs")
    parser.add_argument(
        "--image-size", type=int, default=128, help="generated image side (CRR crops to the largest multiple of 14)"
    )
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(list(argv))


def _build_model(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The demo model and the extra Engine arguments it needs."""
    weights = None if args.weights.lower() in {"none", "null"} else args.weights
    if args.model == "MFRNet":
        from anomalib_crr import MFRNet

        weight_args: dict[str, Any] = {"pre_trained": weights == "pretrained"}
        if weights not in {None, "pretrained"}:
            weight_args["weights_path"] = weights
        model = MFRNet(
            **weight_args,
            pre_processor=MFRNet.configure_pre_processor(image_size=(args.image_size, args.image_size)),
            **SMOKE_MFRNET_ARGS,
        )
        return model, {"max_epochs": args.epochs}

    from anomalib_crr import CRR

    crop = (args.image_size // 14) * 14
    if crop < 14:
        msg = f"--image-size {args.image_size} is too small for CRR: it must be at least 14"
        raise ValueError(msg)
    model = CRR(
        encoder_weights=weights,
        stage1_steps=args.stage1_steps,
        stage2_steps=args.stage2_steps,
        pre_processor=CRR.configure_pre_processor(image_size=(args.image_size, args.image_size), crop_size=crop),
        **SMOKE_MODEL_ARGS,
    )
    return model, {}


def run_demo(argv: Sequence[str]) -> list[dict[str, float]]:
    """Run the demo; returns one metrics dict per category."""
    args = _parse(argv)
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_crr.data import make_synthetic_mvtec

    data_root = args.output / "dataset"
    # A category counts as present once it has training images; make_synthetic_mvtec refuses non-empty folders.
    missing = [c for c in args.categories if not any((data_root / c / "train" / "good").glob("*.png"))]
    if missing:
        make_synthetic_mvtec(data_root, categories=missing, image_size=args.image_size, seed=args.seed)
        print(f"Generated synthetic categories {missing} under {data_root}")
    else:
        print(f"Reusing the dataset in {data_root}")

    results: list[dict[str, float]] = []
    for category in args.categories:
        seed_everything(args.seed, workers=True)
        start = time.perf_counter()
        model, engine_args = _build_model(args)
        datamodule = MVTecAD(
            root=data_root,
            category=category,
            train_batch_size=args.batch_size,
            eval_batch_size=args.batch_size,
            num_workers=0,
        )
        engine = Engine(default_root_dir=args.output / "results", devices=1, logger=False, **engine_args)
        engine.fit(model=model, datamodule=datamodule)
        metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
        metrics = {"category": category, **{k: float(v) for k, v in metrics.items()}}
        metrics["wall_s"] = time.perf_counter() - start
        results.append(metrics)

    _print_table(results)
    print(f"Anomaly-map images: {args.output / 'results' / args.model / 'MVTecAD'}/<category>/latest/images")
    return results


def _print_table(results: list[dict[str, Any]]) -> None:
    keys = [k for k in results[0] if k != "category"]
    header = ["category", *keys]
    rows = [[str(r["category"]), *[f"{r[k]:.4f}" if k != "wall_s" else f"{r[k]:.1f}" for k in keys]] for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    print("\n" + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
