# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""GPU acceptance run: one command that proves the GPU path in about 8 minutes and writes one report.

A GPU is lent to this project rarely and briefly (about 15 minutes of device time, start-up included), so the
questions a GPU must answer are asked by this prepared script, not by hand. It runs seven parts in order, each
with its own time budget; a part that raises (or runs out of time) is recorded as failed with its error and the
run goes on to the next part:

1. ``environment``: CUDA visible, device name, driver, CUDA / cuDNN versions, bf16 and TF32 support, memory.
2. ``fidelity``: CRR (random weights) on the device vs on the CPU, same inputs: fp32 (torch's TF32 defaults and
   strict fp32), ``16-mixed`` and ``bf16-mixed`` autocast inference; max difference of map and score.
3. ``training``: CRR ViT-B/14 at 392², batch 16, generated tensors: stage-I and stage-II optimizer steps through
   a real Lightning Trainer in ``32-true``, ``16-mixed``, ``bf16-mixed`` (ms/step, peak memory, finite loss);
   the same harness for Dinomaly and INP-Former (one stage).
4. ``inference``: batch 1 and 16, fp32 / fp16 / bf16 autocast, round-robin medians timed with CUDA events:
   CRR fused, CRR reconstruction only, Dinomaly, INP-Former (ViT-B/392), MFRNet, PatchCore, PaDiM (256²);
   then ``torch.compile`` where it works, recording where it does not.
5. ``smoke``: ``anomalib-crr benchmark --config configs/benchmark/smoke.yaml --executor pool`` on the device in
   ``32-true`` and ``16-mixed``: every job must finish, and its results carry the device's cost figures.
6. ``mfrnet_paper``: ``configs/model/mfrnet_paper.yaml`` optimizer steps per second on generated data (first
   epoch with the VGG16 forward, later epochs from the feature cache), turned into a time for its 200 epochs.
7. ``estimate``: the full ``mvtec_gpu`` + ``visa_gpu`` training time on 1 and 8 GPUs from the measured steps.

Every encoder is random-init (``offline: {random_init: true}``, as the benchmark does it): weights do not change
the cost, and the machine has no internet. ``--tiny`` (automatic without CUDA) shrinks every part (ViT-S pruned
to 2 blocks at 56², 64² CNN inputs, 1-2 steps, one smoke job) so that the whole script runs on a 2-core CPU in
about 2 minutes; the test suite runs it that way, so the script cannot rot.

Usage::

    python benchmarks/gpu_acceptance.py --output benchmarks/results/gpu            # on the GPU machine
    python benchmarks/gpu_acceptance.py --output /tmp/acc --device cpu --tiny      # CPU smoke (~2 min)
    python benchmarks/gpu_acceptance.py --output /tmp/acc --parts training,inference --budget training=200

Writes ``<output>/gpu_acceptance.md`` and ``gpu_acceptance.csv`` (one row per measurement, plus one ``part`` row
per part with its status, wall time, budget and error). Exit code 0 when every part passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import datetime as dt
import gc
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
import yaml

from benchmarks.common import ROOT as REPO
from benchmarks.common import interleaved_medians
from benchmarks.crr_training_speed import build_crr, build_dinomaly

PARTS = ("environment", "fidelity", "training", "inference", "smoke", "mfrnet_paper", "estimate")
# Seconds per part on a GPU: about 8 minutes in all (the device is lent for ~15 minutes, start-up included,
# and a rerun must still fit). The smoke part is the largest: 2 x 5 job processes, each importing anomalib.
GPU_BUDGET_S = {
    "environment": 15,
    "fidelity": 45,
    "training": 100,
    "inference": 140,
    "smoke": 160,
    "mfrnet_paper": 30,
    "estimate": 5,
}
# Seconds per part in --tiny mode on a 2-core CPU (the suite's test runs it).
TINY_BUDGET_S = {
    "environment": 10,
    "fidelity": 30,
    "training": 60,
    "inference": 60,
    "smoke": 120,
    "mfrnet_paper": 40,
    "estimate": 5,
}
# A part still running this long after its budget is interrupted (SIGALRM): budgets are checked between
# measurements, so only a single call that hangs (a compile, a stuck kernel) gets this far.
HARD_LIMIT_FACTOR, HARD_LIMIT_GRACE_S = 1.5, 20.0

# The tiny CRR/Dinomaly/INP-Former architecture (tests/helpers.py's TINY_CRR): 2 encoder blocks, 2 groups.
TINY_ARCH: dict[str, Any] = {
    "target_layers": [0, 1],
    "decoder_depth": 2,
    "fuse_layer_encoder": [[0], [1]],
    "fuse_layer_decoder": [[0], [1]],
    "seg_base_width": 8,
    "seg_output_size": 32,
}

# Training / test images per category (MVTec AD; VisA's official 1cls split) for the run-time estimate.
MVTEC_TRAIN = {
    "bottle": 209,
    "cable": 224,
    "capsule": 219,
    "carpet": 280,
    "grid": 264,
    "hazelnut": 391,
    "leather": 245,
    "metal_nut": 220,
    "pill": 267,
    "screw": 320,
    "tile": 230,
    "toothbrush": 60,
    "transistor": 213,
    "wood": 247,
    "zipper": 240,
}
VISA_TRAIN = {
    "candle": 900,
    "capsules": 542,
    "cashew": 450,
    "chewinggum": 453,
    "fryum": 450,
    "macaroni1": 900,
    "macaroni2": 900,
    "pcb1": 904,
    "pcb2": 901,
    "pcb3": 905,
    "pcb4": 904,
    "pipe_fryum": 450,
}
TEST_IMAGES = {"mvtec": 1725, "visa": 2162}


@dataclass
class Scale:
    """Sizes of every part: the papers' (GPU) or tiny (CPU smoke)."""

    tiny: bool
    encoder: str
    crop: int
    batch: int
    stage2_batch: int
    arch: dict[str, Any]
    train_warmup: int
    train_runs: int
    infer_batches: tuple[int, ...]
    infer_dtypes: tuple[str, ...]
    infer_warmup: int
    infer_runs: int
    cnn_size: int
    patchcore_backbone: str
    patchcore_bank: int
    mfrnet_size: int
    mfrnet_batch: int
    mfrnet_runs: int  # timed steps per kind; the GPU run times as many as half the part's budget allows
    smoke_only: str | None
    compile_backend: str
    compile_models: tuple[str, ...] | None  # None: every inference model

    @classmethod
    def make(cls, tiny: bool) -> Scale:
        """The GPU sizes of the issue, or the tiny CPU ones."""
        if tiny:
            # fp16 autocast is left out on CPU: slow there, and Lightning's CPU mixed precision is bf16 only.
            return cls(
                tiny=True, encoder="vit_small_patch14_reg4_dinov2", crop=56, batch=2, stage2_batch=2,
                arch=dict(TINY_ARCH), train_warmup=0, train_runs=1, infer_batches=(1, 2), infer_dtypes=("fp32", "bf16"),
                infer_warmup=0, infer_runs=1, cnn_size=64, patchcore_backbone="resnet18", patchcore_bank=256,
                mfrnet_size=64, mfrnet_batch=2, mfrnet_runs=1, smoke_only="Padim*", compile_backend="eager",
                compile_models=("CRR reconstruction only",),
            )  # fmt: skip
        # 24,576 = 240 images x 1,024 patches x 10 % coreset: a typical MVTec category's PatchCore memory bank.
        return cls(
            tiny=False, encoder="vit_base_patch14_reg4_dinov2", crop=392, batch=16, stage2_batch=8, arch={},
            train_warmup=2, train_runs=5, infer_batches=(1, 16), infer_dtypes=("fp32", "fp16", "bf16"),
            infer_warmup=3, infer_runs=10, cnn_size=256, patchcore_backbone="wide_resnet50_2", patchcore_bank=24_576,
            mfrnet_size=256, mfrnet_batch=8, mfrnet_runs=10**6, smoke_only=None, compile_backend="inductor",
            compile_models=None,
        )  # fmt: skip


@dataclass
class Context:
    """What the parts share: device, sizes, options, measurements for the estimate, the running part's budget."""

    device: torch.device
    scale: Scale
    args: argparse.Namespace
    output: Path
    measured: dict[str, float] = field(default_factory=dict)
    deadline: float = math.inf
    # Rows recorded so far by the running part's guarded measurements: kept when the part itself fails.
    partial: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cuda(self) -> bool:
        """Whether the parts run on a CUDA device."""
        return self.device.type == "cuda"

    def left(self) -> float:
        """Seconds left in the running part's budget."""
        return self.deadline - time.perf_counter()

    def sync(self) -> None:
        """Wait for the device (a no-op on CPU)."""
        if self.cuda:
            torch.cuda.synchronize(self.device)


class BudgetExhaustedError(RuntimeError):
    """The running part's budget is spent; the measurements left are recorded as skipped."""


class PartTimeoutError(BaseException):
    """A single call ran past the part's hard limit (raised by SIGALRM).

    A ``BaseException``, so that no ``except Exception`` inside a part swallows it.
    """


Row = dict[str, Any]


def row(
    part: str, item: str, metric: str, value: Any = None, unit: str = "", status: str = "ok", note: str = ""
) -> Row:
    """One measurement: a number (``value``) or a stated reason (``note``)."""
    if isinstance(value, torch.Tensor):
        value = value.item()
    return {"part": part, "status": status, "item": item, "metric": metric, "value": value, "unit": unit, "note": note}


def guarded(part: str, item: str, rows: list[Row], ctx: Context, call: Callable[[], list[Row]], need_s: float = 0):
    """Run one measurement; a failure or a spent budget becomes a row with the reason, and the part goes on."""
    if ctx.left() <= need_s:
        rows.append(row(part, item, "-", status="skipped", note=f"budget exhausted ({ctx.left():.0f} s left)"))
        return
    try:
        new_rows = call()
        rows.extend(new_rows)
        ctx.partial.extend(new_rows)
    except BudgetExhaustedError as exc:
        rows.append(row(part, item, "-", status="skipped", note=str(exc)))
    except Exception as exc:  # (any failure of one measurement is recorded, the part goes on)
        rows.append(row(part, item, "-", status="failed", note=_error(exc)))
        print(traceback.format_exc(), flush=True)
    finally:
        _free(ctx)


def _error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ").replace("|", "/")
    return text if len(text) <= 400 else text[:397] + "..."


def _free(ctx: Context) -> None:
    gc.collect()
    if ctx.cuda:
        torch.cuda.empty_cache()


@contextlib.contextmanager
def random_init() -> Iterator[None]:
    """``offline: {random_init: true}`` for this block: ``timm.create_model(pretrained=True)`` builds random weights.

    The benchmark's own substitute (:func:`anomalib_crr.benchmark.offline.apply_offline_patches`), undone on exit so
    that a caller in the same process (a test) keeps timm as it was.
    """
    import timm

    from anomalib_crr.benchmark.offline import apply_offline_patches

    original = timm.create_model
    apply_offline_patches({"random_init": True})
    try:
        yield
    finally:
        timm.create_model = original


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


AMP = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def _unsupported_dtype(ctx: Context, name: str) -> str | None:
    """Why an autocast dtype cannot run here (``None``: it can)."""
    if name == "bf16" and ctx.cuda and not torch.cuda.is_bf16_supported():
        return "bf16 not supported by this GPU"
    return None


# ---------------------------------------------------------------------------------------------------- 1 environment
def part_environment(ctx: Context) -> list[Row]:
    """CUDA visibility, device, driver, bf16 / TF32 support and free memory."""
    p = "environment"
    rows = [row(p, "cuda", "available", int(torch.cuda.is_available()), "bool")]
    rows.append(row(p, "run", "device", note=str(ctx.device)))
    if not ctx.cuda:
        rows.append(row(p, "cuda", "gpu", note="none (CPU run)"))
        rows.append(row(p, "cpu", "logical_cores", os.cpu_count(), ""))
        rows.append(row(p, "cpu", "torch_threads", torch.get_num_threads(), ""))
        return rows
    index = ctx.device.index or 0
    props = torch.cuda.get_device_properties(index)
    free, total = torch.cuda.mem_get_info(index)
    rows += [
        row(p, "cuda", "device_count", torch.cuda.device_count(), ""),
        row(p, "cuda", "gpu", note=props.name),
        row(p, "cuda", "compute_capability", float(f"{props.major}.{props.minor}"), ""),
        row(p, "cuda", "multiprocessors", props.multi_processor_count, ""),
        row(p, "cuda", "bf16_supported", int(torch.cuda.is_bf16_supported()), "bool"),
        row(p, "cuda", "tf32_capable", int(props.major >= 8), "bool", note="Ampere (8.0) or newer"),
        row(
            p,
            "cuda",
            "tf32_matmul_enabled",
            int(torch.backends.cuda.matmul.allow_tf32),
            "bool",
            note="torch default off: fp32 matmuls run in full fp32",
        ),
        row(
            p,
            "cuda",
            "tf32_cudnn_enabled",
            int(torch.backends.cudnn.allow_tf32),
            "bool",
            note="torch default on: fp32 convolutions may run in TF32",
        ),
        row(p, "memory", "free", free / 2**20, "MiB"),
        row(p, "memory", "total", total / 2**20, "MiB"),
    ]
    return rows


# ------------------------------------------------------------------------------------------------------ 2 fidelity
def part_fidelity(ctx: Context) -> list[Row]:
    """CRR from random weights on the device vs the CPU on the same inputs: max |Δ| of map and score."""
    from anomalib_crr.models.crr import CrrModel

    p, s = "fidelity", ctx.scale
    torch.manual_seed(0)
    model = CrrModel(encoder_name=s.encoder, encoder_weights=None, **s.arch).eval()
    model.mark_seg_head_trained()  # the fused map (reconstruction + segmentation head), as after stage II
    images = torch.rand(2, 3, s.crop, s.crop, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        reference = model(images)
    ref_map, ref_score = reference.anomaly_map.float(), reference.pred_score.float()
    rows = [
        row(
            p,
            "cpu fp32 reference",
            "map_range",
            float(ref_map.max() - ref_map.min()),
            "",
            note=f"{s.encoder} random init, {tuple(images.shape)}",
        ),
        row(p, "cpu fp32 reference", "score_mean", float(ref_score.mean()), ""),
    ]
    on_device = copy.deepcopy(model).to(ctx.device)
    device_images = images.to(ctx.device)
    variants: dict[str, tuple[torch.dtype | None, bool]] = {"fp32": (None, False)}
    if ctx.cuda:
        variants["fp32 (TF32 off everywhere)"] = (None, True)
    variants["16-mixed (fp16 autocast)"] = (torch.float16, False)
    variants["bf16-mixed (bf16 autocast)"] = (torch.bfloat16, False)

    def measure(name: str, dtype: torch.dtype | None, strict: bool) -> list[Row]:
        if dtype is torch.bfloat16 and (reason := _unsupported_dtype(ctx, "bf16")):
            return [row(p, name, "-", status="skipped", note=reason)]
        cudnn_tf32 = torch.backends.cudnn.allow_tf32
        if strict:
            torch.backends.cudnn.allow_tf32 = False
        try:
            with torch.inference_mode(), _autocast(ctx.device, dtype):
                output = on_device(device_images)
        finally:
            torch.backends.cudnn.allow_tf32 = cudnn_tf32
        map_diff = (output.anomaly_map.float().cpu() - ref_map).abs().max()
        score_diff = (output.pred_score.float().cpu() - ref_score).abs().max()
        where = f"{ctx.device} vs cpu" if ctx.cuda else "cpu vs cpu fp32"
        return [
            row(p, name, "max_abs_map_diff", map_diff, "", note=where),
            row(p, name, "max_abs_score_diff", score_diff, ""),
            row(
                p,
                name,
                "max_rel_map_diff",
                map_diff / max(float(ref_map.max() - ref_map.min()), 1e-12),
                "",
                note="relative to the reference map's range",
            ),
        ]

    rows_out: list[Row] = []
    for name, (dtype, strict) in variants.items():
        guarded(p, name, rows_out, ctx, lambda n=name, d=dtype, t=strict: measure(n, d, t))
    return rows + rows_out


# ------------------------------------------------------------------------------------------------------ 3 training
def _time_steps(ctx: Context, step: Callable[[], torch.Tensor], warmup: int, runs: int) -> tuple[float, float, bool]:
    """Median ms per step (CUDA events on GPU), peak memory (MiB, after warm-up) and whether every loss was finite."""
    losses = [step() for _ in range(warmup)]
    if ctx.cuda:
        ctx.sync()
        torch.cuda.reset_peak_memory_stats(ctx.device)
    times = []
    for _ in range(runs):
        if ctx.left() <= 0:
            break
        if ctx.cuda:
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            losses.append(step())
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            start = time.perf_counter()
            losses.append(step())
            times.append((time.perf_counter() - start) * 1000)
    if not times:
        msg = f"budget exhausted after {warmup} warm-up step(s), before a timed step"
        raise BudgetExhaustedError(msg)
    peak = torch.cuda.max_memory_allocated(ctx.device) / 2**20 if ctx.cuda else float("nan")
    finite = all(bool(torch.isfinite(torch.as_tensor(loss)).all()) for loss in losses)
    return statistics.median(times), peak, finite


def _amp_step(
    loss_fn: Callable[[int], torch.Tensor],
    params: list[torch.nn.Parameter],
    optimizer: Any,
    scheduler: Any,
    precision: str,
    device: torch.device,
    clip: float,
) -> Callable[[], torch.Tensor]:
    """One automatic-optimisation step as Lightning makes it: autocast, GradScaler for fp16, unscale, clip, step."""
    dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
    state = {"step": 0}

    def step() -> torch.Tensor:
        with _autocast(device, dtype):
            loss = loss_fn(state["step"])
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, clip)
            optimizer.step()
        scheduler.step()
        state["step"] += 1
        return loss.detach()

    return step


def _build_inp_former(scale: Scale) -> Any:
    """The InpFormer Lightning module of anomalib with a random-init encoder (it hard-codes ``pre_trained=True``)."""
    from anomalib.models import InpFormer

    arch = {k: scale.arch[k] for k in ("target_layers", "fuse_layer_encoder", "fuse_layer_decoder") if k in scale.arch}
    with random_init():
        return InpFormer(encoder_name=scale.encoder, **arch)


def _precision_skip(ctx: Context, precision: str) -> str | None:
    if precision == "16-mixed" and not ctx.cuda:
        return "Lightning runs 16-mixed on GPUs only (bf16-mixed is its CPU mixed precision)"
    if precision == "bf16-mixed":
        return _unsupported_dtype(ctx, "bf16")
    return None


# Long on purpose: one measured part of the acceptance script, read top to bottom as the GPU run's log.
def part_training(ctx: Context) -> list[Row]:  # noqa: PLR0915
    """CRR stage I / II, Dinomaly and INP-Former optimizer steps in 32-true, 16-mixed and bf16-mixed."""
    p, s = "training", ctx.scale
    rows: list[Row] = []
    images = torch.rand(s.batch, 3, s.crop, s.crop, device=ctx.device)
    mean = torch.tensor([0.485, 0.456, 0.406], device=ctx.device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=ctx.device).view(1, 3, 1, 1)
    normalized = (images - mean) / std
    shape = f"{s.encoder} random init, {s.crop}², batch {s.batch}"

    def record(item: str, precision: str, ms: float, peak: float, finite: bool, images_per_step: int) -> list[Row]:
        key = f"{item}|{precision}"
        ctx.measured[key] = ms
        return [
            row(p, f"{item} [{precision}]", "ms_per_step", ms, "ms", note=f"{shape}, {images_per_step} img/step"),
            row(p, f"{item} [{precision}]", "peak_memory", peak, "MiB", note="" if ctx.cuda else "not measured on CPU"),
            row(p, f"{item} [{precision}]", "loss_finite", int(finite), "bool"),
        ]

    def crr(precision: str) -> list[Row]:
        args = SimpleNamespace(
            encoder=s.encoder,
            dtd_dir=None,
            stage2_batch_size=s.stage2_batch,
            crop=s.crop,
            canvas=True,
            device=str(ctx.device),
        )
        torch.manual_seed(0)
        module = build_crr(args, dict(s.arch), precision=precision)
        plugin = module.trainer.precision_plugin
        state = {"step": 0}

        def stage1() -> torch.Tensor:
            with plugin.train_step_context():
                loss = module._stage1_step(images, state["step"])
            state["step"] += 1
            return loss

        out = record("CRR stage I", precision, *_time_steps(ctx, stage1, s.train_warmup, s.train_runs), 2 * s.batch)
        stage2_images = module.stage2_images(images)

        def stage2() -> torch.Tensor:
            with plugin.train_step_context():
                return module._stage2_step(stage2_images)

        if ctx.left() <= 0:
            raise BudgetExhaustedError("budget exhausted before CRR stage II")
        out += record(
            "CRR stage II", precision, *_time_steps(ctx, stage2, s.train_warmup, s.train_runs), stage2_images.shape[0]
        )
        return out

    def dinomaly(precision: str) -> list[Row]:
        from anomalib.models.image.dinomaly.components import StableAdamW, WarmCosineScheduler
        from anomalib.models.image.dinomaly.lightning_model import TRAINING_CONFIG

        torch.manual_seed(0)
        model = build_dinomaly(s.encoder, dict(s.arch)).to(ctx.device).train()
        params = [q for module in (model.bottleneck, model.decoder) for q in module.parameters()]
        optimizer = StableAdamW(params, **TRAINING_CONFIG["optimizer"])
        scheduler = WarmCosineScheduler(
            optimizer, base_value=2e-3, final_value=2e-4, total_iters=10_000, warmup_iters=100
        )
        step = _amp_step(
            lambda i: model(normalized, global_step=i), params, optimizer, scheduler, precision, ctx.device, clip=0.1
        )
        return record("Dinomaly", precision, *_time_steps(ctx, step, s.train_warmup, s.train_runs), s.batch)

    def inp_former(precision: str) -> list[Row]:
        from anomalib.models.image.dinomaly.components import StableAdamW, WarmCosineScheduler
        from anomalib.models.image.inp_former.lightning_model import TRAINING_CONFIG

        torch.manual_seed(0)
        module = _build_inp_former(s)
        model = module.model.to(ctx.device).train()
        params = list(module.trainable_modules.parameters())
        optimizer = StableAdamW(params, **TRAINING_CONFIG["optimizer"])
        scheduler = WarmCosineScheduler(optimizer, total_iters=10_000, **TRAINING_CONFIG["scheduler"])
        step = _amp_step(
            lambda _i: model(normalized),
            params,
            optimizer,
            scheduler,
            precision,
            ctx.device,
            clip=TRAINING_CONFIG["trainer"]["gradient_clip_val"],
        )
        return record("INP-Former", precision, *_time_steps(ctx, step, s.train_warmup, s.train_runs), s.batch)

    for precision in ("32-true", "16-mixed", "bf16-mixed"):
        for name, build in (("CRR", crr), ("Dinomaly", dinomaly), ("INP-Former", inp_former)):
            if reason := _precision_skip(ctx, precision):
                rows.append(row(p, f"{name} [{precision}]", "-", status="skipped", note=reason))
                continue
            guarded(p, f"{name} [{precision}]", rows, ctx, lambda b=build, q=precision: b(q))
    return rows


# ----------------------------------------------------------------------------------------------------- 4 inference
def _inference_models(ctx: Context) -> dict[str, tuple[Callable[[torch.Tensor], Any], int, bool]]:
    """Name -> (call on an image batch, input side, wants ImageNet-normalised input)."""
    from anomalib.models.image.padim.torch_model import PadimModel
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    from anomalib_crr import MFRNet
    from anomalib_crr.models.crr import CrrModel

    s, dev = ctx.scale, ctx.device
    torch.manual_seed(0)
    crr = CrrModel(encoder_name=s.encoder, encoder_weights=None, **s.arch).eval().to(dev)
    crr.mark_seg_head_trained()

    def crr_fused(x: torch.Tensor) -> Any:
        crr._seg_active = True
        return crr(x)

    def crr_reconstruction(x: torch.Tensor) -> Any:
        crr._seg_active = False  # the map before stage II: A_rec only, no segmentation head
        try:
            return crr(x)
        finally:
            crr._seg_active = True

    dinomaly = build_dinomaly(s.encoder, dict(s.arch)).eval().to(dev)
    inp_former = _build_inp_former(s).model.eval().to(dev)
    with random_init():
        tiny_mfrnet = {"stem_dim": 16, "embed_dim": 32, "depth": 1, "num_heads": 2} if s.tiny else {}
        mfrnet = MFRNet(pre_trained=False, **tiny_mfrnet).model.eval().to(dev)
        patchcore = PatchcoreModel(backbone=s.patchcore_backbone, layers=["layer2", "layer3"], pre_trained=False)
        padim = PadimModel(backbone="resnet18", layers=["layer1", "layer2", "layer3"], pre_trained=False)
    patchcore = patchcore.to(dev).train()
    with torch.no_grad():
        patchcore(torch.rand(1, 3, s.cnn_size, s.cnn_size, device=dev))  # one embedding: its width
        width = patchcore.embedding_store.pop().shape[-1]
        patchcore.embedding_store.clear()
        patchcore.memory_bank = torch.randn(s.patchcore_bank, width, device=dev)  # the search cost needs the size only
    patchcore.eval()
    padim = padim.to(dev).train()
    with torch.no_grad():
        padim(torch.rand(4, 3, s.cnn_size, s.cnn_size, device=dev))
        padim.fit()
    padim.eval()
    return {
        "CRR fused": (crr_fused, s.crop, False),
        "CRR reconstruction only": (crr_reconstruction, s.crop, False),
        "Dinomaly": (dinomaly, s.crop, True),
        "INP-Former": (inp_former, s.crop, True),
        "MFRNet": (mfrnet, s.cnn_size, True),
        "PatchCore": (patchcore, s.cnn_size, True),
        "PaDiM": (padim, s.cnn_size, True),
    }


def part_inference(ctx: Context) -> list[Row]:
    """Latency (batch 1) and throughput (batch 16), fp32 / fp16 / bf16, round-robin medians; then torch.compile."""
    p, s = "inference", ctx.scale
    rows: list[Row] = []
    models = _inference_models(ctx)
    dtypes = [d for d in s.infer_dtypes if not _unsupported_dtype(ctx, d)]
    rows += [
        row(p, f"* [{d}]", "-", status="skipped", note=_unsupported_dtype(ctx, d))
        for d in s.infer_dtypes
        if d not in dtypes
    ]
    for batch in s.infer_batches:
        inputs = {size: torch.rand(batch, 3, size, size, device=ctx.device) for size in {s.crop, s.cnn_size}}
        candidates: dict[str, Callable[[], Any]] = {}
        for name, (call, size, _) in models.items():
            for dtype_name in dtypes:

                def run(c: Callable = call, x: torch.Tensor = inputs[size], d: str = dtype_name) -> Any:
                    with _autocast(ctx.device, AMP[d]):
                        return c(x)

                candidates[f"{name} [{dtype_name}]"] = run

        def measure(b: int = batch, c: dict = candidates) -> list[Row]:
            # A first call of each candidate alone: one that fails is recorded and left out of the round-robin;
            # the time of this round tells how many timed rounds fit the budget.
            out, start = [], time.perf_counter()
            for name, call in list(c.items()):
                try:
                    with torch.inference_mode():
                        call()
                except Exception as exc:  # (one model failing at one dtype is a result)
                    out.append(row(p, f"{name} b={b}", "-", status="failed", note=_error(exc)))
                    del c[name]
            ctx.sync()
            round_s = time.perf_counter() - start
            if not c:
                return out
            runs = max(1, min(s.infer_runs, int(ctx.left() * 0.5 / max(round_s, 1e-6)) - s.infer_warmup))
            medians = interleaved_medians(c, runs, s.infer_warmup, ctx.sync, events=True, verbose=False)
            for name, seconds in medians.items():
                ms = seconds * 1000
                ctx.measured[f"infer|{name}|b{b}"] = ms / b
                side = models[name.split(" [")[0]][1]
                out.append(
                    row(
                        p,
                        f"{name} b={b}",
                        "ms_per_batch",
                        ms,
                        "ms",
                        note=f"{side}², median of {runs} round-robin runs after {s.infer_warmup} warm-up",
                    )
                )
                out.append(row(p, f"{name} b={b}", "images_per_s", b / seconds, "img/s"))
            return out

        guarded(p, f"eager b={batch}", rows, ctx, measure)
    guarded(p, "torch.compile", rows, ctx, lambda: _compile_rows(ctx, models), need_s=5)
    return rows


def _compile_rows(ctx: Context, models: dict[str, tuple[Callable, int, bool]]) -> list[Row]:
    """``torch.compile`` of each model at the largest batch in bf16 (fp32 on CPU), timed against eager."""
    p, s = "inference", ctx.scale
    batch = max(s.infer_batches)
    dtype_name = "bf16" if ctx.cuda and not _unsupported_dtype(ctx, "bf16") else "fp32"
    rows = []
    for name, (call, size, _) in models.items():
        if s.compile_models is not None and name not in s.compile_models:
            continue  # tiny mode compiles one model: its tracing takes ~10 s per model on a 2-core CPU
        item = f"{name} [{dtype_name}] b={batch} torch.compile({s.compile_backend})"
        if ctx.left() < (10 if s.tiny else 45):
            rows.append(row(p, item, "-", status="skipped", note=f"budget left for compiling: {ctx.left():.0f} s"))
            continue
        x = torch.rand(batch, 3, size, size, device=ctx.device)
        try:
            torch._dynamo.reset()
            compiled = torch.compile(call, backend=s.compile_backend)
            start = time.perf_counter()
            with torch.inference_mode(), _autocast(ctx.device, AMP[dtype_name]):
                compiled(x)
            ctx.sync()
            compile_s = time.perf_counter() - start

            def eager(c: Callable = call, t: torch.Tensor = x) -> Any:
                with _autocast(ctx.device, AMP[dtype_name]):
                    return c(t)

            def fast(c: Callable = compiled, t: torch.Tensor = x) -> Any:
                with _autocast(ctx.device, AMP[dtype_name]):
                    return c(t)

            medians = interleaved_medians(
                {"eager": eager, "compiled": fast}, max(2, s.infer_runs // 2), 1, ctx.sync, events=True, verbose=False
            )
            rows += [
                row(p, item, "compile_s", compile_s, "s", note="first call: tracing + compilation"),
                row(p, item, "ms_per_batch", medians["compiled"] * 1000, "ms"),
                row(p, item, "speedup_vs_eager", medians["eager"] / medians["compiled"], "x"),
            ]
        except Exception as exc:  # (where compile fails is a result)
            rows.append(row(p, item, "-", status="failed", note=_error(exc)))
        finally:
            torch._dynamo.reset()
            _free(ctx)
    return rows


# --------------------------------------------------------------------------------------------------------- 5 smoke
def smoke_config(base: dict[str, Any], cuda: bool, precisions: tuple[str, ...]) -> dict[str, Any]:
    """The smoke config on this device, every model once per precision (``<name>_<precision>``).

    One ``anomalib-crr benchmark`` invocation then runs both precisions (a model's ``trainer.precision`` wins over
    the run's): one CLI start-up instead of two, and one ``results.csv`` in which every job must appear.
    """
    config = copy.deepcopy(base)
    config["accelerator"] = "gpu" if cuda else "cpu"
    config["name"] = f"{config.get('name', 'smoke')}_acceptance"
    models = []
    for precision in precisions:
        for model in base["models"]:
            entry = copy.deepcopy(model)
            entry["name"] = f"{model['name']}_{precision}"
            entry["trainer"] = {**entry.get("trainer", {}), "precision": precision}
            models.append(entry)
    config["models"] = models
    return config


def part_smoke(ctx: Context) -> list[Row]:
    """The smoke benchmark with ``--executor pool`` on the device, in 32-true and 16-mixed (bf16-mixed on CPU)."""
    p, s = "smoke", ctx.scale
    config_path = Path(ctx.args.smoke_config)
    if not config_path.is_file():
        msg = f"smoke config not found: {config_path}"
        raise FileNotFoundError(msg)
    precisions = ("32-true", "16-mixed") if ctx.cuda else ("32-true", "bf16-mixed")
    config = smoke_config(yaml.safe_load(config_path.read_text()), ctx.cuda, precisions)
    folder = ctx.output / "smoke"
    folder.mkdir(parents=True, exist_ok=True)
    config_file = folder / "config.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    command = [sys.executable, "-m", "anomalib_crr", "benchmark", "--config", str(config_file), "--executor", "pool",
               "--output", str(folder / "run"), "--rerun"]  # fmt: skip
    if s.smoke_only:
        command += ["--only", s.smoke_only]
    if not ctx.cuda:  # CPU: the jobs side by side, one thread each, timed while sharing (said in their rows)
        command += ["--workers", str(len(precisions)), "--no-exclusive-timing"]
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)  # fmt: skip
    try:
        log, _ = process.communicate(timeout=max(1.0, ctx.left()))
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the CLI and its job processes: one session
        log, _ = process.communicate()
        (folder / "log.txt").write_text(log or "")
        done = len(list((folder / "run" / "jobs").glob("*/result.json")))
        msg = (
            f"the benchmark ran past the part's budget and was stopped after {done} finished job(s) "
            f"(log: {folder / 'log.txt'}); rerun with --parts smoke --budget smoke=SECONDS"
        )
        raise BudgetExhaustedError(msg) from None
    wall = time.perf_counter() - start
    (folder / "log.txt").write_text(log)
    results = folder / "run" / "results.csv"
    table = list(csv.DictReader(results.open())) if results.is_file() else []
    jobs = {r["job_id"]: r for r in table if r.get("category") == "mean"}
    expected = _expected_smoke_jobs(config_file, s.smoke_only)
    last = log.strip().splitlines()[-1][:300] if log.strip() else "no output"
    out = [
        row(p, "anomalib-crr benchmark --executor pool", "exit_code", process.returncode, "",
            status="ok" if process.returncode == 0 else "failed", note=last if process.returncode else ""),
        row(p, "anomalib-crr benchmark --executor pool", "wall_s", wall, "s", note=f"run folder {folder / 'run'}"),
        row(p, "anomalib-crr benchmark --executor pool", "jobs_finished", len(jobs), "",
            status="ok" if len(jobs) == len(expected) else "failed",
            note=f"of {len(expected)}; missing: {sorted(set(expected) - set(jobs)) or 'none'}"),
    ]  # fmt: skip
    for job_id, result in jobs.items():
        precision = result.get("precision", "")
        device = result.get("device", "")
        cost = {k: _number(result.get(k)) for k in ("latency_ms", "throughput_img_s", "peak_mem_infer_mb", "fit_s")}
        ok = (
            all(math.isfinite(v) for v in cost.values())
            and job_id.split("__")[0].endswith(precision)
            and (not ctx.cuda or "cpu" not in device.lower())
        )
        note = (
            f"device {device}, precision {precision}, {cost['throughput_img_s']:.1f} img/s, peak infer "
            f"{cost['peak_mem_infer_mb']:.0f} MiB, fit {cost['fit_s']:.1f} s"
        )
        out.append(row(p, job_id, "latency_ms", cost["latency_ms"], "ms", status="ok" if ok else "failed", note=note))
    return out


def _expected_smoke_jobs(config_file: Path, only: str | None) -> list[str]:
    from anomalib_crr.benchmark.config import expand_jobs, load_config

    return [job.job_id for job in expand_jobs(load_config(config_file), only)]


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


# -------------------------------------------------------------------------------------------------- 6 mfrnet_paper
def part_mfrnet_paper(ctx: Context) -> list[Row]:
    """Steps per second of configs/model/mfrnet_paper.yaml (VGG16 random init), first and cached epochs."""
    from anomalib_crr import MFRNet

    p, s = "mfrnet_paper", ctx.scale
    config = yaml.safe_load(Path(ctx.args.mfrnet_config).read_text())
    init_args = dict(config["model"]["init_args"])
    init_args.pop("pre_processor", None)
    init_args.update(pre_trained=False, weights_path=None)  # offline: random VGG16 (weights do not change the cost)
    if s.tiny:
        init_args.update(stem_dim=16, embed_dim=32, depth=1, num_heads=2, mask_cell_size=[2, 4])
    epochs = int(config.get("trainer", {}).get("max_epochs", 200))
    torch.manual_seed(0)
    model = MFRNet(**init_args).model.to(ctx.device).train()
    params = [q for q in model.parameters() if q.requires_grad]
    optimizer = torch.optim.Adam(params, lr=float(init_args.get("lr", 1e-4)))
    images = torch.rand(s.mfrnet_batch, 3, s.mfrnet_size, s.mfrnet_size, device=ctx.device)
    with torch.no_grad():
        cached = model.aggregator(images)  # what the feature cache holds after the first epoch

    def step(features: torch.Tensor | None) -> torch.Tensor:
        if features is None:
            with torch.no_grad():
                features = model.aggregator(images)
        hidden = model.train_masks(features.shape[0], tuple(features.shape[-2:]), features.device)
        loss = model.loss(features, model.restore(features, hidden))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    share = ctx.left() / 2
    full_ms, peak, finite_full = _time_steps(_sub_budget(ctx, share), lambda: step(None), 1, s.mfrnet_runs)
    cached_ms, _, finite_cached = _time_steps(_sub_budget(ctx, ctx.left()), lambda: step(cached), 1, s.mfrnet_runs)
    ctx.measured["MFRNet|full"], ctx.measured["MFRNet|cached"] = full_ms, cached_ms
    per_category = statistics.mean(MVTEC_TRAIN.values())
    steps_per_epoch = math.ceil(per_category / 8)
    job_s = steps_per_epoch * (full_ms + (epochs - 1) * cached_ms) / 1000
    size = f"{s.mfrnet_size}², batch {s.mfrnet_batch}"
    return [
        row(p, "step with VGG16 forward (epoch 1)", "steps_per_s", 1000 / full_ms, "1/s", note=size),
        row(p, "step from cached features (epochs 2+)", "steps_per_s", 1000 / cached_ms, "1/s", note=size),
        row(p, "training", "peak_memory", peak, "MiB", note="" if ctx.cuda else "not measured on CPU"),
        row(p, "training", "loss_finite", int(finite_full and finite_cached), "bool"),
        row(
            p,
            f"{epochs} epochs, mean MVTec category ({per_category:.0f} images, batch 8)",
            "train_time",
            job_s / 60,
            "min",
            note="first epoch with the backbone, the rest from the cache; statistics pass and test not included"
            + ("" if not s.tiny else "; tiny restorer: not the paper's figure"),
        ),
    ]


def _sub_budget(ctx: Context, seconds: float) -> Context:
    sub = copy.copy(ctx)
    sub.deadline = time.perf_counter() + seconds
    return sub


# ------------------------------------------------------------------------------------------------------ 7 estimate
def _lpt_makespan(durations: list[float], machines: int) -> float:
    """Longest-processing-time-first schedule of the jobs on ``machines`` GPUs (what a pool of 8 does)."""
    loads = [0.0] * machines
    for duration in sorted(durations, reverse=True):
        loads[loads.index(min(loads))] += duration
    return max(loads)


def part_estimate(ctx: Context) -> list[Row]:
    """The full mvtec_gpu + visa_gpu training time on 1 and 8 GPUs, from the step times measured above."""
    p, m = "estimate", ctx.measured
    rows: list[Row] = []
    datasets = {"mvtec": MVTEC_TRAIN, "visa": VISA_TRAIN}

    def settings(train: dict[str, int]) -> list[int]:
        return [*train.values(), sum(train.values())]  # per_category jobs + the multiclass job

    for precision in ("32-true", "16-mixed"):

        def ms(key: str, p_: str = precision) -> float | None:
            return m.get(f"{key}|{p_}")

        per_model: dict[str, Callable[[int], float] | str] = {}
        s1, s2 = ms("CRR stage I"), ms("CRR stage II")
        per_model["CRR"] = (lambda n, a=s1, b=s2: (10_000 * a + 8_000 * b) / 1000) if s1 and s2 else "not measured"
        dino = ms("Dinomaly")
        per_model["Dinomaly"] = (
            (lambda n, a=dino: min(10_000, 45 * math.ceil(n / 16)) * a / 1000) if dino else "not measured"
        )
        inp = ms("INP-Former")
        per_model["INP-Former"] = (lambda n, a=inp: 200 * math.ceil(n / 16) * a / 1000) if inp else "not measured"
        full, cached = m.get("MFRNet|full"), m.get("MFRNet|cached")
        per_model["MFRNet"] = (
            (lambda n, a=full, b=cached: math.ceil(n / 8) * (a + 199 * b) / 1000) if full and cached else "not measured"
        )
        for name, key in (("PatchCore", "PatchCore [fp32]"), ("PaDiM", "PaDiM [fp32]")):
            per_image = m.get(f"infer|{key}|b{max(ctx.scale.infer_batches)}")
            per_model[name] = (lambda n, a=per_image: n * a / 1000) if per_image else "not measured"
        durations: list[float] = []
        for name, cost in per_model.items():
            if isinstance(cost, str):
                rows.append(row(p, f"{name} [{precision}]", "-", status="skipped", note=f"{cost} in this run"))
                continue
            model_jobs = [cost(n) for train in datasets.values() for n in settings(train)]
            durations += model_jobs
            rows.append(
                row(
                    p,
                    f"{name} [{precision}]",
                    "gpu_hours",
                    sum(model_jobs) / 3600,
                    "h",
                    note=f"{len(model_jobs)} jobs (15 + 1 MVTec, 12 + 1 VisA), training only",
                )
            )
        if durations:
            rows.append(
                row(
                    p,
                    f"all measured models [{precision}] on 1 GPU",
                    "wall_hours",
                    sum(durations) / 3600,
                    "h",
                    note="sum of the jobs above",
                )
            )
            rows.append(
                row(
                    p,
                    f"all measured models [{precision}] on 8 GPUs",
                    "wall_hours",
                    _lpt_makespan(durations, 8) / 3600,
                    "h",
                    note="--executor pool, one job per GPU, longest jobs first",
                )
            )
    rows.append(
        row(
            p,
            "ReverseDistillation, EfficientAd, Draem, Supersimplenet",
            "-",
            status="skipped",
            note="not measured by this script: add their training time to the totals",
        )
    )
    rows.append(
        row(
            p,
            "method",
            "-",
            note=(
                "CRR 10,000 + 8,000 steps; Dinomaly min(10,000, 45 epochs) at batch 16; INP-Former 200 epochs "
                "at batch 16; MFRNet 200 epochs at batch 8 (epoch 1 with VGG16, then cached); PatchCore/PaDiM one "
                "pass over the training images at the fp32 batch throughput (coreset selection not included). "
                "Per-job start-up, validation, test and metric time are not included."
                + (" Tiny sizes: not a real estimate." if ctx.scale.tiny else "")
            ),
        )
    )
    return rows


PART_FUNCTIONS: dict[str, Callable[[Context], list[Row]]] = {
    "environment": part_environment,
    "fidelity": part_fidelity,
    "training": part_training,
    "inference": part_inference,
    "smoke": part_smoke,
    "mfrnet_paper": part_mfrnet_paper,
    "estimate": part_estimate,
}


# ---------------------------------------------------------------------------------------------------------- driver
def _on_alarm(signum: int, frame: Any) -> None:
    del signum, frame
    raise PartTimeoutError("hard time limit reached (SIGALRM)")


def run_part(name: str, ctx: Context, budget: float) -> tuple[Row, list[Row]]:
    """Run one part within its budget; any exception becomes a failed part row and the run goes on."""
    print(f"\n=== {name} (budget {budget:.0f} s)", flush=True)
    start = time.perf_counter()
    ctx.deadline = start + budget
    use_alarm = hasattr(signal, "setitimer") and _main_thread()
    previous = signal.signal(signal.SIGALRM, _on_alarm) if use_alarm else None
    if use_alarm:
        signal.setitimer(signal.ITIMER_REAL, budget * HARD_LIMIT_FACTOR + HARD_LIMIT_GRACE_S)
    rows: list[Row] = []
    status, note = "ok", ""
    ctx.partial = []
    try:
        rows = PART_FUNCTIONS[name](ctx)
    except (Exception, PartTimeoutError) as exc:  # (a failed part is a result; the run goes on)
        status, note = "failed", _error(exc)
        rows = list(ctx.partial)  # what its measurements recorded before it failed
        print(traceback.format_exc(), flush=True)
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        _free(ctx)
    wall = time.perf_counter() - start
    if status == "ok" and any(r["status"] == "failed" for r in rows):
        status, note = "partial", "some measurements failed (see their rows)"
    elif status == "ok" and any(r["status"] == "skipped" and "budget" in r["note"] for r in rows):
        status, note = "partial", "budget exhausted before every measurement ran"
    summary = row(name, "part", "wall_s", wall, "s", status=status, note=note or f"budget {budget:.0f} s")
    summary["budget_s"] = budget
    for line in [summary, *rows]:
        print(_format_row(line), flush=True)
    return summary, rows


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _format_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def _format_row(line: Row) -> str:
    unit = f" {line['unit']}" if line["unit"] else ""
    value = _format_value(line["value"])
    return f"[{line['status']}] {line['part']} | {line['item']} | {line['metric']} = {value}{unit} {line['note']}"


def versions(device: torch.device) -> dict[str, str]:
    """GPU name, driver, CUDA, cuDNN, torch, anomalib, lightning, timm versions ("none" where there is no GPU)."""
    import anomalib
    import lightning
    import timm

    info = {
        "gpu": "none",
        "driver": "none",
        "cuda": "none",
        "cudnn": "none",
        "torch": torch.__version__,
        "anomalib": anomalib.__version__,
        "lightning": lightning.__version__,
        "timm": timm.__version__,
        "python": platform.python_version(),
        "host": f"{platform.machine()}, {os.cpu_count()} logical cores",
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = str(torch.version.cuda)
        info["cudnn"] = str(torch.backends.cudnn.version())
        try:
            smi = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
                check=True,
            )
            info["driver"] = smi.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError) as exc:
            info["driver"] = f"unknown ({type(exc).__name__})"
    return info


def write_report(
    output: Path, info: dict[str, str], args: argparse.Namespace, parts: list[tuple[Row, list[Row]]], wall: float
) -> None:
    """``gpu_acceptance.csv`` (every row) and ``gpu_acceptance.md`` (parts table, then one table per part)."""
    output.mkdir(parents=True, exist_ok=True)
    keys = ["part", "status", "item", "metric", "value", "unit", "note", "budget_s"]
    with (output / "gpu_acceptance.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        for summary, rows in parts:
            for line in [summary, *rows]:
                writer.writerow({k: line.get(k, "") for k in keys})
    mode = "tiny (CPU smoke: the numbers check the script, not the hardware)" if args.tiny else "full"
    lines = [
        "# GPU acceptance report",
        "",
        f"- Written {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} (UTC); wall time {wall:.0f} s; "
        f"mode: {mode}; device `{args.device}`",
        "- " + "; ".join(f"{k}: {v}" for k, v in info.items()),
        f"- Command: `python benchmarks/gpu_acceptance.py {' '.join(args.argv)}`",
        "",
        "| part | status | wall s | budget s | note |",
        "|---|---|---|---|---|",
    ]
    for summary, _ in parts:
        lines.append(
            f"| {summary['part']} | {summary['status']} | {summary['value']:.1f} | "
            f"{summary['budget_s']:.0f} | {summary['note']} |"
        )
    for summary, rows in parts:
        lines += ["", f"## {summary['part']}", ""]
        if not rows:
            lines.append(f"No measurements: {summary['note']}")
            continue
        lines += ["| item | metric | value | unit | status | note |", "|---|---|---|---|---|---|"]
        lines += [
            f"| {r['item']} | {r['metric']} | {_format_value(r['value'])} | {r['unit']} | {r['status']} | {r['note']} |"
            for r in rows
        ]
    (output / "gpu_acceptance.md").write_text("\n".join(lines) + "\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, required=True, help="folder for gpu_acceptance.md/.csv and the runs")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument(
        "--tiny",
        "--cpu-smoke",
        dest="tiny",
        action="store_true",
        default=None,
        help="tiny sizes everywhere (default: on when there is no CUDA device)",
    )
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)}")
    parser.add_argument("--budget", action="append", default=[], metavar="PART=SECONDS", help="override a budget")
    parser.add_argument("--smoke-config", default=str(REPO / "configs/benchmark/smoke.yaml"))
    parser.add_argument("--mfrnet-config", default=str(REPO / "configs/model/mfrnet_paper.yaml"))
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: 1 in CPU tiny mode, else torch's)"
    )
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the chosen parts in order, write the report; 0 when every part passed, 1 otherwise."""
    args = parse_args(argv)
    chosen = [name.strip() for name in args.parts.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in PARTS]
    if unknown:
        print(f"gpu_acceptance: unknown part(s) {unknown}; choose from {list(PARTS)}", file=sys.stderr)
        return 2
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_acceptance: --device cuda, but torch sees no CUDA device", file=sys.stderr)
        return 2
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda:0" if use_cuda else "cpu")
    args.device = str(device)
    if args.tiny is None:
        args.tiny = not use_cuda
    if args.threads is None and args.tiny and not use_cuda:
        # One thread: on a small CPU shared with other work, two threads that wait for each other made a tiny forward
        # 10-20x slower (measured on the 2-core development machine under load).
        args.threads = 1
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, chosen, device, use_cuda)
    finally:
        torch.set_num_threads(threads_before)  # a caller in the same process (a test) keeps its threads


def _run(args: argparse.Namespace, chosen: list[str], device: torch.device, use_cuda: bool) -> int:
    """Run the chosen parts with their budgets and write the report after each (see :func:`main`)."""
    budgets = dict(TINY_BUDGET_S if args.tiny else GPU_BUDGET_S)
    for entry in args.budget:
        name, _, seconds = entry.partition("=")
        if name not in budgets:
            print(f"gpu_acceptance: --budget {entry}: unknown part {name!r}", file=sys.stderr)
            return 2
        budgets[name] = float(seconds)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    ctx = Context(device=device, scale=Scale.make(args.tiny), args=args, output=args.output)
    started = time.perf_counter()
    info = versions(device)
    print("gpu_acceptance: " + "; ".join(f"{k}: {v}" for k, v in info.items()), flush=True)
    parts = []
    for name in PARTS:
        if name in chosen:
            parts.append(run_part(name, ctx, budgets[name]))
            write_report(args.output, info, args, parts, time.perf_counter() - started)  # a crash keeps the rest
    wall = time.perf_counter() - started
    write_report(args.output, info, args, parts, wall)
    failed = [summary["part"] for summary, _ in parts if summary["status"] == "failed"]
    print(
        f"\ngpu_acceptance: {len(parts)} part(s) in {wall:.0f} s; failed: {failed or 'none'}; report: "
        f"{args.output / 'gpu_acceptance.md'}",
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
