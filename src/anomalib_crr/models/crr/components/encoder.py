# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Frozen DINOv2-R / DINOv3 encoder for CRR, with explicit offline weight handling.

anomalib's Dinomaly always builds its encoder with ``pre_trained=True`` and therefore cannot run
without internet access. CRR builds the same ``TimmFeatureExtractor`` but decides where the weights
come from: timm's hub (``"pretrained"``), a local file, or nowhere (random init, for tests and
offline smoke runs). Every failure names the file or the hub id and says how to run offline.

Two encoder families are accepted: timm's DINOv2 ViTs (``vit_*_patch14[_reg4]_dinov2``, patch 14,
``VisionTransformer``) and timm's DINOv3 ViTs (``vit_*_patch16_dinov3[_qkvb]``, patch 16, RoPE ``Eva``
models with four registers). Embedding size, head count, depth, patch size and prefix tokens are read
from the built model, never assumed.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from anomalib.models.components.feature_extractors import TimmFeatureExtractor

from anomalib_crr.models.components import hub_id, offline_hub_if_unreachable

from .pos_embed import use_official_pos_embed

logger = logging.getLogger(__name__)

PRETRAINED = "pretrained"
ENCODER_FAMILIES = ("dinov2", "dinov3")


def supported_encoders() -> list[str]:
    """Names of the timm encoders CRR accepts: DINOv2 ViTs (patch 14) and DINOv3 ViTs (patch 16), no ``_ls``."""
    names = timm.list_models("vit_*_patch14*dinov2*") + timm.list_models("vit_*_patch16_dinov3*")
    return sorted(name for name in names if "_ls" not in name)


def encoder_family(encoder_name: str) -> str:
    """``"dinov2"`` or ``"dinov3"`` for a supported timm name.

    Raises:
        ValueError: If the name is not a timm DINOv2/DINOv3 ViT.
    """
    family = next((family for family in ENCODER_FAMILIES if family in encoder_name), None)
    if family is None or not timm.is_model(encoder_name) or encoder_name not in supported_encoders():
        msg = (
            f"Unknown encoder_name {encoder_name!r}: CRR needs a timm DINOv2 or DINOv3 ViT, "
            f"one of {supported_encoders()}, or a timm CNN (e.g. 'tf_efficientnet_lite0')."
        )
        raise ValueError(msg)
    return family


def encoder_patch_size(encoder_name: str) -> int:
    """Patch size of a supported encoder, from its timm name (``..._patch14_...`` → 14), before building it.

    The built model's ``patch_embed.patch_size`` is checked against it in :func:`build_encoder`.
    """
    encoder_family(encoder_name)
    match = re.search(r"_patch(\d+)", encoder_name)
    if match is None:  # pragma: no cover - every supported name has it
        msg = f"Cannot read the patch size from encoder_name {encoder_name!r}"
        raise ValueError(msg)
    return int(match.group(1))


def dino_architecture(encoder_name: str) -> dict:
    """Embedding size, head count, depth, patch size, prefix tokens and default target layers of an encoder.

    Read from the timm model built on the meta device (no memory, no weights), so DINOv3 sizes such as
    ``small_plus`` or ``huge_plus`` need no table.

    Raises:
        ValueError: If the name is not a timm DINOv2/DINOv3 ViT.
    """
    patch_size = encoder_patch_size(encoder_name)
    vit = timm.create_model(encoder_name, pretrained=False, device="meta")
    depth = len(vit.blocks)
    return {
        "embed_dim": vit.embed_dim,
        "num_heads": vit.blocks[0].attn.num_heads,
        "depth": depth,
        "patch_size": patch_size,
        "num_prefix_tokens": vit.num_prefix_tokens,
        "target_layers": default_target_layers(depth),
    }


def default_target_layers(depth: int) -> list[int]:
    """Dinomaly's eight target blocks, scaled to the encoder depth: 2..9 for 12 blocks, 4, 6, .., 18 for 24."""
    return sorted({min(depth - 1, round(depth * k / 12)) for k in range(2, 10)})


def build_encoder(
    encoder_name: str,
    encoder_weights: str | Path | None,
    target_layers: list[int] | None = None,
) -> TimmFeatureExtractor:
    """Build the frozen token encoder and load its weights.

    The blocks after the deepest target layer (and the final norm/head) are pruned with timm's
    ``prune_intermediate_layers``: they never contribute to CRR's features, so running them would
    only cost time (2 of 12 blocks for ViT-B).

    Args:
        encoder_name: timm DINOv2 or DINOv3 ViT name (see :func:`supported_encoders`).
        encoder_weights: ``"pretrained"`` (download with timm), a path to a local checkpoint
            (timm ``.safetensors``/``.pth``, or an original ``dinov2_vit*_reg4_pretrain.pth`` / DINOv3
            checkpoint, which timm's filter converts), or ``None`` for random initialisation.
        target_layers: Block indices whose tokens are returned; ``None``: :func:`default_target_layers`.

    Returns:
        A ``TimmFeatureExtractor`` in ``NLC`` mode returning ``[cls, registers, patches]`` tokens, with
        ``target_layers``, ``embed_dim``, ``num_heads``, ``patch_size`` and ``num_prefix_tokens`` set.

    Raises:
        ValueError: If the name is not supported or a target layer does not exist.
        FileNotFoundError: If a local weights path does not exist.
        RuntimeError: If the download or the loading of a file fails.
    """
    patch_size = encoder_patch_size(encoder_name)
    download = isinstance(encoder_weights, str) and encoder_weights == PRETRAINED
    local_path = None if download or encoder_weights is None else Path(encoder_weights).expanduser()
    if local_path is not None and not local_path.is_file():
        msg = (
            f"Encoder weights file not found: '{local_path}'. Pass encoder_weights='pretrained' to download "
            f"{hub_id(encoder_name)}, a path to an existing checkpoint, or None for random initialisation."
        )
        raise FileNotFoundError(msg)

    depth = dino_architecture(encoder_name)["depth"]
    target_layers = list(target_layers) if target_layers is not None else default_target_layers(depth)
    if not target_layers or any(not 0 <= index < depth for index in target_layers):
        msg = f"target_layers={target_layers} must be block indices in [0, {depth - 1}] of '{encoder_name}'"
        raise ValueError(msg)
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
    if encoder.patch_size != patch_size:  # pragma: no cover - guards against a timm renaming
        msg = f"'{encoder_name}' has patch size {encoder.patch_size}, not {patch_size} as its name says"
        raise ValueError(msg)
    if local_path is not None:
        _load_local_weights(vit, local_path)
    vit.prune_intermediate_layers(indices=list(target_layers), prune_norm=True, prune_head=True)
    use_official_pos_embed(vit)  # DINOv2: Meta's position-table resize (offset 0.1, no antialias); DINOv3: as is
    for param in encoder.parameters():
        param.requires_grad = False
    encoder.target_layers = target_layers
    encoder.embed_dim = vit.embed_dim
    encoder.num_heads = vit.blocks[0].attn.num_heads
    return encoder.eval()


def timm_checkpoint_filter(vit: torch.nn.Module) -> Callable[[dict, torch.nn.Module], dict]:
    """The ``checkpoint_filter_fn`` of the timm module that defines ``vit``'s model class (or a base of it).

    Looked up along the class hierarchy because CRR's DINOv2 encoder is a subclass of timm's
    ``VisionTransformer`` defined outside timm (:mod:`.pos_embed`).
    """
    for cls in type(vit).__mro__:
        module = sys.modules.get(cls.__module__)
        if module is not None and hasattr(module, "checkpoint_filter_fn"):
            return module.checkpoint_filter_fn
    msg = f"No timm checkpoint converter found for '{type(vit).__name__}'"  # pragma: no cover
    raise RuntimeError(msg)  # pragma: no cover


def _load_local_weights(vit: torch.nn.Module, path: Path) -> None:
    """Load a timm- or original-format checkpoint strictly into ``vit``.

    The ``checkpoint_filter_fn`` of the model's timm module (``vision_transformer`` for DINOv2, ``eva``
    for DINOv3) converts the original key names (``register_tokens``, ``ls1.gamma``, ...) and resamples
    position embeddings where needed.
    """
    from timm.models import load_state_dict

    checkpoint_filter_fn = timm_checkpoint_filter(vit)
    try:
        state_dict = load_state_dict(str(path), use_ema=False)
        state_dict = checkpoint_filter_fn(state_dict, vit)
        vit.load_state_dict(state_dict, strict=True)
    except Exception as exc:
        msg = f"Could not load encoder weights from '{path}' into '{type(vit).__name__}': {exc}"
        raise RuntimeError(msg) from exc
    logger.info("Loaded encoder weights from %s", path)
