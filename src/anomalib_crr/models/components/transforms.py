# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Inspect a pre-processor's transform chain, so a model can reject inputs it cannot use at build time."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torchvision.transforms.v2 import CenterCrop, Compose, Resize, Transform


def flatten_transforms(transform: Transform | None) -> Iterator[Transform]:
    """Yield the leaf transforms of a (nested) ``Compose``, in order."""
    if transform is None:
        return
    if isinstance(transform, Compose):
        for inner in transform.transforms:
            yield from flatten_transforms(inner)
    else:
        yield transform


def transform_output_size(transforms: Sequence[Transform]) -> tuple[int, int] | None:
    """Spatial size the transform chain produces, when a Resize/CenterCrop fixes it; ``None`` otherwise."""
    size: tuple[int, int] | None = None
    for transform in transforms:
        if isinstance(transform, (Resize, CenterCrop)) and transform.size is not None:
            value = transform.size
            if isinstance(value, int):
                size = (value, value) if isinstance(transform, CenterCrop) else None
            elif len(value) == 1:
                size = (value[0], value[0]) if isinstance(transform, CenterCrop) else None
            else:
                size = (int(value[0]), int(value[1]))
    return size
