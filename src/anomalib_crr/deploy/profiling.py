# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Where an OpenVINO IR spends its time, per torch module: OpenVINO's per-operation counters mapped to module paths.

Why: INT8 speeds up only the operations it quantises. To know what a quantisation scope can gain, and what stays in
float by construction (MFRNet's SSIM, whitening, map blur, anomalib's post-processing), each executed operation's
time is attributed to the torch module that produced it. The map comes from the ONNX export of the same model:
torch's exporter writes the module path into each node (``anomalib_crr.deploy.quantization.node_module_paths``),
and OpenVINO keeps ONNX node names in the names of the operations it executes (fused ones carry several).

Usage (``benchmarks/int8.py --profile`` writes it for every IR it measures)::

    python -m anomalib_crr.deploy.profiling model.onnx model.xml [other.xml ...] --depth 3
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from .quantization import node_module_paths

NODE_TOKEN = re.compile(r"node_[A-Za-z0-9_]+?_\d+")
UNATTRIBUTED = "(unattributed)"


def module_of(op_name: str, paths: dict[str, str]) -> str | None:
    """The module path of an executed operation, from any ONNX node name its (possibly fused) name contains."""
    for candidate in (op_name, *op_name.split("/"), *NODE_TOKEN.findall(op_name)):
        if candidate in paths:
            return paths[candidate]
    return None


def module_times(
    xml: Path, paths: dict[str, str], images: np.ndarray, threads: int = 2, repeats: int = 5, depth: int = 3
) -> Counter[str]:
    """Milliseconds per call of ``images`` spent in each module (its path cut to ``depth`` levels).

    The root module's own operations (``""``) are reported as ``(root)``; operations whose names carry no ONNX node
    name (constant-folded or inserted by OpenVINO) as ``(unattributed)``. An IR with a static batch size (anomalib's
    PatchCore export fixes it at 2) runs ``images`` in chunks of that size, the last one padded; the times are the
    sums over the chunks.
    """
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads, "PERF_COUNT": True}
    compiled = core.compile_model(core.read_model(xml), "CPU", config)
    request = compiled.create_infer_request()
    chunks = static_batches(images, compiled.input(0).get_partial_shape()[0])
    for _ in range(2):  # warm-up: first calls allocate and pick kernels
        request.infer({0: chunks[0]})
    times: Counter[str] = Counter()
    for _ in range(repeats):
        for chunk in chunks:
            request.infer({0: chunk})
            for info in request.profiling_info:
                module = module_of(info.node_name, paths)
                key = UNATTRIBUTED if module is None else (".".join(module.split(".")[:depth]) or "(root)")
                times[key] += info.real_time.total_seconds() * 1000 / repeats
    return times


def static_batches(images: np.ndarray, batch: Any) -> list[np.ndarray]:
    """``images`` as one batch, or in chunks of the IR's static batch size (the last padded with its last image)."""
    if batch.is_dynamic or batch.get_length() == len(images):
        return [images]
    size = batch.get_length()
    chunks = []
    for start in range(0, len(images), size):
        chunk = images[start : start + size]
        chunks.append(np.concatenate([chunk, np.repeat(chunk[-1:], size - len(chunk), axis=0)]))
    return chunks


def profile_rows(name: str, times: Counter[str], **fields: object) -> list[dict[str, object]]:
    """Table rows of one IR's profile, largest first, with each module's share of the summed time."""
    total = sum(times.values()) or 1.0
    return [
        {**fields, "variant": name, "module": module, "ms": round(ms, 2), "share_pct": round(100 * ms / total, 1)}
        for module, ms in times.most_common()
    ]


def main() -> None:
    """Print the per-module profile of each IR, at batch 8 of random images of the IR's input size."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("onnx", type=Path, help="ONNX export of the same model (for the module paths)")
    parser.add_argument("xml", type=Path, nargs="+")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--depth", type=int, default=3)
    args = parser.parse_args()
    paths = node_module_paths(args.onnx)
    images = np.random.default_rng(0).random((args.batch, 3, args.size, args.size), dtype=np.float32)
    for xml in args.xml:
        times = module_times(xml, paths, images, threads=args.threads, depth=args.depth)
        print(f"{xml}: {sum(times.values()):.1f} ms per batch of {args.batch}")
        for row in profile_rows(xml.parent.name, times):
            print(f"  {row['ms']:9.2f} ms {row['share_pct']:5.1f}%  {row['module']}")


if __name__ == "__main__":
    main()
