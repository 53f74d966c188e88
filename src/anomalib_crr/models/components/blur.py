# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""anomalib's Gaussian blur, computed as two 1-D passes.

Why: anomalib's ``GaussianBlur2d`` convolves with the full ``k × k`` kernel. A σ = 4 map blur has ``k = 33``:
1089 multiply-adds per pixel, which was 29 % of MFRNet's FP32 OpenVINO time at 256² (and 37 % after INT8
quantisation, where it stays in float). A Gaussian is the outer product of two 1-D Gaussians, so a vertical pass
and a horizontal pass over the same reflect-padded input compute the same function with ``2k`` multiply-adds.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.models.components import GaussianBlur2d
from torch import nn

# Below this kernel side the 2-D convolution is as fast as two 1-D passes (measured for k <= 5).
MIN_SEPARABLE_KERNEL_SIZE = 7


def kernel_factors(kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The vertical ``(C, 1, kh, 1)`` and horizontal ``(C, 1, 1, kw)`` factors of a ``(C, 1, kh, kw)`` kernel.

    They are its row and column sums, scaled so that their outer product is the kernel when it has rank one (a
    normalised Gaussian always does).
    """
    vertical = kernel.sum(dim=-1, keepdim=True)
    horizontal = kernel.sum(dim=-2, keepdim=True) / vertical.sum(dim=-2, keepdim=True)
    return vertical, horizontal


class SeparableGaussianBlur2d(GaussianBlur2d):
    """:class:`anomalib.models.components.GaussianBlur2d`, computed separably.

    Same arguments, same ``kernel`` buffer (checkpoints of either class load into the other), same reflect padding
    and output; only the summation order differs. Against a float64 reference (σ = 4, k = 33, 256²), the largest
    relative error is 4.5e-7 here and 3.1e-6 for the 2-D kernel. The 1-D factors are the row and column sums of the
    normalised 2-D kernel, which is their outer product. For small kernels (k ≤ 5) the 2-D convolution is as fast:
    use this class where ``k`` is large.
    """

    def forward(self, input_tensor: torch.Tensor) -> torch.Tensor:
        """Blur ``(B, C, H, W)`` with a vertical then a horizontal 1-D pass."""
        vertical, horizontal = kernel_factors(self.kernel.to(input_tensor.dtype))
        if self.padding == "same":
            input_tensor = F.pad(input_tensor, self.padding_shape, mode=self.border_type)
        output = F.conv2d(input_tensor, vertical, groups=self.channels)
        return F.conv2d(output, horizontal, groups=self.channels)


def is_separable(blur: GaussianBlur2d, rtol: float = 1e-5) -> bool:
    """Whether ``blur``'s kernel buffer is the outer product of its factors (always, unless a state dict changed it)."""
    kernel = blur.kernel.to(torch.float64)
    vertical, horizontal = kernel_factors(kernel)
    return bool(torch.allclose(vertical * horizontal, kernel, rtol=rtol, atol=rtol * float(kernel.abs().max())))


@contextmanager
def separable_blurs(module: nn.Module, min_kernel_size: int = MIN_SEPARABLE_KERNEL_SIZE) -> Iterator[list[str]]:
    """Within the block, every anomalib ``GaussianBlur2d`` in ``module`` with a large kernel blurs separably.

    Why: anomalib's models blur their maps with ``σ = 4`` (a 33 × 33 kernel) in ``GaussianBlur2d``, which computes
    1089 multiply-adds per pixel. In PaDiM's FP32 OpenVINO IR at 256² that blur was 45 % of the time. Exported
    inside this block, the graph holds two 1-D passes instead: the same function (float rounding, see
    :class:`SeparableGaussianBlur2d`) at ``2k`` multiply-adds per pixel. The modules get their class back when the
    block ends, so the torch model the user holds is unchanged; the state dict never changes.

    Args:
        module: The model; its submodules are searched.
        min_kernel_size: Blurs whose kernel is smaller than this on both sides are left as they are.

    Yields:
        The names of the swapped modules.
    """
    swapped = {
        name: blur
        for name, blur in module.named_modules()
        if type(blur) is GaussianBlur2d and max(blur.height, blur.width) >= min_kernel_size and is_separable(blur)
    }
    for blur in swapped.values():
        blur.__class__ = SeparableGaussianBlur2d
    try:
        yield list(swapped)
    finally:
        for blur in swapped.values():
            blur.__class__ = GaussianBlur2d
