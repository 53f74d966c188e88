# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Frozen timm CNN backbones for the plugin's models: layer checks, local weight files, normalisation.

MFRNet's multi-scale aggregator and CRR's CNN encoder build their frozen backbone here, so that both load a local
timm weights file the same way (every tensor of the feature model must be in the file, or the load is refused
with the file named) and both say the same thing when a download fails offline.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

import timm
from anomalib.models.components.feature_extractors import TimmFeatureExtractor
from torch import nn

from .hub import hub_id, offline_hub_if_unreachable

logger = logging.getLogger(__name__)


def feature_layers(backbone: str) -> list[dict]:
    """The backbone's ``features_only`` levels: ``module`` name, ``num_chs`` and ``reduction`` (stride) of each.

    Raises:
        ValueError: If ``backbone`` is not a timm model with a ``features_only`` mode.
    """
    if not timm.is_model(backbone):
        msg = f"Unknown backbone {backbone!r}: not a timm model"
        raise ValueError(msg)
    try:
        probe = timm.create_model(backbone, pretrained=False, features_only=True, exportable=True)
    except Exception as exc:
        msg = f"timm model {backbone!r} has no features_only (CNN feature pyramid) mode: {exc}"
        raise ValueError(msg) from exc
    return [dict(info) for info in probe.feature_info.info]


def check_feature_layers(backbone: str, layers: Sequence[str]) -> None:
    """Raise a ``ValueError`` naming the layers ``backbone`` does not expose, and the ones it does."""
    available = [info["module"] for info in feature_layers(backbone)]
    unknown = [layer for layer in layers if layer not in available]
    if unknown:
        msg = f"Backbone {backbone!r} has no feature layer(s) {unknown}; available: {available}."
        raise ValueError(msg)


def backbone_normalization(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std the backbone was trained with (ImageNet for VGG/ResNet, 0.5/0.5 for EfficientNet-Lite)."""
    cfg = timm.models.get_pretrained_cfg(backbone)
    if cfg is None:
        return (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    return tuple(cfg.mean), tuple(cfg.std)


def load_backbone_weights(model: nn.Module, path: Path) -> None:
    """Load a timm-format ``.pth``/``.safetensors`` file into a (``features_only``) timm model.

    Classifier keys the feature model does not have are dropped; every parameter and buffer of the
    model must be in the file, otherwise a partially random backbone would pass silently.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
        RuntimeError: If the file cannot be read or does not cover the model.
    """
    from timm.models import load_state_dict

    if not path.is_file():
        msg = f"Backbone weights file not found: '{path}'."
        raise FileNotFoundError(msg)
    try:
        state_dict = load_state_dict(str(path), use_ema=False)
    except Exception as exc:
        msg = f"Could not read backbone weights from '{path}': {exc}"
        raise RuntimeError(msg) from exc
    expected = model.state_dict()
    missing = [key for key in expected if key not in state_dict]
    if missing:
        msg = (
            f"Backbone weights '{path}' do not match {type(model).__name__}: {len(missing)} of {len(expected)} "
            f"tensors missing (e.g. {missing[:3]}). Is it a checkpoint of the same timm architecture?"
        )
        raise RuntimeError(msg)
    mismatched = [k for k in expected if state_dict[k].shape != expected[k].shape]
    if mismatched:
        msg = f"Backbone weights '{path}' have wrong shapes for {mismatched[:3]}; is it the same timm architecture?"
        raise RuntimeError(msg)
    model.load_state_dict({key: state_dict[key] for key in expected}, strict=True)
    logger.info("Loaded backbone weights from %s", path)


def build_feature_extractor(
    backbone: str,
    layers: Sequence[str],
    pre_trained: bool,
    weights_path: str | Path | None,
) -> TimmFeatureExtractor:
    """Build the frozen CNN feature extractor and load its weights.

    Args:
        backbone: timm model name.
        layers: Validated ``feature_info`` module names.
        pre_trained: Download timm's ImageNet weights (ignored when ``weights_path`` is given).
        weights_path: Local timm-format weights file; takes precedence over ``pre_trained``.

    Raises:
        FileNotFoundError: If ``weights_path`` does not exist.
        RuntimeError: If the download or loading fails (the message says how to run offline).
    """
    local_path = Path(weights_path).expanduser() if weights_path is not None else None
    if local_path is not None and not local_path.is_file():
        msg = (
            f"Backbone weights file not found: '{local_path}'. Pass an existing timm-format .pth/.safetensors "
            f"file as weights_path, or weights_path=None with pre_trained=True to download {hub_id(backbone)}."
        )
        raise FileNotFoundError(msg)
    download = pre_trained and local_path is None
    try:
        with offline_hub_if_unreachable() if download else contextlib.nullcontext():
            extractor = TimmFeatureExtractor(
                backbone=backbone, layers=list(layers), pre_trained=download, requires_grad=False
            )
    except Exception as exc:
        if not download:
            raise
        msg = (
            f"Could not download the pretrained weights of '{backbone}' from {hub_id(backbone)} "
            f"({type(exc).__name__}: {exc}). To run offline, pass a local timm-format weights file as weights_path "
            "(CLI: --model.weights_path /path/to/weights.safetensors), or pre_trained=False (CLI: "
            "--model.pre_trained false) for a random-init smoke run."
        )
        raise RuntimeError(msg) from exc
    if local_path is not None:
        load_backbone_weights(extractor.feature_extractor, local_path)
    for param in extractor.parameters():
        param.requires_grad = False
    return extractor.eval()
