# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Loading MFRNet checkpoints of every release: what old hyper-parameters meant, what must match, what to fill in.

Three releases wrote checkpoints: the first (no ``residual`` hyper-parameter: stride-4 layers, random partitions,
plain restorer), the one before the shifted test grid, and the one before the normal envelope. Each loads and scores
as it did when it was written. The Lightning module calls these functions from ``load_from_checkpoint`` and
``on_load_checkpoint``; they work on the checkpoint dictionary and the module's hyper-parameters and torch model.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch

from .components import DEFAULT_LAYERS, LEGACY_LAYERS, ImageScore
from .torch_model import MFRNetModel, TestGrid

logger = logging.getLogger(__name__)

# Hyper-parameters that shape the state dict or the scores. A checkpoint whose values differ from the model it is
# loaded into fails with a message naming them, instead of PyTorch's list of mismatched tensors.
ARCHITECTURE_KEYS = (
    "backbone",
    "layers",
    "feature_stride",
    "stem_dim",
    "embed_dim",
    "depth",
    "num_heads",
    "mlp_ratio",
    "patch_size",
    "residual",
    "mask_cell_size",
    "whiten_residual",
)

# The first release (no ``residual`` hyper-parameter in its checkpoints): what its hyper-parameters meant.
LEGACY_HPARAMS: dict[str, Any] = {
    "partition": "random",
    "test_grid": "aligned",
    "residual": False,
    "map_norm": "none",
    "cache_features": False,
    "image_score": ImageScore.MAP.value,
}

# Buffers fitted after training that older checkpoints lack; the model's unfitted values stand in for them.
FITTED_BUFFERS = ("map_scale", "map_stats_ready", "residual_whitener", "normal_envelope.envelope")


def legacy_overrides(hparams: dict[str, Any]) -> dict[str, Any]:
    """What an older checkpoint's hyper-parameters meant (empty for current checkpoints).

    The first release had no ``residual`` hyper-parameter; its ``layers=None`` meant the stride-4 layer lists and
    ``feature_stride`` was always set explicitly. Checkpoints without ``test_grid`` scored with the aligned grid, and
    checkpoints without ``image_score`` scored images from the map.
    """
    if not hparams:
        return {}
    if "residual" in hparams:
        overrides: dict[str, Any] = {}
        if "test_grid" not in hparams:
            overrides["test_grid"] = TestGrid.ALIGNED.value  # before the shifted grid
        if "image_score" not in hparams:
            overrides["image_score"] = ImageScore.MAP.value  # before the normal envelope
        return overrides
    overrides = dict(LEGACY_HPARAMS)
    if hparams.get("layers") is None:
        overrides["layers"] = list(LEGACY_LAYERS.get(hparams.get("backbone", "vgg16"), ()))
    return overrides


def resolved_hparam(key: str, hparams: dict[str, Any]) -> Any:
    """A hyper-parameter's effective value (``None`` layers resolved, sequences as tuples)."""
    value = hparams.get(key)
    if key == "layers" and value is None:
        return tuple(DEFAULT_LAYERS.get(hparams.get("backbone", "tf_efficientnet_lite0"), ()))
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(value)
    return value


def effective_hparam(key: str, model: MFRNetModel, hparams: dict[str, Any]) -> Any:
    """A built model's effective value of an architecture hyper-parameter (what its modules actually use)."""
    if key == "layers":
        return tuple(model.aggregator.layers)
    if key == "feature_stride":
        return model.aggregator.feature_stride
    if key == "mask_cell_size":
        return model.cell_sizes
    return resolved_hparam(key, hparams)


def check_architecture(saved: dict[str, Any], model: MFRNetModel, hparams: dict[str, Any]) -> None:
    """Compare a checkpoint's architecture hyper-parameters with the model it is loaded into.

    Raises:
        ValueError: Naming every hyper-parameter that differs, with both values, and how to load the checkpoint.
    """
    mismatched = []
    for key in ARCHITECTURE_KEYS:
        if key not in saved:
            continue
        theirs, ours = resolved_hparam(key, saved), effective_hparam(key, model, hparams)
        if key == "mask_cell_size" and isinstance(theirs, int):
            theirs = (theirs,)
        if theirs is None and key == "feature_stride":
            continue  # derived from the layers, which are compared
        if theirs != ours:
            mismatched.append(f"{key}: checkpoint {theirs!r}, this model {ours!r}")
    if mismatched:
        msg = (
            "The checkpoint was trained with other MFRNet hyper-parameters: " + "; ".join(mismatched) + ". "
            "Load it with MFRNet.load_from_checkpoint(path), or pass the same values (e.g. --config of the "
            "training run's config.yaml)."
        )
        raise ValueError(msg)


def adopt_checkpoint_setting(model: MFRNetModel, hparams: Any, name: str, saved: TestGrid | ImageScore) -> None:
    """Use the checkpoint's ``name`` in the torch model and the hyper-parameters (logged when it differs).

    Why the checkpoint wins: the whitener, the per-k means and the envelope were fitted under its test grid and for
    its image score; another setting would read them slightly off.
    """
    current = getattr(model, name)
    if saved is current:
        return
    logger.info(
        "MFRNet: the checkpoint was fitted with %s=%r; using it instead of %r.", name, saved.value, current.value
    )
    setattr(model, name, saved)
    hparams[name] = saved.value


def check_envelope(saved: ImageScore, model: MFRNetModel, state: dict[str, Any]) -> None:
    """Size the envelope buffer like the checkpoint's, and refuse an envelope checkpoint that lacks its envelope.

    Raises:
        ValueError: The checkpoint asks for the envelope score but holds no fitted envelope (it cannot be made up
            without the training images).
    """
    key = "model.normal_envelope.envelope"
    envelope = state.get(key)
    if isinstance(envelope, torch.Tensor):
        model.normal_envelope.resize_like(envelope)  # its size is the training grid's, not architecture
    if saved is ImageScore.ENVELOPE and (not isinstance(envelope, torch.Tensor) or envelope.numel() == 0):
        msg = (
            f"The checkpoint scores images with image_score='envelope' but holds no fitted envelope "
            f"({key!r} is missing or empty). Refit its statistics with "
            "model.compute_map_statistics(train_dataloader), or load it with image_score='map'."
        )
        raise ValueError(msg)


def migrate_checkpoint(checkpoint: dict[str, Any], model: MFRNetModel, hparams: Any) -> None:
    """Check a checkpoint against ``model`` and bring its state dict to the current layout, in place.

    Raises:
        ValueError: Architecture hyper-parameters differ, or an envelope checkpoint holds no envelope.
    """
    saved = dict(checkpoint.get("hyper_parameters", {}))
    saved.update(legacy_overrides(saved))
    check_architecture(saved, model, dict(hparams))
    if "test_grid" in saved:
        adopt_checkpoint_setting(model, hparams, "test_grid", TestGrid(saved["test_grid"]))
    state = checkpoint.get("state_dict", {})
    image_score = ImageScore(saved.get("image_score", ImageScore.ENVELOPE))
    check_envelope(image_score, model, state)
    adopt_checkpoint_setting(model, hparams, "image_score", image_score)
    for name in FITTED_BUFFERS:
        state.setdefault(f"model.{name}", model.get_buffer(name).detach().clone())
    # Before the whitened residual, one scale per k divided the summed terms; the same scale on both terms gives the
    # same map, and the identity whitener is the plain MSE, so such checkpoints score unchanged.
    if state["model.map_scale"].dim() == 1:
        state["model.map_scale"] = state["model.map_scale"].unsqueeze(-1).repeat(1, 2)
