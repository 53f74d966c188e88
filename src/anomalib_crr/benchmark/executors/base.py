# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""What every executor shares: the job process command, its environment, and the submission handle.

Every executor runs the same thing, ``python -m anomalib_crr.benchmark.job_main <job_dir>/job.json``, in a process
of its own (a local child, a process started by a Ray task, a SLURM job step), so a crash or an out-of-memory
kill ends that job only, and a job behaves the same wherever it runs. Executors differ only in where that
process starts and how its ``result.json`` and ``log.txt`` reach the run folder.

The job process reads two environment variables that are deliberately *not* part of the job definition (and
so not of its spec hash, which is why a run started with ``pool`` can be finished with ``local``):
``ANOMALIB_CRR_JOB_THREADS`` (torch threads, set by ``pool`` so that concurrent jobs do not oversubscribe the
cores) and ``ANOMALIB_CRR_EXECUTION`` (JSON recorded in the result: executor, slot, timing mode).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import JobSpec

THREADS_ENV = "ANOMALIB_CRR_JOB_THREADS"
EXECUTION_ENV = "ANOMALIB_CRR_EXECUTION"
KEEP_TIMING_ENV = "ANOMALIB_CRR_KEEP_TIMING_MODEL"
_PR_SET_PDEATHSIG = 1


def job_command(job_file: Path | str) -> list[str]:
    """The command that runs one job (the same on every executor).

    It runs :mod:`..job_main`, not ``job`` itself: the package imports ``job`` before ``-m`` would run it, and
    runpy then warns in every job log (see :mod:`..job_main`).
    """
    return [sys.executable, "-m", "anomalib_crr.benchmark.job_main", str(job_file)]


def job_environment(offline: bool, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The job process's environment: this one, unbuffered output, offline hubs when asked, and ``extra``."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if offline:
        env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    env.update(extra or {})
    return env


def die_with_parent() -> None:
    """``preexec_fn``: the job process is killed when the process that started it dies (Linux).

    Without it a job started by a runner or Ray worker that was SIGKILLed would run on as an orphan and could
    write its result while the same job is rerun. Elsewhere this is a no-op.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class Submission:
    """One job handed to an executor: its spec, folder, when it started, and the executor's own handle."""

    job: JobSpec
    job_dir: Path
    handle: Any = None
    started: float = field(default_factory=time.time)
    where: str = ""  # e.g. "pid 1234", "ray task on 10.0.0.3", "slurm job 56", shown in the progress display


class Executor(ABC):
    """Starts job processes somewhere and reports when each has ended.

    The runner owns the schedule: it calls :meth:`start` while :meth:`has_room` allows, :meth:`poll` each
    running submission, and :meth:`cancel` on a timeout or Ctrl-C. A job whose process ended must have its
    ``result.json`` and ``log.txt`` in ``job_dir`` by the time :meth:`poll` returns its exit code (the runner
    writes a ``failed`` result from :meth:`failure_reason` when there is none).
    """

    name = "executor"
    #: Whether the runner waits for the submitted jobs (``slurm --detach`` returns after submitting).
    waits = True

    @abstractmethod
    def has_room(self, running: int) -> bool:
        """Whether another job may start while ``running`` of this run's jobs are running."""

    @abstractmethod
    def start(self, job: JobSpec, job_dir: Path) -> Submission:
        """Start the job whose ``job.json`` is in ``job_dir``; returns at once."""

    @abstractmethod
    def poll(self, submission: Submission) -> int | None:
        """The job's exit code once it has ended (0 = ok), else ``None``."""

    @abstractmethod
    def cancel(self, submission: Submission) -> None:
        """Stop the job (its process, task or SLURM job) and wait until it is gone."""

    def failure_reason(self, submission: Submission, code: int) -> str | None:
        """Why a job that ended without a result failed, where the executor knows more than the exit code."""
        return None

    def finish(self) -> None:  # noqa: B027 - optional hook
        """Called once after the last job (release a cluster connection, etc.)."""


def execution_record(executor: str, timing: str, **extra: Any) -> str:
    """The ``ANOMALIB_CRR_EXECUTION`` value for a job process."""
    return json.dumps({"executor": executor, "timing": timing, **extra})
