# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""The separable Gaussian blur computes anomalib's 2-D blur, with the same buffers."""

from __future__ import annotations

import pytest
import torch
from anomalib.models.components import GaussianBlur2d

from anomalib_crr.models.components import SeparableGaussianBlur2d
from anomalib_crr.models.mfrnet.anomaly_map import AnomalyMapGenerator


@pytest.mark.parametrize(
    ("sigma", "kernel_size", "channels", "shape"),
    [((4.0, 4.0), (33, 33), 1, (3, 64, 80)), ((1.0, 3.0), (9, 25), 2, (2, 40, 50)), ((0.5, 0.5), (5, 5), 1, (1, 7, 9))],
)
def test_same_function_as_anomalib_blur(
    sigma: tuple[float, float], kernel_size: tuple[int, int], channels: int, shape: tuple[int, int, int]
) -> None:
    """Same output (float rounding) and interchangeable state dicts, for square and rectangular kernels."""
    torch.manual_seed(0)
    images = torch.rand(shape[0], channels, shape[1], shape[2]) * 3
    reference = GaussianBlur2d(sigma=sigma, channels=channels, kernel_size=kernel_size)
    separable = SeparableGaussianBlur2d(sigma=sigma, channels=channels, kernel_size=kernel_size)
    if channels == 1:  # anomalib's multi-channel kernel is an expanded view, which load_state_dict cannot write
        separable.load_state_dict(reference.state_dict())
    expected, actual = reference(images), separable(images)
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    # A non-uniform response: the comparison is not between two constant images.
    assert expected.std() > 0.01


def test_map_generator_blurs_separably_and_keeps_its_checkpoint_keys() -> None:
    """MFRNet's σ = 4 map blur is the separable one and loads a checkpoint written with anomalib's blur."""
    generator = AnomalyMapGenerator(sigma=4.0)
    assert isinstance(generator.blur, SeparableGaussianBlur2d)
    old = GaussianBlur2d(sigma=(4.0, 4.0), channels=1, kernel_size=(33, 33))
    generator.blur.load_state_dict(old.state_dict(), strict=True)
    discrepancy = torch.rand(2, 8, 8)
    anomaly_map, score = generator(discrepancy, (64, 64))
    upsampled = torch.nn.functional.interpolate(discrepancy.unsqueeze(1), size=(64, 64), mode="bilinear")
    torch.testing.assert_close(anomaly_map, old(upsampled), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(score, anomaly_map.flatten(1).amax(dim=1))
