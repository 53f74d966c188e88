# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""What the separable map blur of the plugin's export gives anomalib's own models: same outputs, less time.

anomalib's PaDiM and PatchCore blur their anomaly maps with ``GaussianBlur2d(σ = 4)``: a 33 × 33 kernel, 1089
multiply-adds per pixel. ``anomalib-crr export`` (and ``Engine.export`` of CRR and MFRNet, and
``anomalib_crr.deploy.export_quantized_openvino``) writes that blur as two 1-D passes
(``anomalib_crr.models.components.separable_blurs``). For each model, fitted on real images with the lite0 ImageNet
weights at 256² (``benchmarks/real_data.py``'s models), this script exports:

* ``FP32 2-D``: anomalib's ``Engine.export`` of the model as anomalib builds it (its 2-D blur);
* ``FP32 separable``: the same through the plugin's export mixin (what ``anomalib-crr export`` writes);
* ``INT8_PTQ 2-D`` / ``INT8_PTQ separable``: the plugin's INT8 export without / with the separable blur.

and reports, on the test images, each IR's image and pixel AUROC, its largest score and map difference to the
``2-D`` IR of the same precision, and its latency (batch 1) and throughput (batch 8), timed round-robin in one
process (median of ``--runs``, ``INFERENCE_PRECISION_HINT=f32``, ``--threads`` threads).

Usage::

    python benchmarks/blur_export.py --dataset tire --models Padim PatchCore

Writes ``<output>/blur_export_<dataset>.csv`` / ``.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS, build_datamodule, build_model, interleaved_medians, write_table
from benchmarks.int8 import SIZE, cpu_description, cpu_engine, infer, max_difference, metrics, run_ir, test_arrays
from benchmarks.int8_fit import model_args

VARIANTS = ("FP32 2-D", "FP32 separable", "INT8_PTQ 2-D", "INT8_PTQ separable")


@contextlib.contextmanager
def two_d_blurs() -> Iterator[None]:
    """The plugin's export with anomalib's 2-D blur kept: the baseline of the INT8 rows."""
    from anomalib_crr.models import components

    original = components.separable_blurs
    components.separable_blurs = lambda module: contextlib.nullcontext([])  # type: ignore[assignment]
    try:
        yield
    finally:
        components.separable_blurs = original


def with_export_mixin(model: Any) -> Any:
    """The model as ``anomalib-crr export`` exports it (``cli.run_export`` gives it the same mixin)."""
    from anomalib_crr.deploy.export import QuantizedOpenVinoExport

    base = type(model)
    model.__class__ = type(base.__name__, (QuantizedOpenVinoExport, base), {"__module__": base.__module__})
    return model


def fit(name: str, dataset: str, coreset: float, root: Path) -> tuple[Any, Any]:
    """One model fitted with anomalib's Engine (seed 0); returns it and its datamodule."""
    from lightning.pytorch import seed_everything

    seed_everything(0, workers=True)
    model, info = build_model(name, model_args(image_size=SIZE, coreset=coreset))
    datamodule = build_datamodule(dataset, batch_size=8, num_workers=0)
    engine = cpu_engine(root, max_epochs=info["epochs"])
    engine.fit(model=model, datamodule=datamodule)
    return model.eval(), datamodule


def export(model: Any, variant: str, root: Path, datamodule: Any) -> Path:
    """One IR of ``model``."""
    from anomalib.deploy import ExportType

    from anomalib_crr.deploy import export_quantized_openvino

    root.mkdir(parents=True, exist_ok=True)
    if variant == "FP32 2-D":
        return Path(cpu_engine(root).export(model, ExportType.OPENVINO, root, input_size=(SIZE, SIZE)))
    if variant == "FP32 separable":
        base = type(model)
        try:
            exported = with_export_mixin(model)
            return Path(cpu_engine(root).export(exported, ExportType.OPENVINO, root, input_size=(SIZE, SIZE)))
        finally:
            model.__class__ = base  # anomalib's class again, for the next variants
    baseline = two_d_blurs() if variant == "INT8_PTQ 2-D" else contextlib.nullcontext()
    with baseline:
        return export_quantized_openvino(model, root, "INT8_PTQ", datamodule, input_size=(SIZE, SIZE))


def blur_convolutions(xml: Path) -> str:
    """The blur's convolution kernels in the IR: ``33x33`` (2-D) or ``33x1+1x33`` (separable).

    Any convolution with a side of 9 or more counts: lite0's own kernels are at most 5 × 5.
    """
    import openvino as ov

    shapes = []
    for op in ov.Core().read_model(xml).get_ordered_ops():
        if op.get_type_name() in {"Convolution", "GroupConvolution"}:
            kernel = tuple(op.input(1).get_partial_shape().to_shape())[-2:]
            if max(kernel) >= 9:
                shapes.append(f"{kernel[0]}x{kernel[1]}")
    return "+".join(shapes)


def measure(name: str, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Every variant of one model: accuracy, agreement, latency and throughput."""
    import openvino as ov

    start = time.perf_counter()
    model, datamodule = fit(name, args.dataset, args.coreset, work / name / "fit")
    fit_seconds = time.perf_counter() - start
    data = test_arrays(datamodule)
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": args.threads}
    compiled, paths = {}, {}
    for variant in args.variants:
        paths[variant] = export(model, variant, work / name / variant.replace(" ", "_"), datamodule)
        compiled[variant] = core.compile_model(paths[variant], "CPU", config)
    outputs = {variant: run_ir(model_ir, data["image"]) for variant, model_ir in compiled.items()}
    rows = []
    for variant in args.variants:
        precision = variant.split()[0]
        reference = outputs.get(f"{precision} 2-D", outputs[variant])
        rows.append(
            {
                "dataset": args.dataset,
                "model": name,
                "variant": variant,
                "blur_convolutions": blur_convolutions(paths[variant]),
                **metrics(outputs[variant], data),
                "max_score_diff_vs_2d": max_difference(reference["pred_score"], outputs[variant]["pred_score"]),
                "max_map_diff_vs_2d": max_difference(reference["anomaly_map"], outputs[variant]["anomaly_map"]),
                "fit_s": round(fit_seconds, 1),
            }
        )
    if args.runs:
        batch8, batch1 = data["image"][: args.batch], data["image"][:1]
        calls = {f"{v}|b{args.batch}": (lambda c=c: infer(c, batch8)) for v, c in compiled.items()}
        calls |= {f"{v}|b1": (lambda c=c: infer(c, batch1)) for v, c in compiled.items()}
        medians = interleaved_medians(calls, runs=args.runs, warmup=2, synchronize=lambda: None)
        for row in rows:
            seconds8, seconds1 = medians[f"{row['variant']}|b{args.batch}"], medians[f"{row['variant']}|b1"]
            row[f"b{args.batch}_img_per_s"] = round(args.batch / seconds8, 2)
            row["b1_ms"] = round(1000 * seconds1, 2)
        for row in rows:
            baseline = next(r for r in rows if r["variant"] == f"{row['variant'].split()[0]} 2-D")
            row["speedup_b8_vs_2d"] = round(row[f"b{args.batch}_img_per_s"] / baseline[f"b{args.batch}_img_per_s"], 3)
            row["speedup_b1_vs_2d"] = round(baseline["b1_ms"] / row["b1_ms"], 3)
    return rows


def main() -> None:
    """Measure every model and write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dataset", choices=["tire", "mt"], default="tire")
    parser.add_argument("--models", nargs="+", choices=["Padim", "PatchCore"], default=["Padim", "PatchCore"])
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--coreset", type=float, default=0.01, help="PatchCore coreset ratio (fit time only)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=10, help="timed round-robin runs; 0: accuracy only")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="blur_export_") as work:
        for name in args.models:
            rows += measure(name, args, Path(work))
            for row in rows[-len(args.variants) :]:
                print(row, flush=True)
    notes = (
        f"CPU: {cpu_description()}. {args.threads} threads, INFERENCE_PRECISION_HINT=f32, median of {args.runs} "
        f"round-robin runs. lite0 ImageNet weights, {SIZE}², seed 0, PatchCore coreset {args.coreset}. Differences "
        "are to the 2-D IR of the same precision, on post-processed outputs in [0, 1]."
    )
    write_table(
        rows, args.output / f"blur_export_{args.dataset}", f"Separable map blur in exports, {args.dataset}", notes
    )


if __name__ == "__main__":
    main()
