# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""CRR's decoder: Dinomaly's linear-attention ViT blocks, with biased MLPs as in the official code.

The decoder restores the masked, noisy bottleneck tokens into the encoder's feature space; stage I trains it to
*reconstruct* normal tokens and to *repair* synthetic anomalies (paper Sec. 3.2). anomalib's Dinomaly block is reused
as it is except for two details the official equivalence harness measures: its MLP gets biases (Dinomaly's has none)
and its attention is :class:`~anomalib_crr.models.components.attention.StableLinearAttention` (anomalib's linear
attention with a float32 normaliser, so bf16/fp16 inference does not overflow).
"""

from __future__ import annotations

from functools import partial

from anomalib.models.image.dinomaly.components import DinomalyMLP
from anomalib.models.image.dinomaly.torch_model import DecoderViTBlock
from torch import nn

from anomalib_crr.models.components.attention import StableLinearAttention


def decoder_block(dim: int, num_heads: int) -> DecoderViTBlock:
    """One decoder block of width ``dim`` (MLP ratio 4, LayerNorm eps 1e-8, biased qkv and MLP)."""
    block = DecoderViTBlock(
        dim=dim,
        num_heads=num_heads,
        mlp_ratio=4.0,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-8),  # type: ignore[arg-type]
        attn_drop=0.0,
        attn=StableLinearAttention,
    )
    block.mlp = DinomalyMLP(in_features=dim, hidden_features=dim * 4, out_features=dim, drop=0.0, bias=True)
    return block


def build_decoder(dim: int, num_heads: int, depth: int) -> nn.ModuleList:
    """``depth`` decoder blocks (the module list whose outputs, deepest first, form the groups ``D_g``)."""
    return nn.ModuleList([decoder_block(dim, num_heads) for _ in range(depth)])
