# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Training-step time of CRR (stage I, stage II, synthesis alone) vs anomalib's Dinomaly, same encoder/crop/batch.

Both models are built in one process with random-init encoders (weights do not change the cost) and the
same encoder blocks, decoder depth and groups. Each candidate runs a real optimizer step:

* **Dinomaly**: anomalib's ``DinomalyModel`` training forward (its loss), backward, gradient-norm clip 0.1
  (its ``trainer_arguments``), StableAdamW step, warm-cosine scheduler step; on normalised images.
* **CRR stage I**: ``CRR._stage1_step`` (synthesis of the whole batch, one encoder/decoder pass on the
  clean + synthetic images, both losses, backward, clip, optimizer and scheduler steps), through a Lightning
  ``Trainer`` attached to the module so that its manual-optimisation calls are the ones a fit makes.
* **CRR stage II**: ``CRR._stage2_step`` on the first ``stage2_batch_size`` images.
* **CRR synthesis**: the synthesiser alone on the batch.

Candidates are timed round-robin (so load drifts on a shared machine hit all alike), after warm-up; the
median is reported per step and per image. Dinomaly processes B images per step, CRR stage I 2B (clean
+ synthetic), stage II ``stage2_batch_size``.

Usage::

    python benchmarks/crr_training_speed.py                       # ViT-S, crop 112, smoke-config depth
    python benchmarks/crr_training_speed.py --preset full --crop 224 --batch 8

Writes ``<output>/crr_training_speed_<preset>_<crop>_<device>.csv`` and ``.md``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from anomalib_crr.demo import SMOKE_MODEL_ARGS
from benchmarks.common import interleaved_medians, random_init_dinomaly, write_table

PRESETS: dict[str, dict[str, Any]] = {
    # configs/model/crr_smoke.yaml: 4 encoder blocks, 4 decoder blocks, narrow seg head.
    "smoke": {k: v for k, v in SMOKE_MODEL_ARGS.items() if k not in {"encoder_name", "warmup_steps", "dtd_dir"}},
    # The paper architecture: blocks 2-9, 8 decoder blocks, seg head width 192 at 256² (on a CPU, shrink the
    # head with --seg-base-width/--seg-output-size: stage II at the paper head takes minutes per step there).
    "full": {},
}


def build_dinomaly(encoder: str, architecture: dict[str, Any]) -> torch.nn.Module:
    """Build anomalib's DinomalyModel with a random-init encoder (Dinomaly hard-codes ``pre_trained=True``)."""
    keys = ("target_layers", "decoder_depth", "fuse_layer_encoder", "fuse_layer_decoder")
    with random_init_dinomaly() as dinomaly_torch:
        model = dinomaly_torch.DinomalyModel(
            encoder_name=encoder, **{k: architecture[k] for k in keys if k in architecture}
        )
    # anomalib 2.7's DinomalyModel accepts custom groups but only ever stores the defaults.
    for key in ("fuse_layer_encoder", "fuse_layer_decoder"):
        if key in architecture:
            setattr(model, key, architecture[key])
    return model


def dinomaly_step_fn(model: torch.nn.Module, images: torch.Tensor) -> Callable[[], None]:
    """One Dinomaly optimizer step as its Lightning module makes it (automatic optimisation, clip 0.1)."""
    from anomalib.models.image.dinomaly.components import StableAdamW, WarmCosineScheduler
    from anomalib.models.image.dinomaly.lightning_model import TRAINING_CONFIG

    model.train()
    trainable = torch.nn.ModuleList([model.bottleneck, model.decoder])
    optimizer = StableAdamW(trainable.parameters(), **TRAINING_CONFIG["optimizer"])
    scheduler = WarmCosineScheduler(optimizer, base_value=2e-3, final_value=2e-4, total_iters=10_000, warmup_iters=100)
    mean = torch.tensor([0.485, 0.456, 0.406], device=images.device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=images.device).view(1, 3, 1, 1)
    normalized = (images - mean) / std
    state = {"step": 0}

    def step() -> None:
        loss = model(normalized, global_step=state["step"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable.parameters(), 0.1)
        optimizer.step()
        scheduler.step()
        state["step"] += 1

    return step


def build_crr(args: argparse.Namespace, architecture: dict[str, Any], precision: str = "32-true") -> Any:
    """A CRR module with a Lightning Trainer attached, its optimizers set up and its synthesiser built.

    ``precision`` is the Trainer's (``16-mixed``, ``bf16-mixed``...): its plugin scales the manual backward and
    unscales before the clip, as in a fit; wrap the step calls in ``trainer.precision_plugin.train_step_context()``
    for the autocast that Lightning puts around ``training_step``.
    """
    from lightning.pytorch import Trainer

    from anomalib_crr import CRR

    resize = int(round(args.crop * 448 / 392 / 14) * 14) if args.canvas else args.crop
    model = CRR(
        encoder_name=args.encoder,
        encoder_weights=None,
        dtd_dir=args.dtd_dir,
        stage1_steps=10_000,
        stage2_steps=8_000,
        stage2_batch_size=args.stage2_batch_size,
        pre_processor=CRR.configure_pre_processor(image_size=(resize, resize), crop_size=args.crop),
        **architecture,
    ).to(args.device)
    trainer = Trainer(
        accelerator="cpu" if args.device == "cpu" else "gpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_steps=18_000,
        precision=precision,
    )
    model.trainer = trainer
    trainer.strategy.connect(model)
    trainer.strategy.setup_optimizers(trainer)
    model.on_fit_start()
    return model


def run(args: argparse.Namespace) -> list[dict[str, object]]:
    """Time the candidates and return one row each."""
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    architecture = dict(PRESETS[args.preset])
    if args.seg_base_width is not None:
        architecture["seg_base_width"] = args.seg_base_width
    if args.seg_output_size is not None:
        architecture["seg_output_size"] = args.seg_output_size
    images = torch.rand(args.batch, 3, args.crop, args.crop, device=args.device)
    dinomaly = build_dinomaly(args.encoder, architecture).to(args.device)
    crr = build_crr(args, architecture)
    assert crr.synthesizer is not None
    stage2_images = crr.stage2_images(images)
    state = {"step": 0}

    def stage1() -> None:
        crr._stage1_step(images, state["step"])
        state["step"] += 1

    medians = interleaved_medians(
        {
            "Dinomaly training step": dinomaly_step_fn(dinomaly, images),
            "CRR stage I step": stage1,
            "CRR stage II step": lambda: crr._stage2_step(stage2_images),
            "CRR synthesis only": lambda: crr.synthesizer(images),
        },
        args.runs,
        args.warmup,
        grad=True,
    )
    images_per_step = {
        "Dinomaly training step": args.batch,
        "CRR stage I step": 2 * args.batch,
        "CRR stage II step": stage2_images.shape[0],
        "CRR synthesis only": args.batch,
    }
    dinomaly_per_image = medians["Dinomaly training step"] / args.batch
    stage1_step = medians["CRR stage I step"]
    rows: list[dict[str, object]] = []
    for name, seconds in medians.items():
        per_image = seconds / images_per_step[name]
        rows.append(
            {
                "step": name,
                "ms_per_step": seconds * 1000,
                "images_per_step": images_per_step[name],
                "ms_per_image": per_image * 1000,
                "ratio_per_image_vs_dinomaly": per_image / dinomaly_per_image,
                "share_of_stage1_step": seconds / stage1_step,
                "encoder": args.encoder,
                "preset": args.preset,
                "crop": args.crop,
                "batch": args.batch,
                "runs": args.runs,
                "threads": args.threads,
                "device": args.device,
            }
        )
    return rows


def main() -> None:
    """Parse arguments, time, write the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="vit_small_patch14_reg4_dinov2")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="smoke")
    parser.add_argument("--crop", type=int, default=112)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--stage2-batch-size", type=int, default=None, help="default: CRR's (8)")
    parser.add_argument("--seg-base-width", type=int, default=None, help="override the preset's seg head width")
    parser.add_argument("--seg-output-size", type=int, default=None, help="override the preset's seg output side")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtd-dir", default=None, help="texture folder (default: Perlin-noise textures, offline)")
    parser.add_argument(
        "--no-canvas", dest="canvas", action="store_false", help="synthesise at the crop, not at the 448/392 resize"
    )
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    if args.stage2_batch_size is None:
        args.stage2_batch_size = 8
    rows = run(args)
    note = (
        f"CRR vs anomalib Dinomaly training steps: {args.encoder} (random init), preset `{args.preset}` "
        f"(seg head width {args.seg_base_width or 'preset'}, output {args.seg_output_size or 'preset'}), crop "
        f"{args.crop}, batch {args.batch}, stage-II batch {args.stage2_batch_size}, {args.threads} thread(s) on "
        f"{args.device}, median of {args.runs} round-robin runs after {args.warmup} warm-up rounds. "
        "`ratio_per_image_vs_dinomaly`: CRR time per processed image (stage I: clean + synthetic) over "
        "Dinomaly's per training image. anomalib's Dinomaly runs every encoder block (timm "
        "`forward_intermediates` without `stop_early`); CRR stops after the deepest target block, as the official code."
    )
    name = f"crr_training_speed_{args.preset}_{args.crop}_{args.device.split(':')[0]}"
    write_table(rows, args.output / name, intro=note, float_format=".3f")


if __name__ == "__main__":
    main()
