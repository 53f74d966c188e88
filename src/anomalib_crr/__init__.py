# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""anomalib-crr: CRR and MFRNet anomaly-detection models for anomalib.

Importing this package registers the models with anomalib (they subclass ``AnomalibModule``), so
``anomalib train --model CRR``, ``anomalib.models.get_model("crr")``, ``get_model({"class_path": "CRR"})``,
``from anomalib.models import CRR`` and ``list_models()`` find them (see :mod:`anomalib_crr.registration`).
"""

from anomalib_crr.models import CRR, MFRNet
from anomalib_crr.registration import register_with_anomalib

register_with_anomalib(CRR, MFRNet)

__version__ = "0.2.0"

__all__ = ["CRR", "MFRNet", "__version__"]
