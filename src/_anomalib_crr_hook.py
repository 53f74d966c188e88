# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Import ``anomalib_crr`` right after ``anomalib.models``, so anomalib sees CRR and MFRNet by short name.

anomalib 2.7 has no plugin mechanism: its CLI resolves ``--model CRR`` by walking the subclasses of
``AnomalibModule`` that are *already imported*, and ``get_model``/``list_models`` scan the same set.
This module is imported at interpreter start-up by ``anomalib_crr_hook.pth``. It installs a one-shot
meta-path finder that waits for ``anomalib.models`` to be imported and then imports ``anomalib_crr``.
Until then it imports nothing heavy (no torch, no anomalib), so start-up cost stays in the millisecond range.

Set ``ANOMALIB_CRR_NO_AUTOLOAD=1`` to switch the hook off.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
import types

_TARGET = "anomalib.models"


class _LoadAfterAnomalibModels(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Wrap the real loader of ``anomalib.models`` and import the plugin once it has executed."""

    def __init__(self) -> None:
        self._inner: importlib.abc.Loader | None = None

    def find_spec(
        self,
        fullname: str,
        path: object = None,
        target: types.ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        del path, target
        if fullname != _TARGET:
            return None
        # One shot: remove ourselves first so the lookup below finds the real spec.
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        self._inner = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        assert self._inner is not None
        return self._inner.create_module(spec)

    def exec_module(self, module: types.ModuleType) -> None:
        assert self._inner is not None
        self._inner.exec_module(module)
        try:
            importlib.import_module("anomalib_crr")
        except Exception as exc:
            print(f"[anomalib_crr] auto-import after anomalib.models failed: {exc!r}", file=sys.stderr)


def install() -> None:
    """Register the hook unless disabled or already registered, or ``anomalib.models`` is already imported."""
    if os.environ.get("ANOMALIB_CRR_NO_AUTOLOAD"):
        return
    if _TARGET in sys.modules or any(isinstance(f, _LoadAfterAnomalibModels) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _LoadAfterAnomalibModels())


install()
