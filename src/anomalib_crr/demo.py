# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""``anomalib-crr demo``: generate a small synthetic dataset, train and test CRR on it, write anomaly maps.

The demo runs the same path a user runs on MVTec AD (``MVTecAD`` datamodule, ``Engine.fit`` with both
CRR stages, ``Engine.test`` with anomalib's metrics and visualiser), only on a procedurally generated
dataset and with a small configuration (ViT-S, 4 blocks, 112² crops, 60 + 40 steps) that finishes in a
few minutes on two CPU cores. With internet access it starts from pretrained DINOv2 weights; with
``--encoder-weights none`` it runs fully offline from a random-init encoder (a pipeline check: the
numbers then say little about the method).
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


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="anomalib-crr demo",
        description="Train and test CRR on a generated MVTec-style dataset (offline with --encoder-weights none).",
    )
    parser.add_argument("--output", type=Path, default=Path("demo_output"), help="folder for data and results")
    parser.add_argument(
        "--encoder-weights",
        default="pretrained",
        help="'pretrained' (download, default), 'none' (random init, offline) or a local checkpoint path",
    )
    parser.add_argument("--categories", nargs="+", default=["weave", "washer"], help="synthetic categories")
    parser.add_argument("--stage1-steps", type=int, default=60)
    parser.add_argument("--stage2-steps", type=int, default=40)
    parser.add_argument("--image-size", type=int, default=128, help="generated image side; crop = largest 14k below")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(list(argv))


def run_demo(argv: Sequence[str]) -> list[dict[str, float]]:
    """Run the demo; returns one metrics dict per category."""
    args = _parse(argv)
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from anomalib_crr import CRR
    from anomalib_crr.data import make_synthetic_mvtec

    weights: str | None = None if args.encoder_weights.lower() in {"none", "null"} else args.encoder_weights
    crop = (args.image_size // 14) * 14
    if crop < 14:
        msg = f"--image-size {args.image_size} is too small: it must be at least 14"
        raise SystemExit(msg)

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
        model = CRR(
            encoder_weights=weights,
            stage1_steps=args.stage1_steps,
            stage2_steps=args.stage2_steps,
            pre_processor=CRR.configure_pre_processor(image_size=(args.image_size, args.image_size), crop_size=crop),
            **SMOKE_MODEL_ARGS,
        )
        datamodule = MVTecAD(
            root=data_root,
            category=category,
            train_batch_size=args.batch_size,
            eval_batch_size=args.batch_size,
            num_workers=0,
        )
        engine = Engine(default_root_dir=args.output / "results", devices=1, logger=False)
        engine.fit(model=model, datamodule=datamodule)
        metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
        metrics = {"category": category, **{k: float(v) for k, v in metrics.items()}}
        metrics["wall_s"] = time.perf_counter() - start
        results.append(metrics)

    _print_table(results)
    print(f"Anomaly-map images: {args.output / 'results' / 'CRR' / 'MVTecAD'}/<category>/latest/images")
    return results


def _print_table(results: list[dict[str, Any]]) -> None:
    keys = [k for k in results[0] if k != "category"]
    header = ["category", *keys]
    rows = [[str(r["category"]), *[f"{r[k]:.4f}" if k != "wall_s" else f"{r[k]:.1f}" for k in keys]] for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    print("\n" + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
