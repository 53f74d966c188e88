# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""anomalib's linear attention with its normaliser computed safely under reduced precision.

anomalib's ``LinearAttention`` (Dinomaly, reused by CRR's decoder) computes ``φ(q)(φ(k)ᵀv) / (φ(q)·Σφ(k))``
with ``φ = elu + 1`` and no ``eps``. In bf16/fp16, ``elu(x) + 1`` rounds to exactly 0 for ``x`` below about
-6 (bf16) / -9 (fp16), so a token whose query is all zeros divides 0 by 0 (NaN); in fp16, ``Σφ(k)`` over
hundreds of tokens and ``φ(q)·Σφ(k)`` overflow 65504 (inf, then 0 or NaN). The official CRR code patches
the NaNs afterwards. :class:`StableLinearAttention` instead runs the three products in float32 with
autocast off and clamps the normaliser at ``eps``; in float32 it returns bit-identical results, so
existing checkpoints and tests are unaffected.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.models.image.dinomaly.components import LinearAttention

NORMALISER_EPS = 1e-6


class StableLinearAttention(LinearAttention):
    """``LinearAttention`` whose attention core is float32 and whose normaliser is at least ``eps``."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same interface and float32 result as ``LinearAttention.forward``; finite under bf16/fp16.

        Args:
            x: ``(batch, tokens, dim)``.

        Returns:
            The projected output (in the input's dtype under autocast) and the key-value product.
        """
        batch_size, seq_len, embed_dim = x.shape
        qkv = (
            self.qkv(x)
            .reshape(batch_size, seq_len, 3, self.num_heads, embed_dim // self.num_heads)
            .permute(2, 0, 3, 1, 4)
        )
        autocast = torch.is_autocast_enabled(x.device.type)  # entered only when on: keeps export graphs plain
        with torch.autocast(device_type=x.device.type, enabled=False) if autocast else contextlib.nullcontext():
            q, k, v = (tensor.float() for tensor in qkv)
            q = F.elu(q) + 1.0
            k = F.elu(k) + 1.0
            kv = torch.matmul(k.transpose(-2, -1), v)
            k_sum = k.sum(dim=-2, keepdim=True)
            z = 1.0 / torch.sum(q * k_sum, dim=-1, keepdim=True).clamp_min(NORMALISER_EPS)
            out = torch.matmul(q, kv) * z
        out = out.to(qkv.dtype).transpose(1, 2).reshape(batch_size, seq_len, embed_dim)
        out = self.proj(out)
        out = self.proj_drop(out)
        return out, kv
