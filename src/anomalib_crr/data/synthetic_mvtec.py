# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Procedural MVTec-style datasets: textures and objects with defects and ground-truth masks.

Used by the demo and the tests so that a full train/test/predict/export round trip runs without
downloading anything. Everything is drawn by this module from a seeded NumPy generator, so the same
seed always writes the same files. The layout is MVTec AD's::

    <root>/<category>/train/good/000.png
    <root>/<category>/test/good/000.png
    <root>/<category>/test/<defect>/000.png
    <root>/<category>/ground_truth/<defect>/000_mask.png

and loads with ``anomalib.data.MVTecAD(root=<root>, category=<category>)`` or ``anomalib.data.Folder``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

Array = np.ndarray


def _grid(size: int) -> tuple[Array, Array]:
    coords = np.linspace(0.0, 1.0, size, dtype=np.float32)
    return np.meshgrid(coords, coords, indexing="ij")


def _weave(rng: np.random.Generator, size: int) -> Array:
    """A woven texture: crossing sinusoids with small random phase jitter and sensor noise."""
    yy, xx = _grid(size)
    phase = rng.uniform(0, 0.3, size=2)
    warp = 0.6 * (np.sin(2 * np.pi * (24 * xx + phase[0])) * np.sin(2 * np.pi * (24 * yy + phase[1])))
    base = 0.5 + 0.25 * warp + rng.normal(0, 0.03, (size, size))
    tint = np.array([0.85, 0.7, 0.55], dtype=np.float32)
    return np.clip(base[..., None] * tint[None, None, :] + 0.1, 0, 1)


def _washer(rng: np.random.Generator, size: int) -> Array:
    """An object: a bright ring on a dark background, slightly shifted per image, with holes around it."""
    yy, xx = _grid(size)
    cy, cx = 0.5 + rng.uniform(-0.03, 0.03, size=2)
    radius = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    ring = ((radius > 0.18) & (radius < 0.36)).astype(np.float32)
    angle = np.arctan2(yy - cy, xx - cx)
    bolts = (np.cos(8 * angle) > 0.92) & (np.abs(radius - 0.27) < 0.03)
    image = 0.12 + 0.65 * ring - 0.45 * bolts + rng.normal(0, 0.02, (size, size))
    color = np.array([0.75, 0.78, 0.82], dtype=np.float32)
    return np.clip(image[..., None] * color[None, None, :], 0, 1)


SYNTHETIC_CATEGORIES: dict[str, Callable[[np.random.Generator, int], Array]] = {
    "weave": _weave,
    "washer": _washer,
}


def _defect(rng: np.random.Generator, image: Array, kind: str) -> tuple[Array, Array]:
    """Draw one defect of ``kind`` into ``image``; returns the defective image and its binary mask."""
    size = image.shape[0]
    mask_image = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask_image)
    margin = size // 4
    if kind == "scratch":
        x0, y0 = rng.integers(margin, size - margin, size=2)
        length = rng.uniform(0.15, 0.35) * size
        angle = rng.uniform(0, np.pi)
        x1, y1 = x0 + length * np.cos(angle), y0 + length * np.sin(angle)
        draw.line([(int(x0), int(y0)), (int(x1), int(y1))], fill=255, width=max(2, size // 40))
    else:  # "stain": an irregular blob
        cx, cy = rng.integers(margin, size - margin, size=2)
        radius = rng.uniform(0.05, 0.1) * size
        angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
        radii = radius * rng.uniform(0.6, 1.3, angles.shape)
        polygon = [(int(cx + r * np.cos(a)), int(cy + r * np.sin(a))) for a, r in zip(angles, radii, strict=True)]
        draw.polygon(polygon, fill=255)
    mask = np.asarray(mask_image, dtype=np.float32) / 255.0
    if kind == "scratch":
        paint = np.full(3, rng.uniform(0.9, 1.0), dtype=np.float32)
    else:
        paint = rng.uniform(0.0, 1.0, 3).astype(np.float32) * 0.6
    defective = image * (1 - mask[..., None]) + paint[None, None, :] * mask[..., None]
    return np.clip(defective, 0, 1), (mask > 0.5).astype(np.uint8)


def _save_rgb(array: Array, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((array * 255).round().astype(np.uint8), mode="RGB").save(path)


def make_synthetic_mvtec(
    root: str | Path,
    categories: Sequence[str] = ("weave", "washer"),
    num_train: int = 16,
    num_test_good: int = 4,
    num_test_defect: int = 4,
    image_size: int = 128,
    seed: int = 0,
    defects: Sequence[str] = ("scratch", "stain"),
) -> Path:
    """Write a deterministic MVTec-style dataset and return its root.

    Args:
        root: Output folder. Existing category folders are never overwritten: a non-empty
            ``<root>/<category>`` raises instead.
        categories: Names from :data:`SYNTHETIC_CATEGORIES`.
        num_train: Normal training images per category.
        num_test_good: Normal test images per category.
        num_test_defect: Test images per defect type and category.
        image_size: Side of the square images.
        seed: Seed of the generator; the same seed writes the same files.
        defects: Defect types, each a ``test/<defect>`` folder.

    Returns:
        The dataset root.

    Raises:
        ValueError: For an unknown category or defect type.
        FileExistsError: If a category folder already holds files.
    """
    root = Path(root)
    unknown = [c for c in categories if c not in SYNTHETIC_CATEGORIES]
    if unknown:
        msg = f"Unknown synthetic categories {unknown}; choose from {sorted(SYNTHETIC_CATEGORIES)}"
        raise ValueError(msg)
    bad_defects = [d for d in defects if d not in {"scratch", "stain"}]
    if bad_defects:
        msg = f"Unknown defect types {bad_defects}; choose from ['scratch', 'stain']"
        raise ValueError(msg)
    for index, category in enumerate(categories):
        folder = root / category
        if folder.exists() and any(folder.iterdir()):
            msg = f"'{folder}' already exists and is not empty; choose another root (nothing was overwritten)"
            raise FileExistsError(msg)
        rng = np.random.default_rng([seed, index])
        draw = SYNTHETIC_CATEGORIES[category]
        for i in range(num_train):
            _save_rgb(draw(rng, image_size), folder / "train" / "good" / f"{i:03d}.png")
        for i in range(num_test_good):
            _save_rgb(draw(rng, image_size), folder / "test" / "good" / f"{i:03d}.png")
        for defect in defects:
            for i in range(num_test_defect):
                image, mask = _defect(rng, draw(rng, image_size), defect)
                _save_rgb(image, folder / "test" / defect / f"{i:03d}.png")
                mask_path = folder / "ground_truth" / defect / f"{i:03d}_mask.png"
                mask_path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(mask * 255, mode="L").save(mask_path)
    return root


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: ``python -m anomalib_crr.data.synthetic_mvtec ROOT [--categories ...]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--categories", nargs="+", default=["weave", "washer"])
    parser.add_argument("--num-train", type=int, default=16)
    parser.add_argument("--num-test-good", type=int, default=4)
    parser.add_argument("--num-test-defect", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    make_synthetic_mvtec(
        args.root,
        args.categories,
        args.num_train,
        args.num_test_good,
        args.num_test_defect,
        args.image_size,
        args.seed,
    )
    print(f"Wrote synthetic MVTec-style dataset to {args.root}")


if __name__ == "__main__":
    main()
