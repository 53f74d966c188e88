# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""``anomalib-crr benchmark``: compare anomaly-detection models on accuracy, speed and memory.

Any ``AnomalibModule`` (ours and anomalib's) × any anomalib datamodule (per category or multi-class) × seeds,
each job in its own process on anomalib's ``Engine``, with the seven metrics of the multi-class papers per
category and their mean, and the cost of every model. See ``docs/benchmarks.md`` and
``configs/benchmark/*.yaml``.

Example:
    >>> from anomalib_crr.benchmark import run
    >>> summary = run("configs/benchmark/smoke.yaml")  # doctest: +SKIP
    >>> summary.ok  # doctest: +SKIP
    True
"""

from .config import ConfigError, load_config
from .runner import RunSummary, run

__all__ = ["ConfigError", "RunSummary", "load_config", "run"]
