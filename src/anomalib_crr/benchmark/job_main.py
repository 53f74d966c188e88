# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Process entry of one benchmark job: ``python -m anomalib_crr.benchmark.job_main <job_dir>/job.json``.

Why a module of its own: ``python -m anomalib_crr.benchmark.job`` first imports the package, whose
``__init__`` imports the runner, which imports :mod:`.job`; runpy then executes ``job`` a second time as
``__main__`` and warns ``RuntimeWarning: 'anomalib_crr.benchmark.job' found in sys.modules ...`` at the top of
every job log (and the job ran with two copies of the module). Nothing imports this module, so running it as
``__main__`` is its first and only execution; it only hands over to :func:`.job.main`.
"""

from __future__ import annotations

import sys

from .job import main

if __name__ == "__main__":
    sys.exit(main())
