# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Process entry of the re-timing: ``python -m anomalib_crr.benchmark.retime_main <job_dir> ...``.

Why a module of its own: the runner imports :mod:`.retime`, and the package ``__init__`` imports the runner, so
``python -m anomalib_crr.benchmark.retime`` would execute ``retime`` a second time as ``__main__`` and start
``retime_log.txt`` with runpy's ``found in sys.modules`` warning (see :mod:`.job_main`). Nothing imports this
module; it only hands over to :func:`.retime.main`.
"""

from __future__ import annotations

import sys

from .retime import main

if __name__ == "__main__":
    sys.exit(main())
