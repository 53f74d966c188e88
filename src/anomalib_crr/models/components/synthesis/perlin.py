# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Batched 2-D Perlin noise with a scale and a rotation per image, at any image size.

anomalib's :func:`~anomalib.data.utils.generators.perlin.generate_perlin_noise` makes one noise map per
call, on a canvas padded to the next power of two (so blobs grow with the padding: 392 px images get
noise defined over 512 px) and reads its random scale back from the device. CRR needs a noise map per
training image, each with its own scales and rotation, so this module evaluates the same noise (a
lattice of random unit gradients, quintic fade, ``√2`` scaling, as DRAEM's ``rand_perlin_2d_np`` used by
the official code) for the whole batch at once, directly at the rotated sampling positions: no
per-image loop, no padding, no host synchronisation.

The noise is defined over a ``canvas`` (the official code makes it at the resized image size, 448, and
then centre-crops the image to 392) and the output is the centre ``height × width`` window of the
rotated canvas; rotated-in corners are 0, as imgaug's zero fill.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812

MIN_SCALE_EXPONENT = 0
MAX_SCALE_EXPONENT = 6  # scales 2**0 .. 2**5, as the official code


def random_perlin_scales(batch: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Independent lattice scales ``(scale_y, scale_x) = 2**k``, ``k ~ U{0..5}``, per image: (B, 2) long."""
    exponents = torch.randint(MIN_SCALE_EXPONENT, MAX_SCALE_EXPONENT, (batch, 2), device=device)
    return 2**exponents


def _fade(t: torch.Tensor) -> torch.Tensor:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(
    scales: torch.Tensor,
    height: int,
    width: int,
    canvas: tuple[int, int] | None = None,
    angles: torch.Tensor | None = None,
    step: int = 1,
) -> torch.Tensor:
    """Perlin noise maps (B, H, W), roughly in [−1, 1].

    Args:
        scales: Lattice cells along (y, x) over the canvas, per image (B, 2); any positive integers.
        height: Output height (the centre window of the canvas).
        width: Output width.
        canvas: Size (H_c, W_c) the lattice spans; ``None`` = (height, width). Must be at least the output.
        angles: Rotation of the noise about the canvas centre in degrees, per image (B,); ``None`` = none.
            Samples that fall outside the canvas after rotation are 0.
        step: Evaluate the noise every ``step`` pixels and fill in bilinearly (exact at the evaluated pixels).
            Perlin noise is smooth at the scale of a lattice cell, so with at least ~7 evaluations per cell
            this changes thresholded masks only at the odd boundary pixel, for ``step²`` times less work.
    """
    if step > 1:
        coarse_h, coarse_w = -(-(height - 1) // step) + 1, -(-(width - 1) // step) + 1
        canvas_h, canvas_w = canvas if canvas is not None else (height, width)
        coarse = _perlin_noise_at(scales, (canvas_h, canvas_w), (height, width), angles, step, (coarse_h, coarse_w))
        fine = F.interpolate(
            coarse.unsqueeze(1),
            size=((coarse_h - 1) * step + 1, (coarse_w - 1) * step + 1),
            mode="bilinear",
            align_corners=True,
        )
        return fine[:, 0, :height, :width]
    canvas_h, canvas_w = canvas if canvas is not None else (height, width)
    return _perlin_noise_at(scales, (canvas_h, canvas_w), (height, width), angles, 1, (height, width))


def _perlin_noise_at(
    scales: torch.Tensor,
    canvas: tuple[int, int],
    output: tuple[int, int],
    angles: torch.Tensor | None,
    step: int,
    samples: tuple[int, int],
) -> torch.Tensor:
    """Noise at output pixels ``(step·i, step·j)`` of the centre ``output`` window of ``canvas``: (B, *samples)."""
    height, width = output
    device = scales.device
    batch = scales.shape[0]
    canvas_h, canvas_w = canvas
    if canvas_h < height or canvas_w < width:
        msg = f"canvas {canvas} must be at least the output size {(height, width)}"
        raise ValueError(msg)
    top, left = (canvas_h - height) // 2, (canvas_w - width) // 2
    rows, cols = samples
    ys = (top + step * torch.arange(rows, device=device, dtype=torch.float32)).view(1, rows, 1)
    xs = (left + step * torch.arange(cols, device=device, dtype=torch.float32)).view(1, 1, cols)
    ys, xs = ys.expand(batch, rows, cols), xs.expand(batch, rows, cols)
    inside = torch.ones(batch, rows, cols, dtype=torch.bool, device=device)
    if angles is not None:
        # Output pixel p reads the noise at R(−θ)(p − c) + c (inverse mapping of a rotation by θ).
        theta = angles.to(device=device, dtype=torch.float32).view(batch, 1, 1) * (math.pi / 180)
        cy, cx = (canvas_h - 1) / 2, (canvas_w - 1) / 2
        dy, dx = ys - cy, xs - cx
        cos, sin = torch.cos(theta), torch.sin(theta)
        ys, xs = cos * dy - sin * dx + cy, sin * dy + cos * dx + cx
        inside = (ys >= 0) & (ys <= canvas_h - 1) & (xs >= 0) & (xs <= canvas_w - 1)
    scale_y = scales[:, 0].to(torch.float32).view(batch, 1, 1)
    scale_x = scales[:, 1].to(torch.float32).view(batch, 1, 1)
    # Lattice coordinates: the canvas spans scale cells, as np.mgrid[0:res:res/shape] in the official code.
    u = (ys.clamp(0, canvas_h - 1) * scale_y / canvas_h).clamp_min(0)
    v = (xs.clamp(0, canvas_w - 1) * scale_x / canvas_w).clamp_min(0)
    cell_y = torch.minimum(u.floor(), scale_y - 1)
    cell_x = torch.minimum(v.floor(), scale_x - 1)
    fy, fx = u - cell_y, v - cell_x
    # Gradient lattice per image: (max scale + 1)² corners. Read from CPU scales; on an accelerator use the
    # largest scale random_perlin_scales draws, so that nothing waits for the device.
    max_scale = int(scales.max()) if scales.device.type == "cpu" else 2 ** (MAX_SCALE_EXPONENT - 1)
    lattice = max_scale + 1
    gradient_angles = 2 * math.pi * torch.rand(batch, lattice * lattice, device=device)
    grad_y, grad_x = torch.cos(gradient_angles), torch.sin(gradient_angles)
    cy_i, cx_i = cell_y.long(), cell_x.long()

    def corner(dy: int, dx: int) -> torch.Tensor:
        index = ((cy_i + dy) * lattice + (cx_i + dx)).flatten(1)
        gy = grad_y.gather(1, index).view(batch, rows, cols)
        gx = grad_x.gather(1, index).view(batch, rows, cols)
        return (fy - dy) * gy + (fx - dx) * gx

    t_y, t_x = _fade(fy), _fade(fx)
    n0 = torch.lerp(corner(0, 0), corner(1, 0), t_y)
    n1 = torch.lerp(corner(0, 1), corner(1, 1), t_y)
    noise = math.sqrt(2) * torch.lerp(n0, n1, t_x)
    return torch.where(inside, noise, torch.zeros_like(noise))
