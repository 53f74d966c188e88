# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""MFRNet's image score: how far an image's discrepancy rises above what normal images reach at each position.

Why beside the map and not from it: the map's maximum ranks images at chance on ``tire`` (issue 21) because the
largest restoration errors sit on normal structure that no context predicts (the tread's specular highlight, tile
edges), in every image. Subtracting each position's maximum over the normal training images (the *normal
envelope*) removes what every normal image does there, so the top of the margin is what this image does that no
normal image did. The map itself keeps its global scale, because on ``tire`` that location prior is what localises
(model README, W25); only the score reads the envelope.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

import torch
from anomalib.models.components import GaussianBlur2d
from torch import nn


class ImageScore(str, Enum):
    """Where MFRNet's image score comes from."""

    ENVELOPE = "envelope"  # top-k mean of the margin over the normal envelope (default)
    MAP = "map"  # read from the smoothed anomaly map with ``score_mode`` (releases before the envelope)


class NormalEnvelope(nn.Module):
    """Per-position maximum of the smoothed discrepancy over normal images, and the score of the margin above it.

    The envelope is a buffer of the feature grid's size, empty until fitted; it is saved in the checkpoint and
    exported as a constant. A fitted envelope scores only inputs of its own size: another size raises (no
    broadcast, no interpolation of a statistic measured per position).

    Args:
        sigma: σ of the Gaussian applied to the discrepancy before the envelope is taken and compared, in feature
            positions (0: none). A little smoothing keeps a single noisy position from setting the envelope.
        top_fraction: The score is the mean of this fraction of the largest margins (at least one position).
    """

    def __init__(self, sigma: float = 0.5, top_fraction: float = 0.01) -> None:
        super().__init__()
        if sigma < 0:
            msg = f"envelope_sigma must be >= 0, got {sigma}"
            raise ValueError(msg)
        if not 0 < top_fraction <= 1:
            msg = f"envelope_top_fraction must be in (0, 1], got {top_fraction}"
            raise ValueError(msg)
        self.top_fraction = top_fraction
        self.blur: nn.Module = nn.Identity()
        if sigma > 0:
            kernel_size = 2 * int(4.0 * sigma + 0.5) + 1
            self.blur = GaussianBlur2d(sigma=(sigma, sigma), channels=1, kernel_size=(kernel_size, kernel_size))
        self.register_buffer("envelope", torch.zeros(0, 0))

    @property
    def fitted(self) -> bool:
        """Whether an envelope has been computed (or loaded)."""
        return self.envelope.numel() > 0

    def smooth(self, discrepancy: torch.Tensor) -> torch.Tensor:
        """``(B, h, w)`` → the same, Gaussian-smoothed (reflect padding)."""
        return self.blur(discrepancy.unsqueeze(1)).squeeze(1)

    @torch.no_grad()
    def set_envelope(self, maximum: torch.Tensor) -> None:
        """Store the per-position maximum ``(h, w)`` of the smoothed training discrepancies."""
        self.envelope = maximum.detach().to(self.envelope.device, torch.float32).clone()

    def check_size(self, feature_size: tuple[int, int]) -> None:
        """Refuse a discrepancy whose grid is not the envelope's (the statistic is per position).

        Raises:
            ValueError: Naming both sizes and how to get an envelope for the new one.
        """
        fitted_size = (self.envelope.shape[0], self.envelope.shape[1])
        if self.fitted and tuple(feature_size) != fitted_size:
            msg = (
                f"MFRNet's image score compares each feature position with its maximum on the training images, "
                f"fitted on a {fitted_size[0]}x{fitted_size[1]} feature grid; this input gives "
                f"{feature_size[0]}x{feature_size[1]}. Feed images of the training size (the model's pre-processor "
                "resizes to it), refit the statistics at the new size (model.compute_map_statistics(train_loader) "
                "with the new pre-processor), or use image_score='map'."
            )
            raise ValueError(msg)

    def forward(self, discrepancy: torch.Tensor) -> torch.Tensor:
        """Image scores ``(B,)``: mean of the top ``top_fraction`` of ``smooth(d) − envelope``.

        Before fitting (no envelope), the score is the same top-k mean of the smoothed discrepancy itself.
        """
        smoothed = self.smooth(discrepancy)
        self.check_size((smoothed.shape[-2], smoothed.shape[-1]))
        margin = smoothed - self.envelope.to(smoothed.dtype) if self.fitted else smoothed
        flat = margin.flatten(1)
        count = max(1, round(flat.shape[1] * self.top_fraction))
        return flat.topk(count, dim=1).values.mean(dim=1)

    def resize_like(self, saved: torch.Tensor) -> None:
        """Give the buffer a saved envelope's shape before loading it (its size is the training grid's)."""
        if saved.shape != self.envelope.shape:
            self.envelope = torch.zeros(saved.shape, dtype=self.envelope.dtype, device=self.envelope.device)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        """Take the saved envelope's size (it depends on the training image size, not on the architecture)."""
        saved = state_dict.get(f"{prefix}envelope")
        if isinstance(saved, torch.Tensor):
            self.resize_like(saved)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
