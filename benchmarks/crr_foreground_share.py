# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Share of CRR's synthetic-anomaly pixels that land on the object, without and with ``foreground="auto"``.

For each category, training images go through CRR's default geometry (Resize 448 → CenterCrop 392,
synthesis canvas 448) and get ``--rounds`` synthetic anomalies each, with ``foreground=None`` (anywhere)
and with the ``"auto"`` estimate. The share is (anomaly pixels on the object) / (anomaly pixels).

"Object" is a reference independent of the ``"auto"`` estimate, checked by eye on overlays
(``--overlays``):

* ``washer`` (procedural, ``make_synthetic_mvtec``): the generator draws a ring of grey 0.77 with bolts of
  0.32 on a 0.12 background (noise σ 0.02); object = grey > 0.22.
* ``tire`` (MVTec 3D-AD RGB): dark tyre on a dark blue-grey background; object = largest connected
  component of (largest channel difference to the border median, 9×9 box-smoothed, > 0.03), holes filled
  (scipy.ndimage), so dark tread blocks count as object.

Usage::

    python benchmarks/crr_foreground_share.py --tire /work/shared/data/mvtec3d_rgb/tire --images 16 --rounds 4
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from scipy import ndimage
from torchvision import io
from torchvision.transforms.v2 import functional as TF  # noqa: N812

from anomalib_crr.models.components.synthesis.foreground import estimate_foreground
from anomalib_crr.models.components.synthesis.synthesizer import CrrAnomalySynthesizer
from benchmarks.common import DATASETS, write_table

RESIZE, CROP = 448, 392


def load(paths: list[Path]) -> torch.Tensor:
    """Images in [0, 1] through CRR's default pre-processing geometry."""
    images = []
    for path in paths:
        image = io.read_image(str(path), mode=io.ImageReadMode.RGB).float() / 255
        images.append(TF.center_crop(TF.resize(image, [RESIZE, RESIZE], antialias=True), [CROP, CROP]))
    return torch.stack(images)


def washer_object(images: torch.Tensor) -> torch.Tensor:
    """Reference object of the procedural washer: grey > 0.22 (ring 0.77, bolts 0.32, background 0.12 ± 0.02)."""
    return (images.mean(dim=1, keepdim=True) > 0.22).float()


def tire_object(images: torch.Tensor) -> torch.Tensor:
    """Reference object of ``tire``: smoothed difference to the border colour > 0.03, largest component, filled."""
    masks = []
    for image in images:
        frame = torch.cat([image[:, :4].flatten(1), image[:, -4:].flatten(1)], dim=1)
        difference = (image - frame.median(dim=1).values.view(3, 1, 1)).abs().amax(dim=0, keepdim=True)
        smoothed = F.avg_pool2d(difference[None], 9, stride=1, padding=4, count_include_pad=False)[0, 0]
        labels, count = ndimage.label((smoothed > 0.03).numpy())
        if count == 0:
            masks.append(torch.zeros(1, *image.shape[-2:]))
            continue
        largest = 1 + int(np.argmax(ndimage.sum(np.ones_like(labels), labels, index=range(1, count + 1))))
        masks.append(torch.from_numpy(ndimage.binary_fill_holes(labels == largest)).float()[None])
    return torch.stack(masks)


def shares(images: torch.Tensor, reference: torch.Tensor, rounds: int) -> dict[str, float]:
    """On-object share of anomaly pixels for ``foreground=None`` and ``"auto"``, over ``rounds`` draws."""
    synthesizer = CrrAnomalySynthesizer(canvas_size=(RESIZE, RESIZE))
    auto = estimate_foreground(images)
    totals = {"none": [0.0, 0.0], "auto": [0.0, 0.0]}
    for _ in range(rounds):
        for name, foreground in (("none", None), ("auto", auto)):
            mask = synthesizer.perlin_masks(images.shape[0], CROP, CROP, images.device, foreground)
            totals[name][0] += float((mask * reference).sum())
            totals[name][1] += float(mask.sum())
    return {
        "share_on_object_none": totals["none"][0] / max(totals["none"][1], 1.0),
        "share_on_object_auto": totals["auto"][0] / max(totals["auto"][1], 1.0),
        "object_fraction_reference": float(reference.mean()),
        "foreground_fraction_auto": float(auto.mean()),
        "auto_iou_vs_reference": float((auto * reference).sum() / ((auto + reference) > 0).float().sum()),
    }


def overlay(images: torch.Tensor, reference: torch.Tensor, auto: torch.Tensor, path: Path) -> None:
    """Tiles: image, reference (red), auto estimate (green)."""
    from PIL import Image

    tiles = []
    for image, ref, est in zip(images[:4], reference[:4], auto[:4], strict=False):
        rgb = (image.permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        red, green = rgb.copy(), rgb.copy()
        red[..., 0] = np.maximum(red[..., 0], (ref[0].numpy() * 160).astype(np.uint8))
        green[..., 1] = np.maximum(green[..., 1], (est[0].numpy() * 160).astype(np.uint8))
        tiles.append(np.concatenate([rgb, red, green], axis=0))
    Image.fromarray(np.concatenate(tiles, axis=1)).save(path)


def main() -> None:
    """Measure and write ``crr_foreground_share.csv``/``.md``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tire", type=Path, default=DATASETS["tire"]["root"] / "tire")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--overlays", type=Path, default=None, help="folder for reference/estimate overlay PNGs")
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    from anomalib_crr.data import make_synthetic_mvtec

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = make_synthetic_mvtec(tmp, categories=["washer"], num_train=args.images, image_size=256, seed=0)
        categories = {
            "washer (procedural)": (sorted((root / "washer" / "train" / "good").glob("*.png")), washer_object),
            "tire (MVTec 3D-AD RGB)": (sorted((args.tire / "train" / "good").glob("*.png")), tire_object),
        }
        for name, (paths, reference_fn) in categories.items():
            if not paths:
                print(f"skipping {name}: no images")
                continue
            images = load(paths[: args.images])
            reference = reference_fn(images)
            row = {"category": name, "images": images.shape[0], "rounds": args.rounds}
            row.update(shares(images, reference, args.rounds))
            rows.append(row)
            if args.overlays is not None:
                args.overlays.mkdir(parents=True, exist_ok=True)
                tag = name.split()[0]
                overlay(images, reference, estimate_foreground(images), args.overlays / f"foreground_{tag}.png")
    intro = (
        "Share of synthetic-anomaly pixels on the object (reference object: see benchmarks/crr_foreground_share.py), "
        f"CRR geometry 448 → 392, {args.rounds} draws per image."
    )
    write_table(rows, args.output / "crr_foreground_share", intro=intro, float_format=".3f")


if __name__ == "__main__":
    main()
