# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Accuracy, agreement and speed of each deployment precision: torch, FP32 / FP16 / INT8-weights IR, INT8_PTQ, INT8_ACQ.

For each dataset and model, the fitted model (``benchmarks/int8_fit.py``: lite0 ImageNet weights, 256²) is exported
with anomalib's ``Engine.export`` (FP32, FP16, INT8 weights) and with the plugin's quantised export
(``anomalib_crr.deploy.export_quantized_openvino``, what ``Engine.export`` runs for CRR and MFRNet and
``anomalib-crr export`` runs for any model) for INT8_PTQ, INT8_ACQ and the scope variants. Then, on the test
images, each deployed model's *own* outputs give:

* image AUROC (``pred_score``), pixel AUROC and AUPRO (FPR ≤ 30 %) (``anomaly_map`` vs the masks);
* the largest difference of the post-processed score and map to torch's;
* latency at batch 1 and throughput at batch 8, timed round-robin in one process (median of ``--runs``), with
  ``INFERENCE_PRECISION_HINT=f32`` (so an FP32 IR computes in FP32 even on bf16 CPUs) and ``--threads`` threads.

The test images are resized to the export size once (antialiased, clamped to [0, 1]) and every runtime gets the same
array. ``--models CRR`` adds a small random-encoder CRR (agreement and speed only: a random ViT detects nothing).

Usage::

    python benchmarks/int8_fit.py                      # fit once (about 25 min on 2 cores)
    python benchmarks/int8.py --datasets tire mt --models MFRNet PatchCore Padim CRR

Writes ``<output>/int8_<dataset>.csv`` / ``.md``; with ``--profile`` also ``int8_<dataset>_profile.csv`` / ``.md``:
each IR's time at batch 8 per torch module (``anomalib_crr.deploy.profiling``), which shows what stays in float.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import RESULTS, build_datamodule, interleaved_medians, write_table
from benchmarks.int8_fit import DEFAULT_CKPT_DIR, load_fitted, model_args

SIZE = 256
VARIANTS = ("torch", "FP32", "FP16", "INT8", "INT8_PTQ", "INT8_ACQ", "INT8_PTQ_whole_graph")


def cpu_description() -> str:
    """CPU model and its INT8 / bf16 instruction sets (lscpu)."""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:
        text = ""
    model = re.search(r"Model name:\s*(.+)", text)
    flags = set(re.search(r"Flags:\s*(.+)", text).group(1).split()) if "Flags:" in text else set()
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "amx_bf16"]
    present = [flag for flag in wanted if flag in flags]
    name = model.group(1).strip() if model else platform.processor()
    return f"{name}, {os.cpu_count()} cores visible; flags: {', '.join(present) or 'none of ' + ', '.join(wanted)}"


def test_arrays(datamodule: Any) -> dict[str, np.ndarray]:
    """Every test image at the export size, its label and its mask."""
    from anomalib_crr.deploy.quantization import fit_to_input

    datamodule.setup("test")
    images, labels, masks = [], [], []
    for index in range(len(datamodule.test_data)):
        item = datamodule.test_data[index]
        images.append(fit_to_input(item.image, (SIZE, SIZE))[0])
        labels.append(int(item.gt_label))
        mask = item.gt_mask if item.gt_mask is not None else torch.zeros(item.image.shape[-2:])
        mask = torch.nn.functional.interpolate(mask.float()[None, None], size=(SIZE, SIZE), mode="nearest")[0, 0]
        masks.append(mask.numpy() > 0.5)
    return {"image": np.stack(images), "label": np.asarray(labels), "mask": np.stack(masks)}


def crr_model() -> Any:
    """A small random-encoder CRR (ViT-S/14, 4 blocks) with its segmentation head on, 256 -> 224 crop."""
    from anomalib_crr import CRR

    model = CRR(
        encoder_name="vit_small_patch14_reg4_dinov2",
        encoder_weights=None,
        target_layers=[0, 1, 2, 3],
        fuse_layer_encoder=[[0, 1], [2, 3]],
        fuse_layer_decoder=[[0, 1], [2, 3]],
        decoder_depth=4,
        seg_base_width=16,
        dtd_dir=None,
        pre_processor=CRR.configure_pre_processor(image_size=(SIZE, SIZE), crop_size=224),
    )
    model.model.mark_seg_head_trained()
    return model.eval()


def cpu_engine(root: Path | str, **trainer_kwargs: Any) -> Any:
    """The anomalib Engine every step of this benchmark uses: CPU, one device, no logger or progress bar."""
    from anomalib.engine import Engine

    return Engine(
        default_root_dir=root, logger=False, accelerator="cpu", devices=1, enable_progress_bar=False, **trainer_kwargs
    )


def validate_post_processor(model: Any, datamodule: Any) -> None:
    """Fit the post-processor's normalisation and thresholds on the validation split (``Engine.validate``).

    The random CRR is never trained, so without this its post-processor keeps NaN statistics, and the INT8 export
    refuses it (``UnfittedModelError``: OpenVINO cannot compile a quantised model with NaN clamp bounds).
    """
    with tempfile.TemporaryDirectory(prefix="int8_validate_") as root:
        cpu_engine(root).validate(model=model, datamodule=datamodule)
    model.eval()


def run_torch(model: Any, images: np.ndarray, batch: int = 8) -> dict[str, np.ndarray]:
    """Post-processed scores and maps of the torch model."""
    scores, maps = [], []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            out = model(torch.from_numpy(images[start : start + batch]))
            scores.append(out.pred_score.reshape(-1).numpy())
            maps.append(out.anomaly_map.reshape(len(out.pred_score), *out.anomaly_map.shape[-2:]).numpy())
    return {"pred_score": np.concatenate(scores), "anomaly_map": np.concatenate(maps)}


def infer(compiled: Any, images: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs of a compiled IR for a batch.

    An IR with a static batch size (anomalib's PatchCore export fixes it at 2) runs the batch in chunks of that size,
    the last one padded by repeating its last image.
    """
    from anomalib_crr.deploy.profiling import static_batches

    chunks = static_batches(images, compiled.input(0).get_partial_shape()[0])
    parts: dict[str, list[np.ndarray]] = {"pred_score": [], "anomaly_map": []}
    for chunk in chunks:
        out = compiled(chunk)
        for key, values in parts.items():
            values.append(np.asarray(out[key]))
    return {key: np.concatenate(values)[: len(images)] for key, values in parts.items()}


def run_ir(compiled: Any, images: np.ndarray, batch: int = 8) -> dict[str, np.ndarray]:
    """Post-processed scores and maps of a compiled IR."""
    scores, maps = [], []
    for start in range(0, len(images), batch):
        out = infer(compiled, images[start : start + batch])
        score = out["pred_score"].reshape(-1)
        scores.append(score)
        maps.append(out["anomaly_map"].reshape(len(score), *out["anomaly_map"].shape[-2:]))
    return {"pred_score": np.concatenate(scores), "anomaly_map": np.concatenate(maps)}


def metrics(outputs: dict[str, np.ndarray], data: dict[str, np.ndarray]) -> dict[str, float]:
    """Image AUROC, pixel AUROC and AUPRO of one runtime's outputs."""
    from anomalib.data import ImageBatch
    from anomalib.metrics import AUPRO, AUROC

    anomaly_map = torch.from_numpy(outputs["anomaly_map"]).float()
    if anomaly_map.shape[-2:] != (SIZE, SIZE):  # CRR's map covers its centre crop
        return {}
    batch = ImageBatch(
        image=torch.zeros(len(anomaly_map), 3, 2, 2),
        pred_score=torch.from_numpy(outputs["pred_score"]).float(),
        anomaly_map=anomaly_map,
        gt_label=torch.from_numpy(data["label"]),
        gt_mask=torch.from_numpy(data["mask"]),
    )
    result = {}
    for name, metric in {
        "image_AUROC": AUROC(fields=["pred_score", "gt_label"]),
        "pixel_AUROC": AUROC(fields=["anomaly_map", "gt_mask"]),
        "pixel_AUPRO": AUPRO(fields=["anomaly_map", "gt_mask"], fpr_limit=0.3),
    }.items():
        metric.update(batch)
        result[name] = float(metric.compute())
    return result


def rank_auroc(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """AUROC of each row of ``scores`` (``(R, N)``) against ``labels`` (``(R, N)``), by the Mann-Whitney rank sum."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=1)  # ties get their mean rank, as AUROC counts them half
    positives = labels.sum(axis=1)
    negatives = labels.shape[1] - positives
    rank_sum = (ranks * labels).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)


def auroc_difference_interval(
    reference: np.ndarray, other: np.ndarray, labels: np.ndarray, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95 % paired-bootstrap interval of ``AUROC(other) - AUROC(reference)`` over the test images.

    Why: the test sets are small (112 tire images), so an image AUROC moves by about 0.01 when a few images swap
    places. Resampling the images (the same resample for both runtimes) shows which differences exceed that.
    """
    rng = np.random.default_rng(seed)
    index = rng.integers(0, len(labels), size=(resamples, len(labels)))
    sampled = labels[index].astype(np.float64)
    difference = rank_auroc(other[index], sampled) - rank_auroc(reference[index], sampled)
    difference = difference[np.isfinite(difference)]  # resamples with a single class have no AUROC
    low, high = np.percentile(difference, [2.5, 97.5])
    return float(low), float(high)


def export_variant(
    model: Any, variant: str, root: Path, datamodule: Any, quantized_modules: tuple[str, ...] | None
) -> tuple[Path, float]:
    """Export one IR; returns its path and the export time in seconds."""
    from anomalib.deploy import CompressionType, ExportType

    from anomalib_crr.deploy import WHOLE_GRAPH, export_quantized_openvino

    start = time.perf_counter()
    if variant in {"FP32", "FP16", "INT8"}:
        engine = cpu_engine(root)
        compression = None if variant == "FP32" else CompressionType(variant.lower())
        path = engine.export(model, ExportType.OPENVINO, root, input_size=(SIZE, SIZE), compression_type=compression)
    else:
        whole = variant.endswith("_whole_graph")
        path = export_quantized_openvino(
            model,
            root,
            variant.removesuffix("_whole_graph"),
            datamodule,
            input_size=(SIZE, SIZE),
            quantized_modules=WHOLE_GRAPH if whole else quantized_modules,
            check=not whole,  # the whole-graph row shows what anomalib's scope gives; the check would refuse it
        )
    return Path(path), time.perf_counter() - start


def _export_in_child(state: Path, name: str, dataset: str, variant: str, root: Path, modules: Any) -> None:
    """``export_variant`` in a spawned process: nncf 3.4 crashed (SIGSEGV) on PaDiM's whole-graph quantisation."""
    model = crr_model() if name == "CRR" else load_fitted(state.parent, dataset, name, model_args(), path=state)
    if name == "CRR":
        model.load_state_dict(torch.load(state, weights_only=True))
    datamodule = build_datamodule(dataset, batch_size=8, num_workers=0)
    try:
        path, seconds = export_variant(model, variant, root, datamodule, modules)
    except Exception as error:  # the parent reports the reason (a refused export is a result)
        (root / "error.txt").write_text(f"{type(error).__name__}: {error}")
        raise
    (root / "exported.txt").write_text(f"{path}\n{seconds}")


def export_isolated(model: Any, name: str, dataset: str, variant: str, root: Path, modules: Any) -> tuple[Path, float]:
    """Run one export in a child process; a crash becomes an error row instead of ending the benchmark."""
    import multiprocessing

    root.mkdir(parents=True, exist_ok=True)
    state = root / f"{dataset}_{name}.pt"
    torch.save(model.state_dict(), state)
    process = multiprocessing.get_context("spawn").Process(
        target=_export_in_child, args=(state, name, dataset, variant, root, modules)
    )
    process.start()
    process.join()
    result, error = root / "exported.txt", root / "error.txt"
    if error.is_file():
        raise RuntimeError(error.read_text())
    if process.exitcode != 0 or not result.is_file():
        msg = f"export process ended with exit code {process.exitcode} (negative: killed by signal)"
        raise RuntimeError(msg)
    path, seconds = result.read_text().splitlines()
    return Path(path), float(seconds)


def max_difference(expected: np.ndarray, actual: np.ndarray) -> float:
    """Largest absolute difference of two post-processed outputs (both in [0, 1])."""
    return float(np.abs(actual.reshape(expected.shape).astype(np.float64) - expected).max())


def onnx_module_paths(model: Any, root: Path) -> dict[str, str]:
    """ONNX node names -> module paths of ``model`` (an ONNX export of it), for the IR profiles."""
    from anomalib.deploy import ExportType

    from anomalib_crr.deploy.quantization import node_module_paths

    return node_module_paths(Path(cpu_engine(root).export(model, ExportType.ONNX, root, input_size=(SIZE, SIZE))))


# Long on purpose: one measurement sequence (fit, export FP32/INT8, score, time) kept in its run order.
def measure(  # noqa: PLR0915
    name: str, dataset: str, args: argparse.Namespace, profiles: list[dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """Every variant of one (dataset, model): accuracy, agreement with torch, latency and throughput.

    With ``profiles`` (a list), each IR's per-module time at batch ``args.batch`` is appended to it.
    """
    import openvino as ov

    from anomalib_crr.deploy.profiling import module_times, profile_rows
    from anomalib_crr.deploy.quantization import default_quantized_modules

    datamodule = build_datamodule(dataset, batch_size=8, num_workers=0)
    model = crr_model() if name == "CRR" else load_fitted(args.ckpt_dir, dataset, name, model_args())
    if name == "CRR":
        validate_post_processor(model, datamodule)
    declared = getattr(model, "int8_quantized_modules", None)
    scope = tuple(declared) if declared is not None else default_quantized_modules(model)
    data = test_arrays(datamodule)
    reference = run_torch(model, data["image"])
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": args.threads}
    torch.set_num_threads(args.threads)
    rows: dict[str, dict[str, Any]] = {}
    calls: dict[str, Callable[[], object]] = {}
    one, eight = data["image"][:1], data["image"][: args.batch]
    variants = [variant for variant in args.variants if variant in VARIANTS]
    extra_scopes = {"MFRNet": args.mfrnet_scopes, "CRR": args.crr_scopes}.get(name, [])
    fp32_scores: np.ndarray | None = None  # for the interval of each later variant's image AUROC difference
    with tempfile.TemporaryDirectory(prefix="int8_") as workdir:
        module_paths = onnx_module_paths(model, Path(workdir) / "onnx") if profiles is not None else {}
        for variant in variants + [f"INT8_PTQ[{scope_}]" for scope_ in extra_scopes]:
            row: dict[str, Any] = {"dataset": dataset, "model": name, "variant": variant}
            if variant == "torch":
                outputs = reference
                calls[f"{variant}/b1"] = lambda: model(torch.from_numpy(one))
                calls[f"{variant}/b{args.batch}"] = lambda: model(torch.from_numpy(eight))
                row.update(scope="", export_s=0.0)
            else:
                base, _, custom = variant.partition("[")
                modules = tuple(custom.rstrip("]").split("+")) if custom else scope
                try:
                    path, seconds = export_isolated(model, name, dataset, base, Path(workdir) / variant, modules)
                except Exception as error:  # a refused or failed export is a result too
                    row.update(error=f"{type(error).__name__}: {error}"[:300])
                    rows[variant] = row
                    print(row, flush=True)
                    continue
                compiled = core.compile_model(core.read_model(path), "CPU", config)
                outputs = run_ir(compiled, data["image"], batch=args.batch)
                # Quantised IRs can compute differently at a dynamic batch than at batch 1 (seen on OpenVINO 2026.4).
                single = run_ir(compiled, data["image"], batch=1)
                row["max_diff_batch_vs_1"] = max(
                    max_difference(single[key], outputs[key]) for key in ("pred_score", "anomaly_map")
                )
                if profiles is not None:
                    times = module_times(path, module_paths, eight, threads=args.threads)
                    profiles.extend(profile_rows(variant, times, dataset=dataset, model=name))
                calls[f"{variant}/b1"] = lambda compiled=compiled: infer(compiled, one)
                calls[f"{variant}/b{args.batch}"] = lambda compiled=compiled: infer(compiled, eight)
                label = "+".join(modules) if "INT8_" in variant else ""
                row.update(
                    scope="whole graph" if variant.endswith("whole_graph") else label,
                    export_s=round(seconds, 1),
                    ir_mb=round(path.with_suffix(".bin").stat().st_size / 2**20, 2),
                )
            row.update(metrics(outputs, data))
            if variant == "FP32":
                fp32_scores = outputs["pred_score"].reshape(-1)
            if fp32_scores is not None and "image_AUROC" in row:
                low, high = auroc_difference_interval(fp32_scores, outputs["pred_score"].reshape(-1), data["label"])
                row["dAUROC_vs_fp32_ci95"] = f"[{low:+.3f}, {high:+.3f}]"
            row["max_score_diff"] = max_difference(reference["pred_score"], outputs["pred_score"])
            row["max_map_diff"] = max_difference(reference["anomaly_map"], outputs["anomaly_map"])
            rows[variant] = row
            print(row, flush=True)
        medians = interleaved_medians(calls, runs=args.runs, warmup=2) if args.runs > 0 else {}
    for variant, row in rows.items():
        if f"{variant}/b1" not in medians:
            continue
        row["latency_b1_ms"] = round(1000 * medians[f"{variant}/b1"], 2)
        row[f"throughput_b{args.batch}_img_s"] = round(args.batch / medians[f"{variant}/b{args.batch}"], 1)
    fp32 = rows.get("FP32", {})
    for row in rows.values():
        if "latency_b1_ms" in row and "latency_b1_ms" in fp32:
            row["speedup_b1_vs_fp32"] = round(fp32["latency_b1_ms"] / row["latency_b1_ms"], 2)
            key = f"throughput_b{args.batch}_img_s"
            row[f"speedup_b{args.batch}_vs_fp32"] = round(row[key] / fp32[key], 2)
    return list(rows.values())


def main() -> None:
    """Measure every requested dataset and model, write one table per dataset."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--datasets", nargs="+", default=["tire", "mt"])
    parser.add_argument("--models", nargs="+", default=["MFRNet", "PatchCore", "Padim", "CRR"])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument(
        "--mfrnet-scopes",
        nargs="*",
        default=["model.aggregator"],
        help="extra MFRNet INT8_PTQ rows, each a '+'-joined list of quantised module paths",
    )
    parser.add_argument(
        "--crr-scopes",
        nargs="*",
        default=["model.encoder+model.bottleneck+model.decoder+model.seg_head"],
        help="extra CRR INT8_PTQ rows, each a '+'-joined list of quantised module paths",
    )
    parser.add_argument("--ckpt-dir", type=Path, default=DEFAULT_CKPT_DIR)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runs", type=int, default=10, help="timed round-robin runs; 0: accuracy only")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--append", action="store_true", help="keep the other rows of an existing table")
    parser.add_argument("--profile", action="store_true", help="also write each IR's time per torch module")
    args = parser.parse_args()
    cpu = cpu_description()
    for dataset in args.datasets:
        path = args.output / f"int8_{dataset}"
        profile_path = args.output / f"int8_{dataset}_profile"
        rows = read_rows(path.with_suffix(".csv")) if args.append else []
        profiles = read_rows(profile_path.with_suffix(".csv")) if args.append and args.profile else []
        for name in args.models:
            if name == "CRR" and dataset != args.datasets[0]:
                continue  # a random encoder: agreement and speed once are enough
            measured_profiles: list[dict[str, Any]] | None = [] if args.profile else None
            measured = measure(name, dataset, args, measured_profiles)
            done = {(row["model"], row["variant"]) for row in measured}
            rows = [row for row in rows if (row["model"], row["variant"]) not in done] + measured
            if measured_profiles is not None:
                profiles = [row for row in profiles if (row["model"], row["variant"]) not in done] + measured_profiles
                profile_note = (
                    f"CPU: {cpu}. OpenVINO per-operation time (PERF_COUNT) at batch {args.batch}, {args.threads} "
                    "threads, mean of 5 calls, attributed to the torch module that produced each operation (module "
                    "path cut to 3 levels; `(root)`: the model's own forward, `(unattributed)`: operations OpenVINO "
                    "inserted). The sum is slightly more than the wall time (counters include some overlap)."
                )
                write_table(profiles, profile_path, f"Where each IR spends its time, {dataset}, {SIZE}²", profile_note)
            notes = (
                f"CPU: {cpu}. {args.threads} threads, INFERENCE_PRECISION_HINT=f32, "
                f"median of {args.runs} round-robin runs. Weights: lite0 ImageNet (CNN models), random ViT-S/14 (CRR: "
                "agreement and speed only). Calibration: the training images; check and INT8_ACQ validation: the "
                "validation split."
            )
            # written after each model: a long run keeps what it measured
            write_table(rows, path, f"INT8 deployment, {dataset}, {SIZE}²", notes)


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of an earlier table (``--append``), numbers as floats."""
    if not path.is_file():
        return []

    def typed(value: str) -> Any:
        try:
            return float(value)
        except ValueError:
            return value

    with path.open() as file:
        return [{key: typed(value) for key, value in row.items() if value != ""} for row in csv.DictReader(file)]


if __name__ == "__main__":
    main()
