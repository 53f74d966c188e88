# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Import ``anomalib_crr`` right after ``anomalib.models``, so anomalib sees CRR and MFRNet by short name.

anomalib 2.7 has no plugin mechanism: its CLI resolves ``--model CRR`` by walking the subclasses of
``AnomalibModule`` that are *already imported*, and ``get_model``/``list_models`` scan the same set.
This module is imported at interpreter start-up by ``anomalib_crr_hook.pth``. It installs a one-shot
meta-path finder that waits for ``anomalib.models`` to be imported and then imports ``anomalib_crr``.
It imports only modules the interpreter has already loaded (no torch, no anomalib, not even
``typing``), so it adds about a millisecond to start-up.

Set ``ANOMALIB_CRR_NO_AUTOLOAD=1`` to switch the hook off.
"""

import importlib
import importlib.machinery
import os
import sys

_TARGET = "anomalib.models"


class _LoadAfterAnomalibModels:
    """Meta-path finder and loader, duck-typed (``importlib.abc`` alone costs ~20 ms to import).

    It wraps the real loader of ``anomalib.models`` and imports the plugin once that module has executed.
    """

    def __init__(self):
        self._inner = None

    def find_spec(self, fullname, path=None, target=None):
        """Return ``anomalib.models``' real spec with this object as its loader; ``None`` for anything else."""
        del target
        if fullname != _TARGET:
            return None
        # One shot: leave the meta path before looking up the real spec.
        if self in sys.meta_path:
            sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        self._inner = spec.loader
        spec.loader = self
        return spec

    def create_module(self, spec):
        """Delegate module creation to the real loader."""
        return self._inner.create_module(spec)

    def exec_module(self, module):
        """Execute ``anomalib.models``, then import the plugin so its models are registered."""
        self._inner.exec_module(module)
        try:
            importlib.import_module("anomalib_crr")
        except Exception as exc:  # never break anomalib itself because of the plugin
            print(f"[anomalib_crr] auto-import after anomalib.models failed: {exc!r}", file=sys.stderr)


def install():
    """Register the hook unless disabled or already registered, or ``anomalib.models`` is already imported."""
    if os.environ.get("ANOMALIB_CRR_NO_AUTOLOAD"):
        return
    if _TARGET in sys.modules or any(isinstance(f, _LoadAfterAnomalibModels) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _LoadAfterAnomalibModels())


install()
