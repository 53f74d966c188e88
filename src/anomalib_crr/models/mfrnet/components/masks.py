# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Crossed (complementary) masks: the feature grid is cut into k x k cells, the cells into n disjoint subsets.

Mask ``i`` hides the cells of subset ``i``. Every feature position is therefore hidden in exactly one of
the ``n`` masks, so combining the ``n`` restorations, each taken where its copy was hidden, predicts every
position from context only: an anomaly never sees itself (the paper's answer to "abnormal regeneration").
"""

from __future__ import annotations

import functools

import numpy as np
import torch


def check_divisible(feature_size: tuple[int, int], cell_sizes: tuple[int, ...], what: str = "feature map") -> None:
    """Raise a clear error when the feature grid cannot be tiled by every cell size."""
    height, width = feature_size
    bad = [k for k in cell_sizes if height % k or width % k]
    if bad:
        msg = (
            f"The {what} is {height}x{width}, which is not divisible by mask_cell_size {bad}. Choose an input size "
            f"whose feature map (input / feature_stride) is a multiple of every cell size and of the patch size."
        )
        raise ValueError(msg)


def partition_to_masks(subset: torch.Tensor, cell_size: int, num_masks: int) -> torch.Tensor:
    """Expand a per-cell subset index ``(B, Gh, Gw)`` to hidden masks ``(B, n, Gh·k, Gw·k)`` of 0/1 floats."""
    ids = torch.arange(num_masks, device=subset.device).view(1, num_masks, 1, 1)
    hidden = (subset.unsqueeze(1) == ids).float()
    return hidden.repeat_interleave(cell_size, dim=2).repeat_interleave(cell_size, dim=3)


def count_cells(grid: tuple[int, int], num_masks: int) -> int:
    """Number of cells of ``grid``; a partition into ``num_masks`` subsets needs at least one cell per subset."""
    cells = grid[0] * grid[1]
    if num_masks > cells:
        msg = f"num_masks={num_masks} is larger than the {cells} mask cells of a {grid[0]}x{grid[1]} grid"
        raise ValueError(msg)
    return cells


def cell_grid(feature_size: tuple[int, int], cell_size: int) -> tuple[int, int]:
    """Cells per side of a feature map cut into ``cell_size`` x ``cell_size`` cells (sides must divide)."""
    check_divisible(feature_size, (cell_size,))
    return feature_size[0] // cell_size, feature_size[1] // cell_size


def random_partition(
    batch_size: int,
    grid: tuple[int, int],
    num_masks: int,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A uniformly random, balanced split of the grid's cells into ``num_masks`` subsets, one per image.

    Each image gets its own permutation of the cells (ranks of uniform noise); cell ``j`` of the permutation
    goes to subset ``j mod n``, so subset sizes differ by at most one cell.

    Returns:
        Subset index per cell, ``(batch_size, Gh, Gw)``, int64.
    """
    cells = count_cells(grid, num_masks)
    noise = torch.rand(batch_size, cells, generator=generator, device=generator.device if generator else device)
    rank = noise.argsort(dim=1).argsort(dim=1)
    return (rank % num_masks).view(batch_size, *grid).to(device)


def crossed_masks(
    batch_size: int,
    feature_size: tuple[int, int],
    cell_size: int,
    num_masks: int,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Random complementary hidden masks ``(B, n, H, W)``: 1 where copy ``i`` hides the position.

    ``sum_i mask[:, i] == 1`` everywhere; each mask is constant on every ``cell_size`` x ``cell_size`` cell.
    """
    grid = cell_grid(feature_size, cell_size)
    subset = random_partition(batch_size, grid, num_masks, device=device, generator=generator)
    return partition_to_masks(subset, cell_size, num_masks)


@functools.lru_cache(maxsize=64)
def fixed_masks(feature_size: tuple[int, int], cell_size: int, num_masks: int, seed: int) -> torch.Tensor:
    """The test-time partition for one cell size, the same for every image and call: ``(1, n, H, W)``.

    Drawn with NumPy's seeded generator and cached, so inference uses no torch RNG: the masks enter an
    exported graph as constants, and any input size gets its own fixed partition. Do not modify the result.
    """
    grid = cell_grid(feature_size, cell_size)
    cells = count_cells(grid, num_masks)
    order = np.random.default_rng([seed, cell_size]).permutation(cells)
    subset = np.empty(cells, dtype=np.int64)
    subset[order] = np.arange(cells) % num_masks
    return partition_to_masks(torch.from_numpy(subset).view(1, *grid), cell_size, num_masks)


def structured_partition(
    batch_size: int,
    grid: tuple[int, int],
    num_masks: int,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    randomize: bool = True,
) -> torch.Tensor:
    """A diagonal split of the cells, ``subset(i, j) = (i ± j + offset) mod n``, per image.

    Unlike a uniformly random split, no cell ever shares an edge with a cell of its own subset (for ``n >= 2``),
    so every hidden cell has visible neighbours on all four sides: the restoration is an interpolation across
    one cell, never an extrapolation into a large hole. With ``randomize`` each image gets a random offset and
    diagonal direction (training); without, the offset is 0 and the direction ``i + j`` (the fixed test split).

    Returns:
        Subset index per cell, ``(batch_size, Gh, Gw)``, int64.
    """
    count_cells(grid, num_masks)  # validates num_masks against the grid
    rows = torch.arange(grid[0], device=device).view(1, -1, 1)
    cols = torch.arange(grid[1], device=device).view(1, 1, -1)
    if not randomize:
        return ((rows + cols) % num_masks).expand(batch_size, -1, -1).contiguous()
    gen_device = generator.device if generator is not None else device
    offset = torch.randint(num_masks, (batch_size, 1, 1), generator=generator, device=gen_device).to(device)
    sign = torch.randint(2, (batch_size, 1, 1), generator=generator, device=gen_device).to(device) * 2 - 1
    return (rows + sign * cols + offset) % num_masks


def structured_masks(
    batch_size: int,
    feature_size: tuple[int, int],
    cell_size: int,
    num_masks: int,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    randomize: bool = True,
    offset: int | tuple[int, int] = 0,
) -> torch.Tensor:
    """Complementary hidden masks ``(B, n, H, W)`` from :func:`structured_partition` (see there).

    ``offset`` shifts the cell grid by that many feature positions (one int: both axes; or ``(rows, columns)``);
    cells cut by the border are partial. The fixed test split uses half a cell, so its cell boundaries fall
    between other positions than in training.
    """
    row_offset, col_offset = (offset, offset) if isinstance(offset, int) else offset
    if not (0 <= row_offset < cell_size and 0 <= col_offset < cell_size):
        msg = f"offset must be in [0, cell_size={cell_size}) on both axes, got {offset}"
        raise ValueError(msg)
    height, width = feature_size
    check_divisible(feature_size, (cell_size,))
    padded = (height + cell_size * bool(row_offset), width + cell_size * bool(col_offset))
    grid = cell_grid(padded, cell_size)
    subset = structured_partition(batch_size, grid, num_masks, device=device, generator=generator, randomize=randomize)
    hidden = partition_to_masks(subset, cell_size, num_masks)
    return hidden[..., row_offset : row_offset + height, col_offset : col_offset + width]


def fixed_structured_masks(
    feature_size: tuple[int, int], cell_size: int, num_masks: int, offset: tuple[int, int]
) -> torch.Tensor:
    """The fixed structured test split (``i + j``, grid shifted by ``offset``), ``(1, n, H, W)``.

    Every eval forward needs the same split for a given feature size, so a concrete size is built once and cached,
    as :func:`fixed_masks` does for the random split; do not modify the result. A symbolic size (``torch.export``
    with a dynamic input shape) cannot be a cache key, so its split is built in the graph.
    """
    if all(isinstance(size, int) for size in feature_size):
        return _cached_structured_masks(tuple(feature_size), cell_size, num_masks, tuple(offset))
    return structured_masks(1, feature_size, cell_size, num_masks, randomize=False, offset=offset)


@functools.lru_cache(maxsize=64)
def _cached_structured_masks(
    feature_size: tuple[int, int], cell_size: int, num_masks: int, offset: tuple[int, int]
) -> torch.Tensor:
    return structured_masks(1, feature_size, cell_size, num_masks, randomize=False, offset=offset)
