# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Script-mode shim: makes ``import benchmarks`` find this package when a script runs as ``python benchmarks/x.py``.

Python then puts ``benchmarks/`` itself (not the repository root) first on ``sys.path``, so the top-level name
``benchmarks`` resolves to this file instead of the package. Rather than editing ``sys.path``, this module loads
the real package (``benchmarks/__init__.py``, with ``benchmarks/`` as its search path) and puts it in
``sys.modules`` under its own name; the import system hands that entry back to the importer, so
``from benchmarks.common import ...`` then resolves inside the package as under ``python -m benchmarks.x``.
Under ``-m`` (or pytest, or any importer with the repository root on ``sys.path``) this file is never imported.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

if __name__ == "benchmarks":  # imported as the top-level name, i.e. in script mode (not as benchmarks.benchmarks)
    _spec = importlib.util.spec_from_file_location(__name__, Path(__file__).with_name("__init__.py"))
    if _spec is None or _spec.loader is None:  # pragma: no cover - only if the package file is missing
        msg = f"benchmarks/__init__.py not found next to {__file__}"
        raise ImportError(msg)
    _package = importlib.util.module_from_spec(_spec)
    sys.modules[__name__] = _package
    _spec.loader.exec_module(_package)
