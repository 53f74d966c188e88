# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Latency and agreement of torch, onnxruntime and OpenVINO (FP32 / FP16 weights) for CRR and MFRNet.

Each model is built with random weights (latency does not depend on them), exported with anomalib's own
``Engine.export`` (``ExportType.ONNX`` and ``ExportType.OPENVINO``, with and without
``CompressionType.FP16``), and the four runtimes are timed round-robin on the same batch (so load drifts
hit all of them alike): ``--warmup`` rounds, then ``--runs`` timed rounds, median per batch. The largest
absolute difference of ``pred_score`` and ``anomaly_map`` to torch is reported alongside.

Usage::

    python benchmarks/openvino_speed.py --model CRR --encoder vit_small_patch14_reg4_dinov2 --crop 224
    python benchmarks/openvino_speed.py --model MFRNet --backbone tf_efficientnet_lite0 --size 256

Writes ``<output>/openvino_speed_<model>_<size>.csv`` and ``.md``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import interleaved_medians, write_table


def build(args: argparse.Namespace) -> tuple[Any, int]:
    """A random-init model and its input size."""
    from anomalib_crr import CRR, MFRNet

    if args.model == "CRR":
        image = args.crop * 8 // 7
        model = CRR(
            encoder_name=args.encoder,
            encoder_weights=None,
            dtd_dir=None,
            pre_processor=CRR.configure_pre_processor(image_size=(image, image), crop_size=args.crop),
        )
        # Time the deployed graph of a finished fit: an untrained CRR skips its segmentation head (the map of
        # a fit stopped before stage II is the reconstruction map), which would time the reconstruction only.
        model.model.mark_seg_head_trained()
        return model, image
    model = MFRNet(
        backbone=args.backbone,
        pre_trained=False,
        pre_processor=MFRNet.configure_pre_processor(image_size=(args.size, args.size)),
    )
    return model, args.size


def max_differences(expected: dict[str, np.ndarray], actual: dict[str, Any]) -> dict[str, float]:
    """Largest absolute difference per output."""
    return {
        key: float(np.abs(np.asarray(actual[key]).reshape(value.shape) - value).max())
        for key, value in expected.items()
    }


# Long on purpose: a script's main: argument parsing, build, export and timing in run order.
def main() -> None:  # noqa: PLR0915
    """Export, check agreement, time, write the tables."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=["CRR", "MFRNet"], default="CRR")
    parser.add_argument("--encoder", default="vit_small_patch14_reg4_dinov2")
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--output", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()

    import onnxruntime as ort
    import openvino as ov
    from anomalib.deploy import CompressionType, ExportType
    from anomalib.engine import Engine

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    model, size = build(args)
    model.eval()
    images = torch.rand(args.batch, 3, size, size)
    with torch.inference_mode():
        reference = model(images)
    expected = {"pred_score": reference.pred_score.numpy(), "anomaly_map": reference.anomaly_map.numpy()}

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        engine = Engine(default_root_dir=root, logger=False, accelerator="cpu", devices=1)
        onnx_path = engine.export(model, ExportType.ONNX, root / "onnx", input_size=(size, size))
        xml = {
            "openvino_fp32": engine.export(model, ExportType.OPENVINO, root / "fp32", input_size=(size, size)),
            "openvino_fp16": engine.export(
                model,
                ExportType.OPENVINO,
                root / "fp16",
                input_size=(size, size),
                compression_type=CompressionType.FP16,
            ),
        }
        options = ort.SessionOptions()
        options.intra_op_num_threads = args.threads
        session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        feed = {session.get_inputs()[0].name: images.numpy()}
        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": args.threads, "INFERENCE_PRECISION_HINT": "f32"}
        compiled = {name: core.compile_model(str(path), "CPU", config) for name, path in xml.items()}
        array = images.numpy()

        def torch_call() -> Any:
            with torch.inference_mode():
                return model(images)

        candidates: dict[str, Callable[[], Any]] = {
            "torch": torch_call,
            "onnxruntime": lambda: session.run(None, feed),
            **{name: (lambda c=c: c(array)) for name, c in compiled.items()},
        }
        differences: dict[str, dict[str, float]] = {"torch": {"pred_score": 0.0, "anomaly_map": 0.0}}
        names = [output.name for output in session.get_outputs()]
        onnx_out = dict(zip(names, session.run(None, feed), strict=True))
        differences["onnxruntime"] = {
            k: float(np.abs(onnx_out[k].reshape(v.shape) - v).max()) for k, v in expected.items()
        }
        for name, c in compiled.items():
            result = c(array)
            by_name = {next(iter(output.names)): result[output] for output in c.outputs}
            differences[name] = {k: float(np.abs(by_name[k].reshape(v.shape) - v).max()) for k, v in expected.items()}
        medians = interleaved_medians(candidates, args.runs, args.warmup)

    label = f"{args.model}_{args.encoder if args.model == 'CRR' else args.backbone}_{size}"
    rows = [
        {
            "runtime": name,
            "ms_per_batch": round(seconds * 1000, 2),
            "speedup_vs_torch": round(medians["torch"] / seconds, 2),
            "max_abs_diff_pred_score": f"{differences[name]['pred_score']:.2e}",
            "max_abs_diff_anomaly_map": f"{differences[name]['anomaly_map']:.2e}",
        }
        for name, seconds in medians.items()
    ]
    cpu = f"{os.cpu_count()} CPU cores visible, {args.threads} threads"
    write_table(
        rows,
        args.output / f"openvino_speed_{label}",
        f"{label}: batch {args.batch}, {cpu}, median of {args.runs} round-robin runs",
        float_format="",
        headers={
            "ms_per_batch": "ms / batch",
            "speedup_vs_torch": "speed-up vs torch",
            "max_abs_diff_pred_score": "max abs diff pred_score",
            "max_abs_diff_anomaly_map": "max abs diff anomaly_map",
        },
    )


if __name__ == "__main__":
    main()
