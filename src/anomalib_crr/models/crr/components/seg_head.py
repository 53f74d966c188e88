# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Segmentation head of CRR: a DRAEM-style reconstructive decoder on encoder/decoder feature products.

The input is ``S = concat_g[-norm(E_g) * norm(D_g)]`` (DeSTSeg's idea): per group the channel sum of
S is the negative cosine similarity, so S carries the reconstruction discrepancy channel by channel.
Three ×2 upsampling stages and a final upsampling to a *fixed* output size (256² by default)
produce two-class logits; channel 1 is the anomaly class.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=True),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class _UpBlock(nn.Module):
    """Bilinear upsampling (×2, or to a fixed size) followed by conv-BN-ReLU."""

    def __init__(self, channels: int, size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.size = size
        self.conv = nn.Sequential(*_conv_bn_relu(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=True)
        return self.conv(x)


class CrrSegHead(nn.Module):
    """Segmentation network of CRR (``DecoderReconstructive(base_width, out_channels=2)`` in the official code).

    Args:
        in_channels: Channels of the input ``S`` (groups × embedding size, 1536 for ViT-B).
        base_width: Width of the last stage; earlier stages use 4×, 2× and 1× of it.
        out_channels: Number of classes (2: normal, anomalous).
        output_size: Fixed spatial size of the logits.
    """

    def __init__(
        self,
        in_channels: int = 1536,
        base_width: int = 192,
        out_channels: int = 2,
        output_size: int | tuple[int, int] = 256,
    ) -> None:
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.output_size = tuple(output_size)
        widths = [in_channels, base_width * 4, base_width * 2, base_width, max(base_width // 4, 1)]
        stages: list[nn.Module] = []
        for stage, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
            up_size = self.output_size if stage == len(widths) - 2 else None
            stages.append(_UpBlock(width_in, size=up_size))
            stages.append(nn.Sequential(*_conv_bn_relu(width_in, width_in), *_conv_bn_relu(width_in, width_out)))
        self.stages = nn.Sequential(*stages)
        self.fin_out = nn.Conv2d(widths[-1], out_channels, kernel_size=3, padding=1, bias=True)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Official init: conv weights N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    def forward(self, seg_input: torch.Tensor) -> torch.Tensor:
        """Map ``S`` (B, in_channels, h, w) to logits (B, out_channels, *output_size)."""
        return self.fin_out(self.stages(seg_input))
