# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""DINOv2 position-embedding resizing exactly as Meta's code (and therefore the official CRR code) does it.

DINOv2 learns a 37 x 37 table of patch position embeddings (518² input). For another grid, Meta's
``DinoVisionTransformer.interpolate_pos_encoding`` (``dinov2/models/vision_transformer.py``; CRR's
``models/vit_encoder.py`` builds it with ``interpolate_offset=0.1, interpolate_antialias=False``) resizes the
table with ``F.interpolate(mode="bicubic", antialias=False, scale_factor=((h + 0.1) / 37, (w + 0.1) / 37))``
and returns the table unchanged when the grid is already 37 x 37. Because the *scale factor*, not the output
size, sets the sampling positions, the 0.1 offset shifts every sample (by up to ~0.1 cell at 28 x 28).

timm's ``dynamic_img_size`` resizes to exactly ``(h, w)`` with antialiasing instead: at 392² (28 x 28) that
moves the embeddings by up to ~2.8 % of their largest value and every encoder block after them (measured
with ``benchmarks/official_equivalence.py``). Released DINOv2 and CRR weights were trained with Meta's
resize, so :func:`use_official_pos_embed` puts it into timm's DINOv2 ``VisionTransformer``.

In eager mode the resized table is cached per grid (the encoder is frozen), so inference does no extra
work. While a graph is being exported the table is computed in the graph as two small matrix products
(:func:`bicubic_resize_matrix`), which every exporter and runtime handles identically; ``F.interpolate``
with a scale factor is lowered to a size-based ``Resize`` by some exporters, which would drop the offset.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from timm.models.vision_transformer import VisionTransformer

DINOV2_INTERPOLATE_OFFSET = 0.1
BICUBIC_A = -0.75  # PyTorch's (and OpenCV's) cubic convolution coefficient


def native_grid(patch_pos_embed: torch.Tensor) -> int:
    """Side of the square grid a (1, S*S, C) patch table was trained for (37 for DINOv2: 518 / 14)."""
    side = math.isqrt(patch_pos_embed.shape[1])
    if side * side != patch_pos_embed.shape[1]:  # pragma: no cover - DINOv2 tables are square
        msg = f"position table of {patch_pos_embed.shape[1]} patch entries is not a square grid"
        raise ValueError(msg)
    return side


def official_patch_pos_embed(patch_pos_embed: torch.Tensor, grid: tuple[int, int], offset: float) -> torch.Tensor:
    """Meta's resize of a (1, S*S, C) patch table to ``grid`` = (rows, columns): (1, rows*columns, C), float32.

    A grid equal to the native one returns the table itself (Meta skips the resize only for square inputs,
    and the native grid is square).
    """
    side = native_grid(patch_pos_embed)
    rows, columns = grid
    if (rows, columns) == (side, side):
        return patch_pos_embed.float()
    dim = patch_pos_embed.shape[-1]
    table = patch_pos_embed.float().reshape(1, side, side, dim).permute(0, 3, 1, 2)
    resized = F.interpolate(
        table,
        scale_factor=((rows + offset) / side, (columns + offset) / side),
        mode="bicubic",
        antialias=False,
    )
    if resized.shape[-2:] != (rows, columns):  # pragma: no cover - the offset keeps floor() on the right side
        msg = f"bicubic resize of the {side}x{side} position table gave {tuple(resized.shape[-2:])}, not {grid}"
        raise RuntimeError(msg)
    return resized.permute(0, 2, 3, 1).reshape(1, rows * columns, dim)


def bicubic_resize_matrix(in_size: int, out_size: int | torch.SymInt, scale: float | torch.SymFloat) -> torch.Tensor:
    """(out_size, in_size) matrix ``W`` with ``W @ x`` = PyTorch's 1-D bicubic resize of ``x`` at ``scale``.

    The sampling position of output ``i`` is ``(i + 0.5) / scale - 0.5`` (``align_corners=False``), its four
    neighbours are clamped to the border, and their weights are the cubic convolution kernel with
    ``a = -0.75``: the same arithmetic as ``upsample_bicubic2d``, written with tensor ops only so that it
    exports with symbolic sizes.
    """
    source = (torch.arange(out_size, dtype=torch.float32) + 0.5) / scale - 0.5
    base = torch.floor(source)
    t = source - base
    weights = torch.stack(
        [
            _cubic_outer(t + 1.0),
            _cubic_inner(t),
            _cubic_inner(1.0 - t),
            _cubic_outer(2.0 - t),
        ],
        dim=1,
    )
    taps = (base.long().unsqueeze(1) + torch.arange(-1, 3)).clamp(0, in_size - 1)
    return (F.one_hot(taps, num_classes=in_size).to(weights.dtype) * weights.unsqueeze(-1)).sum(dim=1)


def _cubic_inner(x: torch.Tensor) -> torch.Tensor:
    """Cubic kernel for |x| <= 1."""
    return ((BICUBIC_A + 2) * x - (BICUBIC_A + 3)) * x * x + 1


def _cubic_outer(x: torch.Tensor) -> torch.Tensor:
    """Cubic kernel for 1 < |x| < 2."""
    return ((BICUBIC_A * x - 5 * BICUBIC_A) * x + 8 * BICUBIC_A) * x - 4 * BICUBIC_A


def official_patch_pos_embed_traceable(
    patch_pos_embed: torch.Tensor, grid: tuple[int, int], offset: float
) -> torch.Tensor:
    """:func:`official_patch_pos_embed` as matrix products, for export (equal within float rounding).

    With a symbolic grid the native-grid shortcut cannot be taken (a 518² input exported with a dynamic
    size gets the table resampled at scale 37.1 / 37; every other size is exact).
    """
    side = native_grid(patch_pos_embed)
    rows, columns = grid
    dim = patch_pos_embed.shape[-1]
    table = patch_pos_embed.float().reshape(side, side, dim)
    if isinstance(rows, int) and isinstance(columns, int) and (rows, columns) == (side, side):
        return table.reshape(1, side * side, dim)
    row_matrix = bicubic_resize_matrix(side, rows, (rows + offset) / side).to(table.device)
    column_matrix = bicubic_resize_matrix(side, columns, (columns + offset) / side).to(table.device)
    resized = torch.einsum("ij,jkc,lk->ilc", row_matrix, table, column_matrix)
    return resized.reshape(1, rows * columns, dim)


def _is_tracing() -> bool:
    return torch.compiler.is_exporting() or torch.jit.is_tracing() or torch.compiler.is_compiling()


class OfficialPosEmbedVisionTransformer(VisionTransformer):
    """timm's DINOv2 ``VisionTransformer`` with Meta's position-embedding resize; set by :func:`use_official_pos_embed`.

    Only ``_pos_embed`` differs, so weights, ``forward_intermediates`` and pruning are timm's.
    """

    interpolate_offset: float = DINOV2_INTERPOLATE_OFFSET
    _pos_embed_cache: dict[Any, torch.Tensor]

    def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
        """Add the resized table to the (B, h, w, C) patch tokens and prepend class and register tokens."""
        batch, rows, columns, dim = x.shape
        prefix_positions = 0 if self.no_embed_class else self.num_prefix_tokens
        pos_embed = self.resized_pos_embed((rows, columns)).to(x.dtype)
        prefix = []
        if self.cls_token is not None:
            prefix.append(self.cls_token.expand(batch, -1, -1))
        if self.reg_token is not None:
            prefix.append(self.reg_token.expand(batch, -1, -1))
        x = x.reshape(batch, -1, dim)
        if prefix_positions:  # class-token position stored in the table (DINOv2 without registers)
            x = torch.cat([*prefix, x], dim=1) + pos_embed
        else:  # DINOv2-R in timm: the class-token position is folded into cls_token
            x = torch.cat([*prefix, x + pos_embed], dim=1)
        return self.pos_drop(x)

    def resized_pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        """Position table for a grid, prefix positions included: cached in eager mode, in-graph when exporting."""
        prefix_positions = 0 if self.no_embed_class else self.num_prefix_tokens
        if _is_tracing():
            return self._compute_pos_embed(grid, prefix_positions, traceable=True)
        if self.pos_embed.requires_grad and torch.is_grad_enabled():
            return self._compute_pos_embed(grid, prefix_positions, traceable=False)
        # The key follows the table's storage and in-place version, so loading new weights invalidates it.
        key = (grid, self.pos_embed.device, self.pos_embed.data_ptr(), self.pos_embed._version)
        cache = self.__dict__.setdefault("_pos_embed_cache", {})
        if key not in cache:
            cache.clear()  # one entry per grid of the current weights is all a run needs
            cache[key] = self._compute_pos_embed(grid, prefix_positions, traceable=False).detach()
        return cache[key]

    def _compute_pos_embed(self, grid: tuple[int, int], prefix_positions: int, traceable: bool) -> torch.Tensor:
        resize = official_patch_pos_embed_traceable if traceable else official_patch_pos_embed
        table = self.pos_embed
        patches = resize(table[:, prefix_positions:], grid, self.interpolate_offset)
        if prefix_positions:
            patches = torch.cat([table[:, :prefix_positions].float(), patches], dim=1)
        return patches

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the cached tables (they are rebuilt on first use)."""
        state = dict(super().__getstate__())
        state.pop("_pos_embed_cache", None)
        return state


def use_official_pos_embed(vit: torch.nn.Module) -> torch.nn.Module:
    """Give a timm DINOv2 ``VisionTransformer`` Meta's position-embedding resize (in place; returns ``vit``).

    Other encoders (DINOv3's RoPE ``Eva``) are returned unchanged: they have no learned table to resize.
    """
    if type(vit) is VisionTransformer:
        vit.__class__ = OfficialPosEmbedVisionTransformer
    return vit
