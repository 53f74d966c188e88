# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Segmentation head of CRR: a DRAEM-style reconstructive decoder on encoder/decoder feature products.

The input is ``S = concat_g[-norm(E_g) * norm(D_g)]`` (DeSTSeg's idea): per group the channel sum of
S is the negative cosine similarity, so S carries the reconstruction discrepancy channel by channel.
Three ×2 upsampling stages and a final upsampling to a *fixed* output size (256² by default)
produce two-class logits; channel 1 is the anomaly class.

The head costs about five times the rest of CRR at inference (≈ 548 GMACs at ViT-B/392), so its eval
path computes the same function with less work:

* **BatchNorm folded into the convolutions.** In eval mode BatchNorm is an affine map per channel, so
  each conv-BN pair becomes one convolution (``torch.nn.utils.fusion.fuse_conv_bn_weights``). The folded
  weights are cached in non-persistent buffers: the checkpoint keeps the unfolded parameters and running
  statistics, training mode never sees the cache, and the cache is rebuilt whenever a source tensor
  changed (training step, ``load_state_dict``, ``.to()``).
* **Upsample-then-convolve at the low resolution.** Bilinear upsampling acts on each channel alike and
  is linear, so ``conv3x3(up(x)) = Σ_taps shift_tap(up(W_tap · x))``: the channel mixing of the nine
  taps runs as one 1×1 convolution on the small input (¼ of the MACs for a ×2 stage), and only the
  per-channel upsampling and shifted sums run at the large size. Exact up to float rounding.
* Optional channels-last memory format (``channels_last``), which oneDNN prefers on some CPUs/GPUs.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

# A stage's convolution runs at the low resolution when the upsampling grows the area at least this much.
LOW_RES_CONV_MIN_AREA_RATIO = 2.0


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

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size after the upsampling."""
        return self.size if self.size is not None else (2 * height, 2 * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=self.output_size(*x.shape[-2:]), mode="bilinear", align_corners=True)
        return self.conv(x)


def upsample_conv3x3(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``conv2d(interpolate(x, size, bilinear, align_corners=True), weight, bias, padding=1)``, MACs at x's size.

    For every tap ``(i, j)`` of the 3×3 kernel, ``y_ij = W[:, :, i, j] · x`` is a 1×1 convolution at the
    input resolution; upsampling commutes with it (it is linear and the same for every channel). The
    output is ``bias + Σ_ij shift_ij(up(y_ij))``, where the shift by ``(i − 1, j − 1)`` with zero fill
    reproduces the convolution's zero padding. Upsampling is separable, so for each kernel row the three
    maps are upsampled along the width, summed over ``j`` and only then upsampled along the height.

    Args:
        x: Input (B, C, h, w).
        weight: 3×3 kernel (O, C, 3, 3).
        bias: Bias (O,).
        size: Upsampled size (H, W).

    Returns:
        The convolution of the upsampled input, (B, O, H, W).
    """
    batch, _, height, _ = x.shape
    out_channels = weight.shape[0]
    out_height, out_width = size
    out = bias.view(1, -1, 1, 1)
    for row in range(3):  # one kernel row at a time keeps the large intermediates at 3 (not 9) maps
        # (O, C, 3) -> (3 * O, C, 1, 1), ordered (column tap, output channel).
        taps = F.conv2d(x, weight[:, :, row, :].permute(2, 0, 1).reshape(3 * out_channels, -1, 1, 1))
        taps = F.interpolate(taps, size=(height, out_width), mode="bilinear", align_corners=True)
        taps = F.pad(taps.view(batch, 3, out_channels, height, out_width), (1, 1))
        summed = taps[:, 0, ..., 0:out_width] + taps[:, 1, ..., 1 : out_width + 1] + taps[:, 2, ..., 2:]
        summed = F.interpolate(summed, size=size, mode="bilinear", align_corners=True)
        # Output row p reads upsampled row p + row - 1 (zero outside), as the padded convolution does.
        summed = F.pad(summed, (0, 0, 1, 1))[:, :, row : row + out_height]
        out = out + summed
    return out


class CrrSegHead(nn.Module):
    """Segmentation network of CRR (``DecoderReconstructive(base_width, out_channels=2)`` in the official code).

    Args:
        in_channels: Channels of the input ``S`` (groups × embedding size, 1536 for ViT-B).
        base_width: Width of the last stage; earlier stages use 4×, 2× and 1× of it.
        out_channels: Number of classes (2: normal, anomalous).
        output_size: Fixed spatial size of the logits.
        channels_last: Run the eval path in channels-last memory format.
        low_res_conv: Run the convolution after each ×2 upsampling at the low resolution in eval mode
            (same function, fewer MACs); ``False`` upsamples first, as in training.
    """

    def __init__(
        self,
        in_channels: int = 1536,
        base_width: int = 192,
        out_channels: int = 2,
        output_size: int | tuple[int, int] = 256,
        channels_last: bool = False,
        low_res_conv: bool = True,
    ) -> None:
        super().__init__()
        if isinstance(output_size, int):
            output_size = (output_size, output_size)
        self.output_size = tuple(output_size)
        self.channels_last = channels_last
        self.low_res_conv = low_res_conv
        widths = [in_channels, base_width * 4, base_width * 2, base_width, max(base_width // 4, 1)]
        stages: list[nn.Module] = []
        for stage, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
            up_size = self.output_size if stage == len(widths) - 2 else None
            stages.append(_UpBlock(width_in, size=up_size))
            stages.append(nn.Sequential(*_conv_bn_relu(width_in, width_in), *_conv_bn_relu(width_in, width_out)))
        self.stages = nn.Sequential(*stages)
        self.fin_out = nn.Conv2d(widths[-1], out_channels, kernel_size=3, padding=1, bias=True)
        self.reset_parameters()
        # conv-BN pairs in execution order (the eval path folds each into one convolution).
        self._pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = [
            (module[index], module[index + 1])
            for module in (stage.conv if isinstance(stage, _UpBlock) else stage for stage in self.stages)
            for index in range(0, len(module), 3)
        ]
        for index in range(len(self._pairs)):
            self.register_buffer(f"folded_weight_{index}", None, persistent=False)
            self.register_buffer(f"folded_bias_{index}", None, persistent=False)
        self._fold_key: tuple | None = None

    def reset_parameters(self) -> None:
        """Official init: conv weights N(0, 0.02); BatchNorm weight N(1, 0.02), bias 0."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0.0, 0.02)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.normal_(module.weight, 1.0, 0.02)
                nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ folding
    def _sources(self) -> list[torch.Tensor]:
        return [
            tensor
            for conv, bn in self._pairs
            for tensor in (conv.weight, conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        ]

    def _source_key(self) -> tuple:
        """Identity and in-place version of every folded tensor: changes after a step, a load or a ``.to()``."""
        return tuple((tensor.data_ptr(), tensor._version, tensor.dtype) for tensor in self._sources())

    def folded_parameters(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Weight and bias of each conv-BN pair with the BatchNorm (running statistics) folded in."""
        folded = []
        with torch.no_grad():
            for conv, bn in self._pairs:
                weight, bias = fuse_conv_bn_weights(
                    conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias
                )
                folded.append((weight.detach(), bias.detach()))
        return folded

    def _cached_folded_parameters(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The folded parameters, refolded when a source tensor changed since the last fold."""
        if torch.compiler.is_exporting():
            # The export probe runs an eager forward first, so the cache is normally filled; fold in-graph if not.
            if self._fold_key is None:
                return self.folded_parameters()
        elif self._fold_key != (key := self._source_key()):
            with torch.inference_mode(False):
                for index, (weight, bias) in enumerate(self.folded_parameters()):
                    setattr(self, f"folded_weight_{index}", weight)
                    setattr(self, f"folded_bias_{index}", bias)
            self._fold_key = key
        return [
            (getattr(self, f"folded_weight_{index}"), getattr(self, f"folded_bias_{index}"))
            for index in range(len(self._pairs))
        ]

    def train(self, mode: bool = True) -> CrrSegHead:
        """Switch mode; leaving eval drops the folded cache (training uses the unfolded conv + BatchNorm)."""
        if mode:
            self._drop_folded()
        return super().train(mode)

    def _drop_folded(self) -> None:
        for index in range(len(self._pairs)):
            setattr(self, f"folded_weight_{index}", None)
            setattr(self, f"folded_bias_{index}", None)
        self._fold_key = None

    def __getstate__(self) -> dict:
        """Pickle (e.g. anomalib's torch export) without the folded cache; it is rebuilt on the next forward."""
        state = self.__dict__.copy()
        state["_buffers"] = {
            name: None if name.startswith("folded_") else value for name, value in self._buffers.items()
        }
        state["_fold_key"] = None
        return state

    # ------------------------------------------------------------------ forward
    def forward(self, seg_input: torch.Tensor) -> torch.Tensor:
        """Map ``S`` (B, in_channels, h, w) to logits (B, out_channels, *output_size)."""
        if self.training:
            return self.forward_unfolded(seg_input)
        return self.forward_folded(seg_input)

    def forward_unfolded(self, seg_input: torch.Tensor) -> torch.Tensor:
        """Module by module: upsampling, convolution, BatchNorm (batch or running statistics), ReLU."""
        return self.fin_out(self.stages(seg_input))

    def forward_folded(self, seg_input: torch.Tensor) -> torch.Tensor:
        """Eval path: BatchNorm folded into the convolutions, upsampling convolutions at the low resolution."""
        folded = iter(self._cached_folded_parameters())
        x = seg_input.contiguous(memory_format=torch.channels_last) if self.channels_last else seg_input
        for stage in self.stages:
            if isinstance(stage, _UpBlock):
                weight, bias = next(folded)
                size = stage.output_size(*x.shape[-2:])
                ratio = size[0] * size[1] / (x.shape[-2] * x.shape[-1])
                if self.low_res_conv and ratio >= LOW_RES_CONV_MIN_AREA_RATIO:
                    x = upsample_conv3x3(x, weight, bias, size)
                    if self.channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                else:
                    x = F.conv2d(
                        F.interpolate(x, size=size, mode="bilinear", align_corners=True), weight, bias, padding=1
                    )
                x = F.relu(x, inplace=True)
            else:
                for _ in range(len(stage) // 3):
                    weight, bias = next(folded)
                    x = F.relu(F.conv2d(x, weight, bias, padding=1), inplace=True)
        return self.fin_out(x).contiguous()


def seg_head_macs(in_channels: int, base_width: int, grid: tuple[int, int], output_size: int = 256) -> dict[str, int]:
    """Multiply-accumulates of one image through the head, as trained and on the eval path (low-res convs).

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` on meta tensors (convolutions only; the
    interpolations, additions and activations are memory-bound and uncounted). FLOPs = 2 × MACs.

    Args:
        in_channels: Channels of ``S``.
        base_width: ``seg_base_width``.
        grid: Patch grid of the encoder (28×28 for a 392² crop at patch 14).
        output_size: ``seg_output_size``.

    Returns:
        ``{"train": ..., "eval": ...}`` MACs per image.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counts = {}
    with torch.device("meta"):
        head = CrrSegHead(in_channels=in_channels, base_width=base_width, output_size=output_size)
        seg_input = torch.empty(1, in_channels, *grid)
    for name, mode in (("train", True), ("eval", False)):
        head.train(mode)
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            head(seg_input) if mode else _meta_folded_forward(head, seg_input)
        counts[name] = counter.get_total_flops() // 2
    return counts


def _meta_folded_forward(head: CrrSegHead, seg_input: torch.Tensor) -> torch.Tensor:
    """The eval path on meta tensors (the fold cache keys on data pointers, which meta tensors lack)."""
    folded = head.folded_parameters()
    head._cached_folded_parameters = lambda: folded  # type: ignore[method-assign]
    try:
        return head.forward_folded(seg_input)
    finally:
        del head._cached_folded_parameters
