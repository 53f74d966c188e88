# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Cost of a trained model: size, MACs, latency, throughput, peak memory, and the run environment.

* MACs come from ``torch.utils.flop_counter.FlopCounterMode`` on the torch model (``model.model``) for one
  pre-processed image: it counts matmul, convolution and attention FLOPs (MAC = FLOP / 2) and ignores
  element-wise ops, pooling, sorting and top-k.
* Latency and throughput time the whole ``AnomalibModule.forward`` (pre-processor, model, post-processor) in
  eval mode under ``torch.inference_mode`` on real test images at their stored size: batch 1 and the eval
  batch size, ``warmup`` untimed passes, then the median of ``runs`` timed passes, with
  ``torch.cuda.synchronize`` around each pass on GPU.
* Peak memory is ``torch.cuda.max_memory_allocated`` on GPU. On CPU it is the process's peak resident set
  (``VmHWM``), reset between phases through ``/proc/self/clear_refs`` so training and inference peaks are
  separate; both include the interpreter, torch and anomalib (``rss_baseline_mb`` is that baseline).
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

MB = 1024 * 1024


def parameter_counts(module: torch.nn.Module) -> tuple[int, int]:
    """Total and trainable (``requires_grad``) parameters; buffers such as memory banks are not parameters."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return total, trainable


def macs_per_image(model: torch.nn.Module, image: torch.Tensor) -> float:
    """Multiply-accumulates of one forward pass of ``model`` on ``image`` (batch 1), via FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(image)
    return counter.get_total_flops() / 2 / image.shape[0]


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def median_seconds(call: Callable[[], Any], runs: int, warmup: int, device: torch.device) -> float:
    """Median wall time of ``call`` over ``runs`` timed passes after ``warmup`` untimed ones."""
    return statistics.median(timed_seconds(call, runs, warmup, device))


def iqr(times: list[float]) -> float:
    """Interquartile range (Q3 - Q1, inclusive quartiles) of timed passes; 0 for fewer than two.

    Why: the median alone cannot show that other work ran while timing; a wide IQR does.
    """
    if len(times) < 2:
        return 0.0
    q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    return q3 - q1


# Labels the re-timing writes that say it did not give an exclusive figure (see .retime).
RETIME_LABELS = ("retime-failed", "retime-busy")


def latency_measured(cost: dict[str, Any]) -> str:
    """How a result's latency was measured: ``exclusive``, ``shared``, ``retime-busy`` or ``retime-failed``.

    Why a label of its own: the free-text ``timing`` note says how the executor *meant* to time (``pool`` says
    "re-timed alone after the run"), but a run stopped before re-timing keeps figures measured on shared cores.
    The label says what happened: ``exclusive`` only when the job ran alone (``local``, one worker, a GPU of its
    own) or was actually re-timed alone on a quiet machine (``retimed_threads`` is set); ``retime-busy`` when it
    was re-timed alone but the machine's load showed other work in every try (``load_before``, ``load_after``);
    ``retime-failed`` when the re-timing failed; ``shared`` otherwise (including a ``pool`` job whose run was
    stopped before re-timing: the next run re-times it).
    """
    if cost.get("latency_measured") in RETIME_LABELS:
        return str(cost["latency_measured"])
    if "retimed_threads" in cost:
        return "exclusive"
    timing = str(cost.get("timing") or "exclusive: one job at a time on this machine")
    if timing.startswith("exclusive") and "re-timed alone" not in timing:
        return "exclusive"
    return "shared"


def timed_seconds(call: Callable[[], Any], runs: int, warmup: int, device: torch.device) -> list[float]:
    """Wall times of ``runs`` timed passes of ``call`` after ``warmup`` untimed ones."""
    sync = _synchronizer(device)
    times = []
    with torch.inference_mode():
        for index in range(warmup + runs):
            sync()
            start = time.perf_counter()
            call()
            sync()
            if index >= warmup:
                times.append(time.perf_counter() - start)
    return times


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window (CUDA allocator stats, or the process's VmHWM on Linux)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    clear_refs = Path("/proc/self/clear_refs")
    if clear_refs.exists():
        with contextlib.suppress(OSError):
            clear_refs.write_text("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def current_rss_mb() -> float:
    """Current resident set size of this process in MiB (NaN where /proc is unavailable)."""
    return _proc_status_mb("VmRSS")


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since the last :func:`reset_peak_memory`, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / MB
    peak = _proc_status_mb("VmHWM")
    if math.isnan(peak):  # NaN: no /proc; ru_maxrss covers the whole process lifetime (KiB on Linux)
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return peak


def memory_kind(device: torch.device) -> str:
    """How peak memory was measured on ``device``."""
    if device.type == "cuda":
        return "torch.cuda.max_memory_allocated"
    return "process peak RSS (VmHWM, reset per phase)"


def _proc_status_mb(key: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def environment(device: torch.device, precision: str) -> dict[str, Any]:
    """Device, precision, versions and threads of this process."""
    import anomalib
    import lightning

    if device.type == "cuda":
        device_name = f"cuda: {torch.cuda.get_device_name(device)}"
    else:
        device_name = f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} logical cores"
    return {
        "device": device_name,
        "precision": precision,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "anomalib": anomalib.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "hostname": platform.node(),
    }
