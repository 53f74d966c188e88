# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Re-time a finished job's inference alone: ``python -m anomalib_crr.benchmark.retime_main <job_dir>``.

Jobs that ran concurrently on the same CPU timed their inference while other jobs competed for the cores, so
their latency and throughput are not the model's. With ``pool`` on CPU each job keeps its trained model
(``timing_model.pt``, see :mod:`.job`); after the last job the runner re-times them one by one, each in a fresh
process with every core, with the same inputs, runs and warm-up. The shared figures are kept beside the new ones
(``latency_ms_shared``, ``throughput_img_s_shared``) and the model file is deleted.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .executors.base import job_environment
from .job import RESULT, TIMING_MODEL, write_result


def _forward_context(precision: str) -> Any:
    """The autocast the job's Lightning precision used on CPU (bf16), else nothing."""
    import torch

    if "bf16" in precision:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def retime(job_dir: Path) -> dict[str, Any]:
    """Time the kept model of ``job_dir`` with its job's settings and update its ``result.json``."""
    import torch

    from . import cost

    job = json.loads((job_dir / "job.json").read_text())
    if job.get("threads"):  # as a job run alone by `local` would have (else every core)
        torch.set_num_threads(int(job["threads"]))
    result = json.loads((job_dir / RESULT).read_text())
    kept = torch.load(job_dir / TIMING_MODEL, weights_only=False)
    model, single, eval_batch = kept["model"].eval(), kept["single"], kept["eval_batch"]
    runs, warmup = job["timing"]["runs"], job["timing"]["warmup"]
    device = torch.device("cpu")
    with _forward_context(str(job["precision"])):
        latency_times = cost.timed_seconds(lambda: model(single), runs, warmup, device)
        batch_time = cost.median_seconds(lambda: model(eval_batch), runs, warmup, device)
    figures = result["cost"]
    figures["latency_ms_shared"] = figures["latency_ms"]
    figures["throughput_img_s_shared"] = figures["throughput_img_s"]
    if "latency_iqr_ms" in figures:
        figures["latency_iqr_ms_shared"] = figures["latency_iqr_ms"]
    figures["latency_ms"] = statistics.median(latency_times) * 1000
    figures["latency_iqr_ms"] = cost.iqr(latency_times) * 1000
    figures["throughput_img_s"] = eval_batch.shape[0] / batch_time
    figures["retimed_threads"] = torch.get_num_threads()
    figures["latency_measured"] = "exclusive"
    write_result(job_dir, result)
    (job_dir / TIMING_MODEL).unlink()
    return result


def retime_alone(job_dirs: list[Path], offline: bool, echo: Callable[[str], None]) -> None:
    """Re-time each finished job that kept its model, one after the other, in one fresh process.

    One process for all of them saves the start-up (torch and anomalib imports) per job; the jobs still run
    one at a time, alone on the machine. A job whose re-timing fails keeps its figures, marked shared.
    """
    pending = [d for d in job_dirs if (d / TIMING_MODEL).is_file()]
    if not pending:
        return
    echo(f"re-timing the inference of {len(pending)} job(s) alone (--no-exclusive-timing skips this)")
    log_path = pending[0].parent.parent / "retime_log.txt"
    with log_path.open("a") as log:
        subprocess.call(
            [sys.executable, "-m", "anomalib_crr.benchmark.retime_main", *map(str, pending)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=job_environment(offline),
        )
    for job_dir in pending:
        if not (job_dir / TIMING_MODEL).is_file():
            continue
        result = json.loads((job_dir / RESULT).read_text())
        result["cost"]["timing"] = f"shared: re-timing alone failed (see {log_path}); figures measured shared"
        result["cost"]["latency_measured"] = "retime-failed"
        write_result(job_dir, result)
        (job_dir / TIMING_MODEL).unlink(missing_ok=True)
        echo(f"{job_dir.name}: re-timing failed (see {log_path}); its figures stay marked shared")


def main(argv: list[str] | None = None) -> int:
    """Process entry point: re-time every job folder given; returns the number that failed."""
    import traceback

    failed = 0
    for job_dir in map(Path, sys.argv[1:] if argv is None else argv):
        try:
            retime(job_dir)
            print(f"{job_dir.name}: re-timed", flush=True)
        except Exception:
            print(f"{job_dir.name}: re-timing failed", flush=True)
            traceback.print_exc()
            failed += 1
    return failed


if __name__ == "__main__":
    sys.exit(main())
