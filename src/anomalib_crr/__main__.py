# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""``python -m anomalib_crr`` = the ``anomalib-crr`` console script."""

from anomalib_crr.cli import main

main()
