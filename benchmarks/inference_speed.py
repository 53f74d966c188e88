# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""CPU/GPU inference time of CRR vs anomalib's Dinomaly at the same encoder and crop size, step by step.

Both models are built in the same process with random-init encoders (weights do not change the cost),
in eval mode, and timed on the torch model (``model.model(images)``: encoder, bottleneck, decoder, maps,
score; CRR also its segmentation head) under ``torch.inference_mode``. All candidates run round-robin
(so load drifts hit all of them alike): ``--warmup`` rounds, then ``--runs`` timed rounds; the median per
image is reported with the ratio to Dinomaly. CRR is timed after each inference step (BatchNorm folding,
low-resolution upsampling convolutions, channels-last, bf16) and with lighter heads, and each fp32 step's
fused map is compared with the map of the head as trained.

Usage::

    python benchmarks/inference_speed.py --encoder vit_base_patch14_reg4_dinov2 --crop 392 --runs 5
    python benchmarks/inference_speed.py --head-macs     # the seg head's MACs at widths 192 / 96 / 64
    python benchmarks/inference_speed.py --startup       # interpreter start-up cost of the .pth hook

Writes ``<output>/inference_speed_<size>_<crop>_<device>.csv`` and ``.md`` (``seg_head_macs_*`` for MACs).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.common import count_parameters, interleaved_medians, random_init_dinomaly, write_table


def build_dinomaly(encoder: str) -> torch.nn.Module:
    """Build anomalib's Dinomaly with a random-init encoder (it hard-codes a download otherwise)."""
    from anomalib.models import Dinomaly

    with random_init_dinomaly():
        return Dinomaly(encoder_name=encoder).model.eval()


def _with_head(crr: torch.nn.Module, head: torch.nn.Module | None, **flags: object) -> Callable[[], None]:
    """Set the seg head (``None``: keep) and its eval flags / the model's inference dtype before a call."""

    def apply() -> None:
        if head is not None:
            crr.seg_head = head
        for name, value in flags.items():
            target = crr if name == "inference_dtype" else crr.seg_head
            setattr(target, name, value)

    return apply


# Long on purpose: builds every model of the round-robin in one place so they are timed in one process.
def run_speed(args: argparse.Namespace) -> list[dict[str, object]]:  # noqa: PLR0915
    """Time Dinomaly and CRR after each inference step; check that the fp32 steps keep the fused map.

    Steps (each on top of the previous): the head as trained (conv → BatchNorm → ReLU, "today"); BatchNorm
    folded into the convolutions; upsampling convolutions at the low resolution (the default eval path);
    channels-last; ``inference_dtype="bfloat16"``. Lighter heads (``seg_base_width`` 96, 64) use the
    default eval path. Dinomaly is also timed under bf16 autocast for a like-for-like bf16 ratio.
    """
    from anomalib_crr.models.crr import CrrModel
    from anomalib_crr.models.crr.components import CrrSegHead

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images = torch.rand(args.batch, 3, args.crop, args.crop, device=device)
    normalized = (images - torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)) / torch.tensor(
        [0.229, 0.224, 0.225], device=device
    ).view(1, 3, 1, 1)

    dinomaly = build_dinomaly(args.encoder).to(device)
    crr = CrrModel(encoder_name=args.encoder, encoder_weights=None).eval().to(device)
    crr.mark_seg_head_trained()
    for bn in crr.seg_head.modules():  # trained-looking running statistics, so the fold changes the weights
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.normal_(0.0, 0.1)
            bn.running_var.uniform_(0.5, 2.0)
    default_head = crr.seg_head
    light_heads = {
        width: CrrSegHead(in_channels=default_head.stages[0].conv[0].in_channels, base_width=width).eval().to(device)
        for width in args.light_widths
    }
    today = _with_head(crr, default_head, channels_last=False, low_res_conv=False, inference_dtype=None)

    def unfolded_call() -> object:
        today()
        crr.seg_head.forward_folded = crr.seg_head.forward_unfolded  # the pre-folding eval path
        try:
            return crr(images)
        finally:
            del crr.seg_head.forward_folded

    def call(setup: Callable[[], None]) -> Callable[[], object]:
        def run() -> object:
            setup()
            return crr(images)

        return run

    def reconstruction_only() -> object:
        today()
        crr._seg_active = False  # the map before stage II: A_rec only, no seg head
        try:
            return crr(images)
        finally:
            crr._seg_active = True

    def dinomaly_bf16() -> object:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            return dinomaly(normalized)

    steps = {
        "CRR fused, head as trained (today)": unfolded_call,
        "+ BatchNorm folded": call(_with_head(crr, default_head, channels_last=False, low_res_conv=False)),
        "+ upsampling convs at low resolution (default)": call(
            _with_head(crr, default_head, channels_last=False, low_res_conv=True)
        ),
        "+ channels-last": call(_with_head(crr, default_head, channels_last=True, low_res_conv=True)),
        "+ inference_dtype=bfloat16": call(
            _with_head(crr, default_head, channels_last=False, low_res_conv=True, inference_dtype=torch.bfloat16)
        ),
    }
    for width, head in light_heads.items():
        steps[f"seg_base_width={width} (default path)"] = call(
            _with_head(crr, head, channels_last=False, low_res_conv=True, inference_dtype=None)
        )
    candidates = {
        "Dinomaly (anomalib)": lambda: dinomaly(normalized),
        "Dinomaly (anomalib), bf16 autocast": dinomaly_bf16,
        "CRR, reconstruction map only": reconstruction_only,
        **steps,
    }

    # Output check: every step's fused map against today's, on the same image.
    with torch.inference_mode():
        reference = unfolded_call()
        differences = {name: float("nan") for name in candidates}
        for name, step in steps.items():
            if "seg_base_width" not in name:
                differences[name] = float((step().anomaly_map - reference.anomaly_map).abs().max())
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    medians = interleaved_medians(candidates, args.runs, args.warmup, synchronize)
    today()

    dinomaly_ms = medians["Dinomaly (anomalib)"] * 1000 / args.batch
    dinomaly_bf16_ms = medians["Dinomaly (anomalib), bf16 autocast"] * 1000 / args.batch
    rows = []
    for name, seconds in medians.items():
        ms = seconds * 1000 / args.batch
        rows.append(
            {
                "model": name,
                "ms_per_image": ms,
                "ratio_vs_dinomaly": ms / dinomaly_ms,
                "ratio_vs_dinomaly_bf16": ms / dinomaly_bf16_ms,
                "max_abs_map_diff_vs_today": differences.get(name, float("nan")),
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
        "stage II trainable (segmentation head)": count_parameters(default_head),
        **{f"segmentation head, seg_base_width={w}": count_parameters(h) for w, h in light_heads.items()},
        "Dinomaly trainable (bottleneck + decoder)": count_parameters(dinomaly.bottleneck)
        + count_parameters(dinomaly.decoder),
    }
    print("\nParameter counts (M):")
    for name, count in params.items():
        print(f"  {name}: {count / 1e6:.2f}")
    return rows


def run_head_macs(args: argparse.Namespace) -> list[dict[str, object]]:
    """MACs of the segmentation head per image at several widths (FlopCounterMode on meta tensors)."""
    from anomalib_crr.models.crr.components.encoder import dino_architecture
    from anomalib_crr.models.crr.components.seg_head import CrrSegHead, seg_head_macs

    arch = dino_architecture(args.encoder)
    grid = (args.crop // arch["patch_size"], args.crop // arch["patch_size"])
    in_channels = 2 * arch["embed_dim"]
    rows = []
    for width in (192, *args.light_widths):
        macs = seg_head_macs(in_channels, width, grid)
        with torch.device("meta"):
            params = count_parameters(CrrSegHead(in_channels=in_channels, base_width=width))
        rows.append(
            {
                "seg_base_width": width,
                "params_M": params / 1e6,
                "GMACs_as_trained": macs["train"] / 1e9,
                "GMACs_eval_path": macs["eval"] / 1e9,
                "encoder": args.encoder,
                "crop": args.crop,
                "grid": f"{grid[0]}x{grid[1]}",
            }
        )
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
    parser.add_argument("--light-widths", type=int, nargs="*", default=[96, 64], help="lighter seg_base_width values")
    parser.add_argument("--head-macs", action="store_true", help="only count the seg head's MACs per width")
    args = parser.parse_args()
    if args.startup:
        write_table(run_startup(max(args.runs, 10)), args.output / "startup", float_format=".3f")
        return
    encoder_tag = args.encoder.split("_")[1]
    if args.head_macs:
        write_table(run_head_macs(args), args.output / f"seg_head_macs_{encoder_tag}_{args.crop}", float_format=".3f")
        return
    rows = run_speed(args)
    name = f"inference_speed_{encoder_tag}_{args.crop}_{args.device.split(':')[0]}"
    write_table(rows, args.output / name, float_format=".3f")


if __name__ == "__main__":
    main()
