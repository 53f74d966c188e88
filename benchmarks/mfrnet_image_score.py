# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""MFRNet image-score ablation: fit once per seed, keep every map, rank the images with each candidate score.

The candidates (issue 21) all read MFRNet's per-position discrepancy ``d`` (the map before upsampling, at the
feature grid) and statistics of ``d`` over normal images. Each fit is done once through anomalib's Engine with the
package defaults and the offline EfficientNet-Lite0 weights; the discrepancy of every training image and of every
test image is stored (``<output>/dumps/<dataset>_s<seed>_<tag>.pt``), so adding a candidate costs seconds.

``--stats-holdout F`` fits the restorer on ``1 - F`` of the training images and computes the per-position
statistics on the held-out ``F`` as well as on the fitted part, to measure whether statistics from the images the
restorer has seen are biased.

Usage::

    python benchmarks/mfrnet_image_score.py --dataset tire --seeds 0 1 2
    python benchmarks/mfrnet_image_score.py --dataset mt --seeds 0 --epochs 5
    python benchmarks/mfrnet_image_score.py --dataset tire --evaluate-only   # rescore the stored dumps

Writes ``<output>/mfrnet_image_score_<dataset>.csv``/``.md``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812

from benchmarks.common import (
    BORDER_FRACTION,
    DATASETS,
    RESULTS,
    build_datamodule,
    build_model,
    default_mfrnet_epochs,
)


@torch.no_grad()
def _discrepancies(model: Any, dataloader: Any, with_targets: bool) -> dict[str, Any]:
    """Per-position discrepancy ``(N, h, w)`` of every image in ``dataloader`` (and labels/masks for test)."""
    model.eval()
    maps, term_maps, labels, masks, paths = [], [], [], [], []
    for batch in dataloader:
        images = model.raw_batch_images(batch)
        features = model.model.aggregator(images)
        terms = model.model.discrepancy_terms(features)
        maps.append(model.model.combine(terms).float())
        scale = model.model.map_scale.view(len(model.model.cell_sizes), 1, 2, 1, 1)
        term_maps.append((terms / scale).mean(0).float())
        paths += list(batch.image_path)
        if with_targets:
            labels.append(batch.gt_label.int())
            gt = batch.gt_mask if batch.gt_mask is not None else torch.zeros(images.shape[0], *images.shape[-2:])
            masks.append(gt.view(images.shape[0], *gt.shape[-2:]).bool())
    out: dict[str, Any] = {"d": torch.cat(maps), "terms": torch.cat(term_maps), "paths": paths}
    if with_targets:
        out["labels"], out["masks"] = torch.cat(labels), torch.cat(masks)
    return out


def fit_and_dump(args: argparse.Namespace, seed: int) -> Path:
    """Fit MFRNet (defaults) for one seed and store the training and test discrepancies."""
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything
    from torch.utils.data import Subset

    tag = f"e{args.epochs}" + (f"_h{args.stats_holdout:g}" if args.stats_holdout else "")
    tag += "_aspect" if args.keep_aspect else ""
    path = args.output / "dumps" / f"{args.dataset}_s{seed}_{tag}.pt"
    if path.is_file() and not args.refit:
        return path
    seed_everything(seed, workers=True)
    real_args = argparse.Namespace(image_size=args.image_size, mfrnet_epochs=args.epochs, coreset=0.1)
    model, _ = build_model("MFRNet", real_args)
    if args.epochs == 0:
        model.lr = 0.0  # one epoch at lr 0: the restorer stays at its initialisation (the parameter-free inpainting)
    datamodule = build_datamodule(args.dataset, 8, 0, args.image_size if args.keep_aspect else None)
    datamodule.setup()
    held_out = None
    if args.stats_holdout:
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(datamodule.train_data), generator=generator).tolist()
        cut = round(len(order) * (1 - args.stats_holdout))
        full = datamodule.train_data
        held_out = Subset(full, order[cut:])
        datamodule.train_data = Subset(full, order[:cut])
        for attr in ("augmentations", "samples"):
            if hasattr(full, attr):
                setattr(datamodule.train_data, attr, getattr(full, attr))
        datamodule.train_data.collate_fn = full.collate_fn
    engine = Engine(
        default_root_dir=args.output / "runs",
        max_epochs=max(1, args.epochs),
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
    )
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_s = time.perf_counter() - start
    dump = dump_discrepancies(model, datamodule, image_size=args.image_size, fit_s=fit_s)
    if held_out is not None:
        loader = torch.utils.data.DataLoader(held_out, batch_size=8, collate_fn=datamodule.train_data.collate_fn)
        dump["held_out"] = _discrepancies(model, loader, with_targets=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(dump, path)
    print(f"{path.name}: fit {fit_s:.0f} s", flush=True)
    return path


def dump_discrepancies(model: Any, datamodule: Any, image_size: int, fit_s: float) -> dict[str, Any]:
    """The discrepancies of a fitted MFRNet on its training and test images, with the envelope it fitted."""
    return {
        "train": _discrepancies(model, datamodule.train_dataloader(), with_targets=False),
        "test": _discrepancies(model, datamodule.test_dataloader(), with_targets=True),
        "envelope": model.model.normal_envelope.envelope.clone(),
        "fit_s": fit_s,
        "image_size": image_size,
    }


def inner_envelope_auroc(envelope: Any, dump: dict[str, Any], border_fraction: float) -> float:
    """Image AUROC of the model's envelope score with a border band of feature positions left out."""
    test = envelope.smooth(dump["test"]["d"])
    band = round(test.shape[-1] * border_fraction)
    margin = (test - envelope.envelope)[:, band : test.shape[1] - band, band : test.shape[2] - band].flatten(1)
    count = max(1, round(margin.shape[1] * envelope.top_fraction))
    return _auroc(margin.topk(count, dim=1).values.mean(1), dump["test"]["labels"])


# ------------------------------------------------------------------ candidate scores
def _blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of ``(N, h, w)`` maps with reflect padding (sigma in feature positions; 0: none)."""
    if sigma <= 0:
        return maps
    from anomalib.models.components import GaussianBlur2d

    size = 2 * int(4 * sigma + 0.5) + 1
    return GaussianBlur2d(sigma=(sigma, sigma), channels=1, kernel_size=(size, size))(maps[:, None])[:, 0]


def _upsampled_max(maps: torch.Tensor, image_size: int, sigma: float = 4.0, inner: bool = False) -> torch.Tensor:
    """Today's score: bilinear to the image, Gaussian σ (image pixels), max (optionally away from the border)."""
    full = F.interpolate(maps[:, None], size=(image_size, image_size), mode="bilinear", align_corners=False)
    full = _blur(full[:, 0], sigma)
    if inner:
        band = round(image_size * BORDER_FRACTION)
        full = full[:, band:-band, band:-band]
    return full.flatten(1).amax(1)


def _topk_mean(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    flat = maps.flatten(1)
    count = max(1, round(flat.shape[1] * fraction))
    return flat.topk(count, dim=1).values.mean(1)


def candidate_scores(train: torch.Tensor, test: torch.Tensor, image_size: int) -> dict[str, torch.Tensor]:
    """Every candidate image score of the test maps, from the training maps' statistics."""
    scores: dict[str, torch.Tensor] = {}
    scores["max (today)"] = _upsampled_max(test, image_size)
    for fraction in (0.01, 0.05):
        scores[f"top {fraction:.0%} mean"] = _topk_mean(test, fraction)
    for sigma in (0.0, 0.5, 1.0):
        tr, te = _blur(train, sigma), _blur(test, sigma)
        mean, std = tr.mean(0), tr.std(0)
        global_std = tr.std()
        floor = std.median()
        envelope = tr.amax(0)
        z_floor = (te - mean) / std.clamp_min(floor)
        z_pooled = (te - mean) / (std.pow(2) + global_std.pow(2)).sqrt()
        excess = (te - envelope).clamp_min(0)
        q99 = torch.quantile(tr.flatten(1), 0.99, dim=0).view_as(mean)
        for name, z in (("z median-floored", z_floor), ("z pooled", z_pooled)):
            scores[f"{name} σ{sigma:g}: max"] = z.flatten(1).amax(1)
            for fraction in (0.01, 0.05):
                scores[f"{name} σ{sigma:g}: top {fraction:.0%}"] = _topk_mean(z, fraction)
        scores[f"envelope excess σ{sigma:g}: max"] = excess.flatten(1).amax(1)
        scores[f"envelope excess σ{sigma:g}: sum"] = excess.flatten(1).sum(1)
        scores[f"envelope excess σ{sigma:g}: top 1%"] = _topk_mean(excess, 0.01)
        scores[f"envelope margin σ{sigma:g}: top 1%"] = _topk_mean(te - envelope, 0.01)
        scores[f"envelope margin σ{sigma:g}: top 3%"] = _topk_mean(te - envelope, 0.03)
        scores[f"envelope margin σ{sigma:g}: max"] = (te - envelope).flatten(1).amax(1)
        scores[f"mass above q99 σ{sigma:g}"] = (te - q99).clamp_min(0).flatten(1).sum(1)
        scores[f"count above q99 σ{sigma:g}"] = (te > q99).flatten(1).float().sum(1)
        scores[f"minus mean σ{sigma:g}: max"] = (te - mean).flatten(1).amax(1)
    scores["two blur scales (σ4 + σ16 max, ranks summed)"] = _rank(_upsampled_max(test, image_size, 4.0)) + _rank(
        _upsampled_max(test, image_size, 16.0)
    )
    return scores


def _rank(values: torch.Tensor) -> torch.Tensor:
    return values.argsort().argsort().float()


def _auroc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels.numpy(), scores.double().numpy()))


def evaluate(paths: list[Path], stats_from: str) -> list[dict[str, Any]]:
    """One row per (dump, candidate): image AUROC of the candidate."""
    rows = []
    for path in paths:
        dump = torch.load(path, weights_only=False)
        train = dump[stats_from]["d"] if stats_from in dump else dump["train"]["d"]
        test = dump["test"]
        for region, band in (("all", 0), ("inner", round(train.shape[-1] * BORDER_FRACTION))):
            tr, te = (m[:, band : m.shape[1] - band, band : m.shape[2] - band] for m in (train, test["d"]))
            for name, score in candidate_scores(tr, te, dump["image_size"] * tr.shape[-1] // train.shape[-1]).items():
                rows.append(
                    {
                        "dump": path.stem,
                        "stats": f"{stats_from}, {region}",
                        "candidate": name,
                        "image_AUROC": _auroc(score, test["labels"]),
                    }
                )
    return rows


def envelope_exceedance(path: Path) -> dict[str, Any]:
    """How often good test images rise above the envelope, against what exchangeable images would give.

    If the restorer fitted its training images better than unseen normal images, the envelope (their maximum) is
    too low and good test images exceed it more often than ``1 / (N + 1)`` per position (N training images).
    """
    dump = torch.load(path, weights_only=False)
    train, test = _blur(dump["train"]["d"], 0.5), _blur(dump["test"]["d"], 0.5)
    good = test[dump["test"]["labels"] == 0]
    envelope = train.amax(0)
    return {
        "dump": path.stem,
        "train_images": train.shape[0],
        "mean_d_train": float(train.mean()),
        "mean_d_good_test": float(good.mean()),
        "exceedance_good_test": float((good > envelope).float().mean()),
        "exchangeable": 1 / (train.shape[0] + 1),
    }


def pixel_report(path: Path, sigma: float = 4.0) -> list[dict[str, Any]]:
    """Pixel AUROC of the map (bilinear + Gaussian, as the model) per defect type, with its share of defect pixels."""
    from sklearn.metrics import roc_auc_score

    dump = torch.load(path, weights_only=False)
    test, size = dump["test"], dump["image_size"]
    maps = _blur(
        F.interpolate(test["d"][:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0], sigma
    )
    kinds = [Path(p).parent.name for p in test["paths"]]
    good = [i for i, kind in enumerate(kinds) if kind == "good"]
    total = int(test["masks"].sum())
    rows = []
    for kind in sorted(set(kinds) - {"good"}):
        index = [i for i, k in enumerate(kinds) if k == kind] + good
        masks = test["masks"][index].numpy().ravel()
        rows.append(
            {
                "dump": path.stem,
                "defect": kind,
                "images": len(index) - len(good),
                "share_of_defect_pixels": float(test["masks"][index].sum()) / max(total, 1),
                "pixel_AUROC_vs_good": float(roc_auc_score(masks, maps[index].numpy().ravel())),
            }
        )
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std of every candidate over the dumps (seeds)."""
    summary = []
    for key in dict.fromkeys((row["stats"], row["candidate"]) for row in rows):
        values = [row["image_AUROC"] for row in rows if (row["stats"], row["candidate"]) == key]
        summary.append(
            {
                "stats": key[0],
                "candidate": key[1],
                "image_AUROC_mean": statistics.fmean(values),
                "image_AUROC_std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "runs": len(values),
                "per_run": " / ".join(f"{v:.3f}" for v in values),
            }
        )
    return summary


def main() -> None:
    """Fit (or reuse) the dumps, score every candidate, write the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="tire")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="default: configs/model/mfrnet.yaml; 0 = untrained")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--stats-holdout", type=float, default=0.0)
    parser.add_argument("--refit", action="store_true")
    parser.add_argument("--evaluate-only", action="store_true")
    parser.add_argument("--keep-aspect", action="store_true", help="resize keeping the aspect ratio, pad to square")
    parser.add_argument("--pixel-report", action="store_true", help="also pixel AUROC per defect type")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.epochs is None:
        args.epochs = default_mfrnet_epochs()
    if args.evaluate_only:
        paths = sorted((args.output / "dumps").glob(f"{args.dataset}_s*.pt"))
    else:
        paths = [fit_and_dump(args, seed) for seed in args.seeds]
    rows = []
    for stats_from in ("train", "held_out"):
        rows += evaluate([p for p in paths if stats_from == "train" or "_h" in p.stem], stats_from)
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["dump"].split("_", 2)[-1], []).append(row)
    lines = []
    for tag, group in groups.items():
        for entry in summarise(group):
            lines.append(
                f"| {tag} | {entry['stats']} | {entry['candidate']} | {entry['image_AUROC_mean']:.3f} ± "
                f"{entry['image_AUROC_std']:.3f} | {entry['per_run']} |"
            )
    table = ["| fit | stats | candidate | image AUROC | per seed |", "|---|---|---|---|---|", *lines]
    exceedance = [envelope_exceedance(path) for path in paths]
    table += ["", "| dump | train images | mean d train | mean d good test | good test > envelope | 1/(N+1) |"]
    table += ["|---|---|---|---|---|---|"]
    table += [
        f"| {e['dump']} | {e['train_images']} | {e['mean_d_train']:.3f} | {e['mean_d_good_test']:.3f} | "
        f"{e['exceedance_good_test']:.4f} | {e['exchangeable']:.4f} |"
        for e in exceedance
    ]
    if args.pixel_report:
        table += [
            "",
            "| dump | defect | images | share of defect pixels | pixel AUROC (vs good) |",
            "|---|---|---|---|---|",
        ]
        for path in paths:
            table += [
                f"| {r['dump']} | {r['defect']} | {r['images']} | {r['share_of_defect_pixels']:.3f} | "
                f"{r['pixel_AUROC_vs_good']:.3f} |"
                for r in pixel_report(path)
            ]
    out = args.output / f"mfrnet_image_score_{args.dataset}.md"
    out.write_text("\n".join(table) + "\n")
    print("\n".join(table))


if __name__ == "__main__":
    main()
