# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""The training images' frozen features, kept in memory after the first epoch.

The backbone is frozen, so a training image's features only change when something random happens to the image
before the backbone. Without augmentations, every epoch after the first reuses them (the backbone is most of a
training step's cost at batch 8), and the statistics passes read them too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torchvision.transforms.v2 import CenterCrop, Resize

from anomalib_crr.models.components import flatten_transforms


def deterministic_training_images(train_dataloader: Any) -> bool:
    """Whether the training set's images are the same every epoch (only resizing and centre-cropping).

    anomalib gives a datamodule without augmentations a plain ``Resize`` to the model's input size (so images of
    different sizes batch); resizing and centre-cropping are deterministic, anything else (flips, colour jitter,
    random crops) is not.
    """
    dataset = getattr(train_dataloader, "dataset", None)
    augmentations = getattr(dataset, "augmentations", "unknown")
    if dataset is None or isinstance(augmentations, str):
        return False
    return all(isinstance(step, (Resize, CenterCrop)) for step in flatten_transforms(augmentations))


class FeatureCache:
    """Standardised features per training image path.

    Args:
        enabled: The user's ``cache_features``; the cache is used only when the training images are also fixed.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.features: dict[str, torch.Tensor] = {}

    def clear(self) -> None:
        """Forget every feature (a new fit may use another training set)."""
        self.features.clear()

    def lookup(self, paths: Sequence[str] | None, usable: bool, device: torch.device) -> torch.Tensor | None:
        """The batch's features when every one of its images is cached, else ``None``."""
        if not (self.enabled and usable) or paths is None or not all(path in self.features for path in paths):
            return None
        return torch.stack([self.features[path] for path in paths]).to(device)

    def features_of(
        self,
        images: torch.Tensor,
        paths: Sequence[str] | None,
        usable: bool,
        compute: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """The batch's features from the cache, or computed by ``compute`` and stored when caching applies."""
        if paths is not None and len(paths) != images.shape[0]:
            paths = None
        cached = self.lookup(paths, usable, images.device)
        if cached is not None:
            return cached
        features = compute(images)
        if self.enabled and usable and paths is not None:
            for path, feature in zip(paths, features, strict=True):
                self.features[path] = feature.detach()
        return features
