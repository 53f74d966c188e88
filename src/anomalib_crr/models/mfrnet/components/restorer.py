# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Hybrid conv-transformer restoration network: fills the hidden cells of a masked feature map.

Global self-attention lets a hidden cell borrow context from distant normal regions; convolutions in
the stem, the feed-forward layers (depth-wise, PVT-v2/LeFF style) and the head keep the output locally
continuous. There is no BatchNorm: zero-filled holes would corrupt batch statistics.

The transformer blocks are timm's PVT-v2 blocks with spatial-reduction ratio 1 (plain multi-head
self-attention, pre-norm) and their depth-wise-conv MLP; positions are fixed 2-D sin-cos embeddings.

With ``residual=True`` (the default) the network predicts a correction to a parameter-free
visible-neighbour inpainting (:class:`~.inpainting.VisibleNeighbourInpainting`), which it also receives
as input; its last layer starts at zero, so an untrained restorer *is* that inpainting and training
starts from a restoration that already scores well instead of from an output of 0.
"""

from __future__ import annotations

import torch
from timm.layers import build_sincos2d_pos_embed
from timm.models.pvt_v2 import Block as HybridBlock
from torch import nn

from .inpainting import VisibleNeighbourInpainting


class MfrRestorer(nn.Module):
    """Restore ``C`` feature channels from ``[masked features; mask]`` (``C + 1`` channels, or ``2C + 1``).

    Args:
        in_channels: Feature channels ``C`` (the restorer also receives the visible mask as one extra channel,
            and with ``residual`` the inpainting's ``C`` channels).
        stem_dim: Width ``d`` of the convolutional stem and head.
        embed_dim: Transformer width ``D``.
        depth: Number of hybrid blocks ``L``.
        num_heads: Attention heads.
        mlp_ratio: Hidden width of the conv feed-forward layer, relative to ``D``.
        patch_size: Feature positions per token side ``p`` (4: a 64x64 map becomes 16x16 tokens).
        residual: Predict a correction to the visible-neighbour inpainting (zero-initialised last layer).
        inpaint_sigma: σ of that inpainting's Gaussian, in feature positions.
    """

    def __init__(
        self,
        in_channels: int,
        stem_dim: int = 256,
        embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        patch_size: int = 4,
        residual: bool = False,
        inpaint_sigma: float = 1.0,
    ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            msg = f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}"
            raise ValueError(msg)
        if embed_dim % 4:
            msg = f"embed_dim {embed_dim} must be divisible by 4 for 2-D sin-cos position embeddings"
            raise ValueError(msg)
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.residual = residual
        self.inpainting = VisibleNeighbourInpainting(inpaint_sigma) if residual else None
        stem_in = 2 * in_channels + 1 if residual else in_channels + 1
        self.stem = nn.Sequential(
            nn.Conv2d(stem_in, stem_dim, kernel_size=1),
            nn.GELU(),
            nn.Conv2d(stem_dim, stem_dim, kernel_size=3, padding=1),
            nn.GELU(),
        )
        self.patch_embed = nn.Conv2d(stem_dim, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.blocks = nn.ModuleList(
            HybridBlock(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, sr_ratio=1, qkv_bias=True)
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim)
        self.unpatch = nn.Linear(embed_dim, patch_size * patch_size * stem_dim)
        self.head = nn.Sequential(
            nn.Conv2d(stem_dim, stem_dim, kernel_size=3, padding=1),
            nn.GELU(),
            nn.Conv2d(stem_dim, in_channels, kernel_size=1),
        )
        if residual:
            nn.init.zeros_(self.head[-1].weight)
            nn.init.zeros_(self.head[-1].bias)

    def forward(self, masked_features: torch.Tensor, visible_mask: torch.Tensor) -> torch.Tensor:
        """Restore features.

        Args:
            masked_features: ``(N, C, H, W)``, zero where hidden.
            visible_mask: ``(N, 1, H, W)``, 1 where visible.

        Returns:
            Restored features ``(N, C, H, W)``.
        """
        inputs = [masked_features, visible_mask]
        base = None
        if self.inpainting is not None:
            base = self.inpainting(masked_features, visible_mask)
            inputs.append(base)
        stem = self.stem(torch.cat(inputs, dim=1))
        tokens = self.patch_embed(stem)
        grid = (tokens.shape[-2], tokens.shape[-1])
        tokens = tokens.flatten(2).transpose(1, 2)
        position = build_sincos2d_pos_embed(list(grid), dim=self.embed_dim, device=tokens.device, dtype=tokens.dtype)
        tokens = tokens + position.unsqueeze(0)
        for block in self.blocks:
            tokens = block(tokens, grid)
        tokens = self.unpatch(self.norm(tokens))  # (N, gh*gw, p*p*d)
        batch, patch = tokens.shape[0], self.patch_size
        spatial = tokens.view(batch, grid[0], grid[1], patch, patch, -1)
        spatial = spatial.permute(0, 5, 1, 3, 2, 4).reshape(batch, -1, grid[0] * patch, grid[1] * patch)
        out = self.head(spatial + stem)
        return out if base is None else base + out
