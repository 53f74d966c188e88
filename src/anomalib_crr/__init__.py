# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""anomalib-crr: CRR and MFRNet anomaly-detection models for anomalib.

Importing this package registers the models with anomalib (they subclass ``AnomalibModule``), so
``anomalib train --model CRR``, ``anomalib.models.get_model("crr")``, ``get_model({"class_path": "CRR"})``,
``from anomalib.models import CRR`` and ``list_models()`` find them (see :mod:`anomalib_crr.registration`).
"""

import os
import warnings

# Importing anomalib 2.7's model package raises two FutureWarnings from anomalib's own modules (timm's old
# ``timm.models.layers`` path, anomalib's DINOv2 layers): nothing a user can act on, yet they were the first lines of
# every command. Hidden for this import only (anomalib imported elsewhere first still shows them), unless
# ``ANOMALIB_CRR_VERBOSE=1``.
with warnings.catch_warnings():
    if os.environ.get("ANOMALIB_CRR_VERBOSE", "") in ("", "0"):
        warnings.filterwarnings("ignore", message=r"Importing from timm\.models\.layers", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"The anomalib\.models\.components\.dinov2", category=FutureWarning)
    from anomalib_crr.models import CRR, MFRNet
    from anomalib_crr.registration import register_with_anomalib

register_with_anomalib(CRR, MFRNet)

__version__ = "0.2.0"

__all__ = ["CRR", "MFRNet", "__version__"]
