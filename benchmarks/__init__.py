# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Benchmark scripts of anomalib-crr; the pieces they share live in :mod:`benchmarks.common`.

Not shipped in the wheel: the scripts are run from a checkout (``python benchmarks/x.py`` or
``python -m benchmarks.x``); see :mod:`benchmarks.common` for how both forms find this package.
"""
