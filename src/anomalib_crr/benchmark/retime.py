# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Re-time a finished job's inference alone: ``python -m anomalib_crr.benchmark.retime_main <job_dir>``.

Jobs that ran concurrently on the same CPU timed their inference while other jobs competed for the cores, so
their latency and throughput are not the model's. With ``pool`` on CPU each job keeps its trained model
(``timing_model.pt``, see :mod:`.job`); after the last job the runner re-times them one by one, each in a fresh
process with every core, with the same inputs, runs and warm-up. The shared figures are kept beside the new ones
(``latency_ms_shared``, ``throughput_img_s_shared``) and the model file is deleted.

"Alone" is checked, not assumed: the machine's 1-minute load is read before and after each timing (see
:func:`time_when_quiet`). A timing during which other work wanted the cores is repeated; if the machine stays
busy the figure is kept but labelled ``retime-busy`` instead of ``exclusive``, with both loads recorded
(``load_before``, ``load_after``).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from .executors.base import job_environment
from .job import RESULT, TIMING_MODEL, write_result

# How often a re-timing is tried while the machine is busy before its figure is kept as ``retime-busy``.
RETIME_TRIES = 2
# Load above the cores (see machine_busy) that still counts as quiet: the 1-minute average never reads exactly 0.
BUSY_MARGIN = 0.5
BUSY_LABEL = "retime-busy"
T = TypeVar("T")


def one_minute_load() -> float:
    """The machine's 1-minute load average (NaN where the platform has none, e.g. Windows)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return math.nan


def busy_limit(threads: int, cpu_count: int, margin: float = BUSY_MARGIN) -> float:
    """The highest 1-minute load at which a timing with ``threads`` threads still counts as alone.

    Why every core and not only the timing's threads: the 1-minute load is an average that lags by about a
    minute. Right after the last ``pool`` job it still holds those jobs (up to every core), and after a timing it
    holds the timing's own threads, so a load up to ``max(threads, cpu_count)`` can be this run alone. Only load
    beyond that means some other process waited for a core, which is what makes a latency not the model's.
    """
    return max(threads, cpu_count) + margin


def machine_busy(load_before: float, load_after: float, threads: int, cpu_count: int) -> bool:
    """Whether other work competed for the cores around a timing: either load above :func:`busy_limit`.

    A NaN reading (no load average on this platform) proves nothing, so it does not count as busy.
    """
    limit = busy_limit(threads, cpu_count)
    return any(not math.isnan(load) and load > limit for load in (load_before, load_after))


@dataclass(frozen=True)
class LoadCheck:
    """The machine's load around the timing whose figures were kept, and how many timings it took."""

    load_before: float
    load_after: float
    tries: int
    busy: bool
    limit: float


def time_when_quiet(
    measure: Callable[[], T],
    threads: int,
    cpu_count: int,
    read_load: Callable[[], float] = one_minute_load,
    tries: int = RETIME_TRIES,
) -> tuple[T, LoadCheck]:
    """Run ``measure`` until the machine was quiet around it, at most ``tries`` times.

    Why repeat: a busy moment (a backup, another user's job) is often short; a second timing usually finds the
    cores free. If every try was busy, the figures of the least busy one are kept (a figure is better than none)
    and the check says ``busy``, so the caller labels it instead of calling it exclusive.

    Args:
        measure: One complete timing (all warm-up and timed passes); its return value is kept.
        threads: Threads the timing uses (its own share of the load).
        cpu_count: Logical cores of the machine (the load average counts the whole machine).
        read_load: Reads the machine's load; the 1-minute load average by default.
        tries: Timings at most (at least one).

    Returns:
        The kept figures and the load check of the timing that produced them.
    """
    limit = busy_limit(threads, cpu_count)
    attempts: list[tuple[T, float, float]] = []
    for _ in range(max(1, tries)):
        before = read_load()
        figures = measure()
        after = read_load()
        attempts.append((figures, before, after))
        if not machine_busy(before, after, threads, cpu_count):
            return figures, LoadCheck(before, after, len(attempts), busy=False, limit=limit)
    figures, before, after = min(attempts, key=lambda a: max(a[1], a[2]))
    return figures, LoadCheck(before, after, len(attempts), busy=True, limit=limit)


def _forward_context(precision: str) -> Any:
    """The autocast the job's Lightning precision used on CPU (bf16), else nothing."""
    import torch

    if "bf16" in precision:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def retime(
    job_dir: Path,
    read_load: Callable[[], float] = one_minute_load,
    tries: int = RETIME_TRIES,
    cpu_count: int | None = None,
) -> dict[str, Any]:
    """Time the kept model of ``job_dir`` with its job's settings, update its ``result.json`` and delete the model.

    Args:
        job_dir: A finished job's folder holding ``timing_model.pt``.
        read_load: Reads the machine's load around each timing (see :func:`time_when_quiet`).
        tries: Timings at most while the machine is busy.
        cpu_count: Logical cores of the machine (default ``os.cpu_count()``).

    Returns:
        The updated result.
    """
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

    def measure() -> tuple[list[float], float]:
        with _forward_context(str(job["precision"])):
            latency_times = cost.timed_seconds(lambda: model(single), runs, warmup, device)
            batch_time = cost.median_seconds(lambda: model(eval_batch), runs, warmup, device)
        return latency_times, batch_time

    threads = torch.get_num_threads()
    cores = cpu_count or os.cpu_count() or threads
    (latency_times, batch_time), check = time_when_quiet(measure, threads, cores, read_load, tries)
    figures = result["cost"]
    figures["latency_ms_shared"] = figures["latency_ms"]
    figures["throughput_img_s_shared"] = figures["throughput_img_s"]
    if "latency_iqr_ms" in figures:
        figures["latency_iqr_ms_shared"] = figures["latency_iqr_ms"]
    figures["latency_ms"] = statistics.median(latency_times) * 1000
    figures["latency_iqr_ms"] = cost.iqr(latency_times) * 1000
    figures["throughput_img_s"] = eval_batch.shape[0] / batch_time
    figures["retimed_threads"] = threads
    figures["load_before"] = check.load_before
    figures["load_after"] = check.load_after
    figures["retime_tries"] = check.tries
    figures["latency_measured"] = BUSY_LABEL if check.busy else "exclusive"
    if check.busy:
        result.setdefault("notes", []).append(
            f"re-timed alone {check.tries} time(s) but the machine stayed busy (1-minute load {check.load_before:.2f} "
            f"before, {check.load_after:.2f} after, above {check.limit:.1f} for {cores} cores and {threads} threads); "
            f"the least busy timing is kept, labelled {BUSY_LABEL}"
        )
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


def awaits_retiming(result: dict[str, Any] | None) -> bool:
    """Whether a job's result is finished and still carries figures measured on shared cores.

    Why from the result and not from the invocation: a run stopped by Ctrl-C (or killed) before its re-timing
    leaves finished jobs with shared figures; the next run skips them as done, so only their result says that
    the re-timing is still owed.
    """
    if result is None or result.get("status") != "ok":
        return False
    figures = result.get("cost") or {}
    return "retimed_threads" not in figures and figures.get("latency_measured") != "retime-failed"


def retime_leftovers(output: Path, offline: bool, echo: Callable[[str], None]) -> list[Path]:
    """Re-time every job of the run folder that still holds a timing model, whichever invocation ran it.

    A timing model whose job has no finished result awaiting re-timing (the job was stopped, failed, or was
    already re-timed when its process died before deleting the file) is deleted: nothing would ever read it,
    and each one is tens of MB.

    Args:
        output: The run folder (``<output>/jobs/<job id>/timing_model.pt``).
        offline: Whether the re-timing process must not download (as the jobs).
        echo: Where progress lines go.

    Returns:
        The job folders handed to :func:`retime_alone`.
    """
    pending, orphans = [], 0
    for model_file in sorted((output / "jobs").glob(f"*/{TIMING_MODEL}")):
        try:
            result = json.loads((model_file.parent / RESULT).read_text())
        except (OSError, json.JSONDecodeError):
            result = None
        if awaits_retiming(result):
            pending.append(model_file.parent)
        else:
            model_file.unlink(missing_ok=True)
            orphans += 1
    if orphans:
        echo(f"deleted {orphans} timing model(s) of jobs without a finished result to re-time")
    retime_alone(pending, offline, echo)
    return pending


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
