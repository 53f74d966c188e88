# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Where benchmark jobs run: ``local`` (default), ``pool`` (concurrent, this machine), ``ray``, ``slurm``.

Ray and SLURM are optional extras (``pip install "anomalib-crr[ray]"`` / ``"anomalib-crr[slurm]"``); asking for
one that is not installed is a :class:`~anomalib_crr.benchmark.config.ConfigError` naming the extra, raised
before any job starts.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..config import BenchmarkConfig, ConfigError
from .base import Executor, Submission
from .options import ExecutorOptions, parse_executor
from .process import assign_gpus, make_process_executor

__all__ = ["Executor", "ExecutorOptions", "Submission", "assign_gpus", "make_executor", "parse_executor"]

_EXTRAS = {"ray": ("ray", "ray"), "slurm": ("submitit", "slurm")}


def require_extra(executor: str) -> None:
    """Raise a :class:`ConfigError` naming the pip extra when ``executor``'s package is missing."""
    module, extra = _EXTRAS[executor]
    if importlib.util.find_spec(module) is None:
        msg = (
            f"--executor {executor} needs the '{module}' package, which is not installed: "
            f'pip install "anomalib-crr[{extra}]"'
        )
        raise ConfigError(msg)


def make_executor(options: ExecutorOptions, config: BenchmarkConfig, run_dir: Path) -> Executor:
    """The executor ``options`` names, set up for ``config`` (connects to or starts a Ray cluster)."""
    if options.name in {"local", "pool"}:
        return make_process_executor(
            options.name,
            options.workers,
            options.gpus_per_job,
            config.accelerator,
            config.offline,
            options.exclusive_timing,
        )
    require_extra(options.name)
    if options.name == "ray":
        from .ray_executor import RayExecutor

        return RayExecutor(options, config.offline)
    from .slurm import SlurmExecutor

    return SlurmExecutor(options, config.offline, run_dir)
