# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Offline substitutes for weights and auxiliary data that anomalib models would download.

They are applied inside a job's own process only (never in the caller's), chosen per model in the config's
``offline`` mapping, and every one that is applied adds a note to the job's result, so the report says which
job ran with what:

* ``backbone_weights: <file>``: every ``timm.create_model(..., pretrained=True)`` call loads this local file
  (timm's ``pretrained_cfg_overlay={"file": ...}``) instead of downloading. This is how PatchCore, PaDiM,
  SuperSimpleNet (whose feature extractor has no weights flag) etc. get the offline ImageNet EfficientNet-Lite0.
  A call for another architecture fails loudly on the mismatched state dict rather than silently using random
  weights.
* ``random_init: true``: ``pretrained=True`` becomes ``False`` in every ``timm.create_model`` call (Dinomaly
  hard-codes ``pre_trained=True`` for its DINOv2 encoder).
* ``efficientad_random_teacher: true``: EfficientAd's teacher keeps its random init instead of downloading the
  distilled PDN weights from anomalib's release page (its penalty images come from ``init_args.imagenet_dir``,
  which the CPU configs point at images written by the project's synthetic generator).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def apply_offline_patches(offline: dict[str, Any]) -> list[str]:
    """Install the requested substitutes in this process; returns one note per substitute."""
    notes: list[str] = []
    weights = offline.get("backbone_weights")
    random_init = bool(offline.get("random_init"))
    if weights is not None or random_init:
        import timm

        original = timm.create_model

        @functools.wraps(original)
        def create_model(model_name: str, pretrained: bool = False, **kwargs: Any) -> Any:
            if pretrained and random_init:
                logger.info("offline: %s built with random init instead of pretrained weights", model_name)
                pretrained = False
            elif pretrained and weights is not None:
                overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {})
                overlay["file"] = str(weights)
                kwargs["pretrained_cfg_overlay"] = overlay
                logger.info("offline: %s loads pretrained weights from %s", model_name, weights)
            return original(model_name, pretrained=pretrained, **kwargs)

        timm.create_model = create_model
        if random_init:
            notes.append("timm backbones built with pretrained=True were random-initialised (offline)")
        else:
            notes.append(f"timm pretrained weights loaded from local file {Path(weights).name}")
    if offline.get("efficientad_random_teacher"):
        from anomalib.models.image.efficient_ad.lightning_model import EfficientAd

        def keep_random_teacher(self: Any) -> None:
            del self
            logger.info("offline: EfficientAd teacher keeps its random init (no download)")

        EfficientAd.prepare_pretrained_model = keep_random_teacher
        notes.append("EfficientAd teacher random-init (pretrained PDN teacher not downloadable offline)")
    return notes


def weights_provenance(  # noqa: PLR0911  (one return per provenance rule reads best)
    init_args: dict[str, Any], offline: dict[str, Any], explicit: str | None, accepted: set[str] | None = None
) -> str:
    """Whether the backbone weights were pretrained (downloaded), a local file, or random.

    An explicit ``weights`` entry in the config wins; otherwise it is derived from the offline substitutes and the
    usual init args (``pre_trained``, ``weights_path``, ``encoder_weights``). ``accepted`` are the init args the
    model class takes: a class with none of the weight options gets no guess.
    """
    if explicit:
        return explicit
    if offline.get("backbone_weights"):
        return f"local file ({Path(offline['backbone_weights']).name})"
    if offline.get("random_init"):
        return "random init"
    if offline.get("efficientad_random_teacher"):
        return "random init (teacher)"
    for key in ("weights_path", "encoder_weights"):
        value = init_args.get(key)
        if value is not None:
            return "pretrained (download)" if str(value) == "pretrained" else f"local file ({Path(str(value)).name})"
    if "encoder_weights" in init_args or init_args.get("pre_trained") is False:
        return "random init"
    if accepted is not None and not accepted & {"pre_trained", "weights_path", "encoder_weights"}:
        return "as built by the model (no weights option)"
    return "pretrained (download)"
