# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Give an exported model a user's raw image (any file size) exactly as the trained model's pre-processor does.

Why this exists: anomalib exports the pre-processor's *exportable* transform, in which every ``Resize`` has its
antialiasing switched off (ONNX could not express it), and an IR exported with ``input_size`` takes only that
size. On raw 800x600 ``tire`` files (MFRNet, 256²) that made every deployment route disagree with
``Engine.predict``: ``OpenVINOInferencer`` refused the tensor, Model API resized ``uint8`` pixels with OpenCV
(scores up to 0.22 away), and ``TorchInferencer`` or a dynamic-size IR resized without antialiasing.

The fix keeps the graph as anomalib exports it and moves only the first resize out of it: the raw image is resized
in torch by the pre-processor's own first ``Resize`` (its size, interpolation and antialiasing, as in training and
``Engine.predict``). The graph then gets an image at exactly that size, where its own non-antialiased ``Resize``
is the identity, and the rest of the chain (centre crop, normalisation) runs in the graph as before.

The ``Resize`` is stored in the IR's ``rt_info`` (section ``anomalib``, name ``raw_resize``, JSON) by the plugin's
export, so a deployment without torch checkpoints still knows it. An IR without that entry but with a static input
size gets an antialiased bilinear resize to that size (what anomalib's pre-processors use).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torchvision.transforms.v2 import InterpolationMode, Resize

#: Where the pre-processor's first resize is written in an IR's ``rt_info``.
RAW_RESIZE_KEY = ["anomalib", "raw_resize"]


def leaf_transforms(transform: Any) -> Iterator[Any]:
    """Leaf transforms of a (nested) ``Compose``, in order (duck-typed: any object with a ``transforms`` list)."""
    if transform is None:
        return
    inner = getattr(transform, "transforms", None)
    if isinstance(inner, (list, tuple)):
        for item in inner:
            yield from leaf_transforms(item)
    else:
        yield transform


def first_resize(model: Any) -> Resize | None:
    """The first ``Resize`` of the model's pre-processor (its *training* transform, antialiasing as configured)."""
    pre_processor = getattr(model, "pre_processor", None)
    for transform in leaf_transforms(getattr(pre_processor, "transform", None)):
        if isinstance(transform, Resize):
            return transform
    return None


def resize_spec(resize: Resize) -> dict[str, Any]:
    """A JSON-able description of a ``Resize``: what :func:`resize_from_spec` rebuilds it from."""
    size = resize.size
    return {
        "size": list(size) if isinstance(size, (list, tuple)) else size,
        "max_size": resize.max_size,
        "interpolation": InterpolationMode(resize.interpolation).value,
        "antialias": bool(resize.antialias),
    }


def resize_from_spec(spec: dict[str, Any] | str) -> Resize:
    """The ``Resize`` a :func:`resize_spec` (or its JSON text) describes."""
    if isinstance(spec, str):
        spec = json.loads(spec)
    return Resize(
        size=spec["size"],
        max_size=spec.get("max_size"),
        interpolation=InterpolationMode(spec.get("interpolation", "bilinear")),
        antialias=bool(spec.get("antialias", True)),
    )


def static_input_size(ov_model: Any) -> tuple[int, int] | None:
    """``(height, width)`` of an OpenVINO model's image input when both are static, else ``None``."""
    shape = ov_model.input(0).get_partial_shape()
    if shape.rank.is_dynamic or len(shape) != 4 or not (shape[2].is_static and shape[3].is_static):
        return None
    return int(shape[2].get_length()), int(shape[3].get_length())


def ir_raw_resize(ov_model: Any) -> Resize | None:
    """The resize for raw images of an IR: its stored ``raw_resize``, else antialiased bilinear to its static size."""
    if ov_model.has_rt_info(RAW_RESIZE_KEY):
        return resize_from_spec(ov_model.get_rt_info(RAW_RESIZE_KEY).astype(str))
    size = static_input_size(ov_model)
    return Resize(size, antialias=True) if size is not None else None


def fit_raw_image(image: torch.Tensor | np.ndarray, resize: Resize | None) -> torch.Tensor:
    """A raw image as the exported graph's ``(N, C, h, w)`` float32 input, resized as in training.

    Args:
        image: ``(C, H, W)`` or ``(N, C, H, W)`` float in [0, 1], or an ``(H, W, C)`` array (``uint8`` or [0, 1]).
        resize: The pre-processor's first ``Resize`` (:func:`first_resize`, :func:`ir_raw_resize`); ``None`` keeps
            the size.

    Returns:
        torch.Tensor: The resized batch, clamped to [0, 1]: the antialiased kernel overshoots by ~1e-7, and anomalib's
        ``OpenVINOInferencer`` divides an input whose maximum exceeds 1 by 255.
    """
    if isinstance(image, np.ndarray):
        array = image.astype(np.float32) / (255.0 if image.dtype == np.uint8 or image.max() > 1.0 else 1.0)
        image = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1) if array.shape[-1] in (1, 3) else array))
    batch = image.float()
    if batch.dim() == 3:
        batch = batch.unsqueeze(0)
    if resize is not None:
        batch = resize(batch)
    return batch.clamp(0.0, 1.0)


def fit_to_input(image: torch.Tensor, size: tuple[int, int] | None) -> np.ndarray:
    """A ``(C, H, W)`` image in [0, 1] as a static IR's ``(1, C, h, w)`` float32 input (antialiased bilinear)."""
    resize = Resize(size, antialias=True) if size is not None else None
    return fit_raw_image(image, resize).numpy()


__all__ = [
    "RAW_RESIZE_KEY",
    "first_resize",
    "fit_raw_image",
    "fit_to_input",
    "ir_raw_resize",
    "leaf_transforms",
    "resize_from_spec",
    "resize_spec",
    "static_input_size",
]
