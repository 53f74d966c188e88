# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Frozen DINOv2-with-registers encoder for CRR, with explicit offline weight handling.

anomalib's Dinomaly always builds its encoder with ``pre_trained=True`` and therefore cannot run
without internet access. CRR builds the same ``TimmFeatureExtractor`` but decides where the weights
come from: timm's hub (``"pretrained"``), a local file, or nowhere (random init, for tests and
offline smoke runs). Every failure names the file or the hub id and says how to run offline.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import timm
from anomalib.models.components.feature_extractors import TimmFeatureExtractor
from anomalib.models.image.dinomaly.torch_model import DINO_ARCHITECTURES

from anomalib_crr.models.components import hub_id, offline_hub_if_unreachable

logger = logging.getLogger(__name__)

PRETRAINED = "pretrained"


def dino_architecture(encoder_name: str) -> dict:
    """Return embedding size, head count and default target layers for a DINOv2 encoder name.

    Args:
        encoder_name: timm model name, e.g. ``"vit_base_patch14_reg4_dinov2"``.

    Returns:
        A copy of the matching entry of anomalib's ``DINO_ARCHITECTURES``.

    Raises:
        ValueError: If the name is not a timm DINOv2 ViT of a known size.
    """
    supported = sorted(n for n in timm.list_models("vit_*_patch14*dinov2*") if "_ls" not in n)
    if not timm.is_model(encoder_name) or "dinov2" not in encoder_name:
        msg = f"Unknown encoder_name {encoder_name!r}: CRR needs a timm DINOv2 ViT, one of {supported}."
        raise ValueError(msg)
    for size, config in DINO_ARCHITECTURES.items():
        if f"_{size}_" in encoder_name:
            return {**config, "target_layers": list(config["target_layers"])}
    msg = f"Unsupported encoder size in {encoder_name!r}: expected one of {list(DINO_ARCHITECTURES)} in the name."
    raise ValueError(msg)


def build_encoder(
    encoder_name: str,
    encoder_weights: str | Path | None,
    target_layers: list[int],
) -> TimmFeatureExtractor:
    """Build the frozen token encoder and load its weights.

    The blocks after the deepest target layer (and the final norm/head) are pruned with timm's
    ``prune_intermediate_layers``: they never contribute to CRR's features, so running them would
    only cost time (2 of 12 blocks for ViT-B).

    Args:
        encoder_name: timm DINOv2 model name.
        encoder_weights: ``"pretrained"`` (download with timm), a path to a local checkpoint
            (timm ``.safetensors``/``.pth``, or the original ``dinov2_vit*_reg4_pretrain.pth``), or
            ``None`` for random initialisation.
        target_layers: Block indices whose tokens are returned.

    Returns:
        A ``TimmFeatureExtractor`` in ``NLC`` mode returning ``[cls, registers, patches]`` tokens.

    Raises:
        FileNotFoundError: If a local weights path does not exist.
        RuntimeError: If the download or the loading of a file fails.
    """
    download = isinstance(encoder_weights, str) and encoder_weights == PRETRAINED
    local_path = None if download or encoder_weights is None else Path(encoder_weights).expanduser()
    if local_path is not None and not local_path.is_file():
        msg = (
            f"Encoder weights file not found: '{local_path}'. Pass encoder_weights='pretrained' to download "
            f"{hub_id(encoder_name)}, a path to an existing checkpoint, or None for random initialisation."
        )
        raise FileNotFoundError(msg)

    layers = [f"blocks.{i}" for i in target_layers]
    try:
        with offline_hub_if_unreachable() if download else contextlib.nullcontext():
            encoder = TimmFeatureExtractor(
                backbone=encoder_name,
                layers=layers,
                pre_trained=download,
                requires_grad=False,
                output_fmt="NLC",
                return_class_token=True,
                norm=False,
                dynamic_img_size=True,
            )
    except Exception as exc:
        if not download:
            raise
        msg = (
            f"Could not download the pretrained weights of '{encoder_name}' from {hub_id(encoder_name)} "
            f"({type(exc).__name__}: {exc}). To run offline, download the checkpoint on a machine with internet "
            "access and pass its path as encoder_weights (CLI: --model.encoder_weights /path/to/file.safetensors), "
            "or pass encoder_weights=None (CLI: --model.encoder_weights null) for a random-init smoke run."
        )
        raise RuntimeError(msg) from exc

    vit = encoder.feature_extractor
    if local_path is not None:
        _load_local_weights(vit, local_path)
    vit.prune_intermediate_layers(indices=list(target_layers), prune_norm=True, prune_head=True)
    for param in encoder.parameters():
        param.requires_grad = False
    return encoder.eval()


def _load_local_weights(vit: timm.models.VisionTransformer, path: Path) -> None:
    """Load a timm- or DINOv2-format checkpoint strictly into ``vit``.

    timm's ViT ``checkpoint_filter_fn`` converts the original DINOv2 key names (``register_tokens``,
    ``ls1.gamma``, ...) and resamples position embeddings where needed.
    """
    from timm.models import load_state_dict
    from timm.models.vision_transformer import checkpoint_filter_fn

    try:
        state_dict = load_state_dict(str(path), use_ema=False)
        state_dict = checkpoint_filter_fn(state_dict, vit)
        vit.load_state_dict(state_dict, strict=True)
    except Exception as exc:
        msg = f"Could not load encoder weights from '{path}' into '{type(vit).__name__}': {exc}"
        raise RuntimeError(msg) from exc
    logger.info("Loaded encoder weights from %s", path)
