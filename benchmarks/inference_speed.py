# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""CPU/GPU inference time of CRR vs anomalib's Dinomaly at the same encoder and crop size, plus parameter counts.

Both models are built in the same process with random-init encoders (weights do not change the cost),
in eval mode, and timed on the torch model (``model.model(images)``: encoder, bottleneck, decoder, maps,
score; CRR also its segmentation head) under ``torch.inference_mode``. Each configuration is warmed
up, then timed ``--runs`` times; the median per image is reported, with the CRR/Dinomaly ratio.

Usage::

    python benchmarks/inference_speed.py --encoder vit_base_patch14_reg4_dinov2 --crop 392 --runs 10
    python benchmarks/inference_speed.py --startup   # interpreter start-up cost of the .pth hook

Writes ``<output>/inference_speed.csv`` and ``.md``.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch


def interleaved_medians(
    candidates: dict[str, Callable[[], object]],
    runs: int,
    warmup: int,
    synchronize: Callable[[], None],
) -> dict[str, float]:
    """Median seconds per call of each candidate, timed round-robin so load drifts hit all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in candidates}
    with torch.inference_mode():
        for round_index in range(warmup + runs):
            for name, call in candidates.items():
                synchronize()
                start = time.perf_counter()
                call()
                synchronize()
                if round_index >= warmup:
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters of ``module`` (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


def build_dinomaly(encoder: str) -> torch.nn.Module:
    """Build anomalib's Dinomaly with a random-init encoder (it hard-codes a download otherwise)."""
    import anomalib.models.image.dinomaly.torch_model as dinomaly_torch
    from anomalib.models import Dinomaly
    from anomalib.models.components.feature_extractors import TimmFeatureExtractor

    def random_init_extractor(*args, **kwargs) -> TimmFeatureExtractor:
        kwargs["pre_trained"] = False  # Dinomaly passes pre_trained=True explicitly
        return TimmFeatureExtractor(*args, **kwargs)

    original = dinomaly_torch.TimmFeatureExtractor
    dinomaly_torch.TimmFeatureExtractor = random_init_extractor
    try:
        return Dinomaly(encoder_name=encoder).model.eval()
    finally:
        dinomaly_torch.TimmFeatureExtractor = original


def run_speed(args: argparse.Namespace) -> list[dict[str, object]]:
    """Time Dinomaly, CRR (reconstruction only) and CRR (fused with the seg head)."""
    from anomalib_crr.models.crr import CrrModel

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images = torch.rand(args.batch, 3, args.crop, args.crop, device=device)
    normalized = (images - torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225], device=device
    ).view(1, 3, 1, 1)

    dinomaly = build_dinomaly(args.encoder).to(device)
    crr_rec = CrrModel(encoder_name=args.encoder, encoder_weights=None, fusion_alpha=1.0).eval().to(device)
    crr = CrrModel(encoder_name=args.encoder, encoder_weights=None).eval().to(device)
    crr.mark_seg_head_trained()
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    medians = interleaved_medians(
        {
            "Dinomaly (anomalib)": lambda: dinomaly(normalized),
            "CRR, reconstruction map only": lambda: crr_rec(images),
            "CRR, fused map (default)": lambda: crr(images),
        },
        args.runs,
        args.warmup,
        synchronize,
    )
    sizes = {
        "Dinomaly (anomalib)": count_parameters(dinomaly),
        "CRR, reconstruction map only": count_parameters(crr),
        "CRR, fused map (default)": count_parameters(crr),
    }
    dinomaly_ms = medians["Dinomaly (anomalib)"] * 1000 / args.batch
    rows = [
        {"model": name, "ms_per_image": seconds * 1000 / args.batch, "params_M": sizes[name] / 1e6}
        for name, seconds in medians.items()
    ]
    for row in rows:
        row.update(
            {
                "ratio_vs_dinomaly": row["ms_per_image"] / dinomaly_ms,
                "encoder": args.encoder,
                "crop": args.crop,
                "batch": args.batch,
                "runs": args.runs,
                "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
                "threads": args.threads,
            }
        )
    params = {
        "encoder (frozen, pruned to the deepest target block)": count_parameters(crr.encoder),
        "stage I trainable (bottleneck + decoder)": count_parameters(crr.bottleneck) + count_parameters(crr.decoder),
        "stage II trainable (segmentation head)": count_parameters(crr.seg_head),
        "Dinomaly trainable (bottleneck + decoder)": count_parameters(dinomaly.bottleneck)
        + count_parameters(dinomaly.decoder),
    }
    print("\nParameter counts (M):")
    for name, count in params.items():
        print(f"  {name}: {count / 1e6:.2f}")
    return rows


def run_startup(runs: int) -> list[dict[str, object]]:
    """Start-up cost of the hook: ``-X importtime`` of ``_anomalib_crr_hook`` and ``python -c pass`` wall time."""
    hook_us, wall_s = [], []
    for _ in range(runs):
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "import sys; print('torch' in sys.modules)"],
            capture_output=True,
            text=True,
            check=True,
        )
        wall_s.append(time.perf_counter() - start)
        line = next(line for line in result.stderr.splitlines() if line.rstrip().endswith("_anomalib_crr_hook"))
        hook_us.append(int(line.split("|")[1]))  # cumulative microseconds, its own imports included
        if result.stdout.strip() != "False":
            msg = "torch was imported at start-up"
            raise RuntimeError(msg)
    rows = [
        {"model": "_anomalib_crr_hook import (cumulative)", "ms": statistics.median(hook_us) / 1000},
        {"model": "python start-up, hook installed (wall)", "ms": statistics.median(wall_s) * 1000},
    ]
    print(f"hook import ≈ {rows[0]['ms']:.2f} ms, interpreter start-up ≈ {rows[1]['ms']:.1f} ms (median of {runs})")
    return rows


def _write(rows: list[dict[str, object]], output: Path, name: str) -> None:
    output.mkdir(parents=True, exist_ok=True)
    keys = list(rows[0])
    with (output / f"{name}.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    (output / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    """Parse arguments and run the chosen benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="vit_base_patch14_reg4_dinov2")
    parser.add_argument("--crop", type=int, default=392)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--startup", action="store_true", help="measure the start-up hook instead")
    args = parser.parse_args()
    if args.startup:
        _write(run_startup(max(args.runs, 10)), args.output, "startup")
        return
    rows = run_speed(args)
    encoder_tag = args.encoder.split("_")[1]
    _write(rows, args.output, f"inference_speed_{encoder_tag}_{args.crop}_{args.device.split(':')[0]}")


if __name__ == "__main__":
    main()
