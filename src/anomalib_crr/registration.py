# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Make every name form anomalib accepts for its built-in models find CRR and MFRNet.

anomalib 2.7 resolves model names in three places, none of which knows about plugins:

* ``get_model("crr")`` and the CLI's ``--model CRR`` walk the already-imported subclasses of
  ``AnomalibModule``: importing this package is enough (the start-up hook does it).
* ``get_model({"class_path": "CRR"})`` (a dict, ``DictConfig`` or ``Namespace``; what anomalib's benchmark
  and tiled-ensemble pipelines pass) is ``getattr(anomalib.models, "CRR")``, and ``from anomalib.models
  import CRR`` reads the same attribute: :func:`register_with_anomalib` sets it.
* A dotted ``class_path`` is imported only from the modules in ``anomalib.models.ALLOWED_MODULES``. The
  CLI writes ``class_path: anomalib_crr.CRR`` into every run's ``config.yaml``, so this package's top-level
  module (exactly that module, no sub-modules) is added to the allowlist, which lets such a config be fed
  back to ``get_model`` or the benchmark pipeline.

Nothing in anomalib's installed files changes; everything happens in memory at import.
"""

from __future__ import annotations

from anomalib.models.components import AnomalibModule

# The module that ``get_import_path`` (jsonargparse) records for the re-exported classes.
PLUGIN_MODULE = "anomalib_crr"


def register_with_anomalib(*models: type[AnomalibModule]) -> None:
    """Expose ``models`` as attributes of ``anomalib.models`` and allow ``anomalib_crr.<Model>`` class paths.

    Args:
        models: The plugin's model classes. A name anomalib already uses for a different class is refused,
            so a plugin can never shadow a built-in model.

    Raises:
        RuntimeError: If ``anomalib.models`` already has a different object under one of the names.
    """
    import anomalib.models as anomalib_models

    for model in models:
        existing = getattr(anomalib_models, model.__name__, None)
        if existing is not None and existing is not model:
            msg = (
                f"anomalib.models already defines {model.__name__} ({existing!r}); anomalib_crr will not replace "
                f"it. Use class_path '{PLUGIN_MODULE}.{model.__name__}' for the plugin's model."
            )
            raise RuntimeError(msg)
        setattr(anomalib_models, model.__name__, model)
        if model.__name__ not in anomalib_models.__all__:
            anomalib_models.__all__.append(model.__name__)
    anomalib_models.ALLOWED_MODULES.add(PLUGIN_MODULE)
