# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""The separable Gaussian blur computes anomalib's 2-D blur, with the same buffers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


def test_separable_blurs_swaps_large_blurs_for_the_block_only() -> None:
    """Large anomalib blurs compute separably inside the block and get their class back after it, even on error."""
    from torch import nn

    from anomalib_crr.models.components import separable_blurs

    model = nn.ModuleDict(
        {
            "map_blur": GaussianBlur2d(sigma=4.0, channels=1),  # k = 33
            "small_blur": GaussianBlur2d(sigma=4.0, channels=1, kernel_size=5),  # CRR's
            "edited_blur": GaussianBlur2d(sigma=4.0, channels=1),
        }
    )
    # A kernel that is no outer product (a state dict could bring one) must keep its 2-D convolution.
    model["edited_blur"].kernel = model["edited_blur"].kernel.clone()
    model["edited_blur"].kernel[..., 0, 0] += 0.01
    images = torch.rand(2, 1, 48, 40)
    expected = model["map_blur"](images)
    with separable_blurs(model) as swapped:
        assert swapped == ["map_blur"]
        assert type(model["map_blur"]) is SeparableGaussianBlur2d
        assert type(model["small_blur"]) is GaussianBlur2d
        assert type(model["edited_blur"]) is GaussianBlur2d
        torch.testing.assert_close(model["map_blur"](images), expected, rtol=1e-5, atol=1e-6)
    assert type(model["map_blur"]) is GaussianBlur2d
    with pytest.raises(RuntimeError, match="export failed"), separable_blurs(model):
        raise RuntimeError("export failed")
    assert type(model["map_blur"]) is GaussianBlur2d


def test_export_writes_anomalib_map_blur_as_two_1d_passes(tmp_path: Path) -> None:
    """``anomalib-crr export``'s mixin on anomalib's PaDiM: 1-D blur convolutions in the ONNX graph, same outputs."""
    import onnx
    from anomalib.models import Padim

    from anomalib_crr.deploy.export import QuantizedOpenVinoExport

    from .helpers import onnx_outputs

    torch.manual_seed(0)
    model = Padim(
        backbone="resnet18",
        layers=["layer1", "layer2"],
        pre_trained=False,
        n_features=20,
        pre_processor=Padim.configure_pre_processor(image_size=(64, 64)),
        post_processor=False,
    )
    model.__class__ = type("Padim", (QuantizedOpenVinoExport, Padim), {"__module__": Padim.__module__})
    positions = 16 * 16  # layer1's grid at 64 px
    model.model.gaussian.mean = torch.randn(20, positions)
    model.model.gaussian.inv_covariance = torch.eye(20).expand(positions, 20, 20).clone()
    model.eval()
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(images).anomaly_map.numpy()

    onnx_path = model.to_onnx(tmp_path, input_size=(64, 64))

    assert type(model.model.anomaly_map_generator.blur) is GaussianBlur2d
    graph = onnx.load(onnx_path).graph
    shapes = {tensor.name: tuple(tensor.dims) for tensor in graph.initializer}
    for node in graph.node:  # torch's exporter folds the 1-D factors into Constant nodes
        values = [attr.t for attr in node.attribute if attr.name == "value"]
        if node.op_type == "Constant" and values:
            shapes[node.output[0]] = tuple(values[0].dims)
    kernels = [shapes.get(node.input[1]) for node in graph.node if node.op_type == "Conv"]
    assert (1, 1, 33, 1) in kernels
    assert (1, 1, 1, 33) in kernels
    assert (1, 1, 33, 33) not in kernels
    actual = onnx_outputs(onnx_path, images)["anomaly_map"]
    assert float(expected.std()) > 0.01
    np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-5 * float(np.abs(expected).max()))
