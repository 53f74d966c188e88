# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""``local`` (one job at a time, the default) and ``pool`` (several at once) on this machine.

``pool`` gives each concurrent job a *slot*:
- on GPUs, one per ``gpus_per_job`` visible devices, passed as the job process's own ``CUDA_VISIBLE_DEVICES``
  (so a job sees its devices as ``cuda:0..``; slots never share a device);
- on CPU, ``workers`` slots, each job limited to ``cores // workers`` torch threads, so that concurrent jobs do
  not oversubscribe the cores (and a job's latency is not measured against N × threads runnable threads).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

from ..config import JobSpec
from .base import (
    EXECUTION_ENV,
    KEEP_TIMING_ENV,
    THREADS_ENV,
    Executor,
    Submission,
    die_with_parent,
    execution_record,
    job_command,
    job_environment,
)


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else every device torch sees."""
    declared = os.environ.get("CUDA_VISIBLE_DEVICES")
    if declared is not None:
        return [d.strip() for d in declared.split(",") if d.strip() and d.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []


def assign_gpus(gpus: Sequence[str], gpus_per_job: int, workers: int | None = None) -> list[list[str]]:
    """Split the visible GPUs into disjoint groups of ``gpus_per_job``, one per concurrent job.

    Args:
        gpus: Visible device ids (as ``CUDA_VISIBLE_DEVICES`` lists them).
        gpus_per_job: Devices each job gets.
        workers: At most this many groups (default: as many as the devices allow).

    Raises:
        ValueError: Fewer devices than one job needs, or a non-positive ``gpus_per_job``.
    """
    if gpus_per_job < 1:
        msg = f"gpus_per_job must be >= 1, got {gpus_per_job}"
        raise ValueError(msg)
    if len(gpus) < gpus_per_job:
        msg = (
            f"--gpus-per-job {gpus_per_job} needs that many visible GPUs; this machine shows {len(gpus)}: {list(gpus)}"
        )
        raise ValueError(msg)
    groups = [list(gpus[i : i + gpus_per_job]) for i in range(0, len(gpus) - gpus_per_job + 1, gpus_per_job)]
    return groups[:workers] if workers else groups


def cpu_cores() -> int:
    """Cores this process may run on (its affinity mask, which containers and SLURM narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class ProcessExecutor(Executor):
    """Job processes on this machine, at most one per slot.

    Args:
        slots: One environment overlay per concurrent job (threads or ``CUDA_VISIBLE_DEVICES``).
        name: ``local`` or ``pool`` (recorded in each result).
        timing: How latency figures are measured, as the report states it.
        offline: Set the hubs' offline variables in the job processes.
        keep_timing_model: Ask each job to keep its trained model for re-timing alone after the run.
    """

    def __init__(
        self,
        slots: list[dict[str, str]],
        name: str,
        timing: str,
        offline: bool,
        keep_timing_model: bool = False,
    ) -> None:
        self.name = name
        self.slots = slots
        self.free = list(range(len(slots)))
        self.timing = timing
        self.offline = offline
        self.keep_timing_model = keep_timing_model

    def has_room(self, running: int) -> bool:
        """A free slot is left."""
        del running
        return bool(self.free)

    def start(self, job: JobSpec, job_dir: Path) -> Submission:
        """Start the job process in its own session (so it and its workers can be killed as one group)."""
        slot = self.free.pop(0)
        extra = {
            **self.slots[slot],
            EXECUTION_ENV: execution_record(self.name, self.timing, slot=slot, **self.slots[slot]),
        }
        if self.keep_timing_model:
            extra[KEEP_TIMING_ENV] = "1"
        with (job_dir / "log.txt").open("w") as log:
            process = subprocess.Popen(
                job_command(job_dir / "job.json"),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=job_environment(self.offline, extra),
                start_new_session=True,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl, safe before exec
            )
        return Submission(job=job, job_dir=job_dir, handle=(process, slot), where=f"pid {process.pid}")

    def poll(self, submission: Submission) -> int | None:
        """The process's exit code once it ended (its slot is free again)."""
        process, slot = submission.handle
        code = process.poll()
        if code is not None and slot not in self.free:
            self.free.append(slot)
            self.free.sort()
        return code

    def cancel(self, submission: Submission) -> None:
        """SIGKILL the job's process group (its data-loader workers too) and reap it."""
        process, _ = submission.handle
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        self.poll(submission)

    def timing_note(self) -> str:
        """How this pool's latency and throughput figures are measured (each job records it in its result)."""
        return self.timing


def make_process_executor(
    name: str,
    workers: int | None,
    gpus_per_job: int,
    accelerator: str,
    offline: bool,
    exclusive_timing: bool,
) -> ProcessExecutor:
    """``local`` or ``pool`` with its slots for this machine (GPUs when the config may use them, else cores)."""
    if name == "local":
        return ProcessExecutor([{}], "local", "exclusive: one job at a time on this machine", offline)
    gpus = visible_gpus() if accelerator in {"gpu", "cuda", "auto"} else []
    if gpus:
        groups = assign_gpus(gpus, gpus_per_job, workers)
        slots = [{"CUDA_VISIBLE_DEVICES": ",".join(group)} for group in groups]
        return ProcessExecutor(slots, "pool", "exclusive GPU: each job owns its GPU(s); CPU shared", offline)
    cores = cpu_cores()
    workers = workers or max(1, cores // 4)
    per_job = max(1, cores // workers)
    slots = [{THREADS_ENV: str(per_job)} for _ in range(workers)]
    if workers == 1:
        return ProcessExecutor(slots, "pool", "exclusive: one job at a time on this machine", offline)
    if exclusive_timing:
        timing = f"exclusive: re-timed alone after the run ({workers} jobs shared {cores} cores while training)"
    else:
        timing = f"shared: measured while up to {workers} jobs shared {cores} cores ({per_job} threads each)"
    return ProcessExecutor(slots, "pool", timing, offline, keep_timing_model=exclusive_timing)
