# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""CRR on real features (EfficientNet-Lite0, ImageNet): the paper's ablation on real defects.

Next to PatchCore, PaDiM and MFRNet, on the same data, weights, image size (256²) and metrics.

Rows (``configs/model/crr_cnn.yaml`` for every CRR row, with the offline lite0 file):

* ``CRR reconstruction only``: ``repair=False, stage2_steps=0`` (no synthetic anomalies, no stage II: Dinomaly's
  recipe on the same network);
* ``CRR repair, no seg head``: the full CRR's stage-I network scored with the reconstruction map alone
  (``fusion_alpha=1``). Stage II freezes bottleneck and decoder, so this is exactly the ``stage2_steps=0`` model;
  it costs a second test pass, not a second fit;
* ``CRR full``: the preset (repair + segmentation head fused with α = 0.7);
* PatchCore, PaDiM and MFRNet as built by ``real_data.py`` (same lite0 file, same pre-processing size).

Metrics: image AUROC, ``image_AUROC_inner`` (the map's maximum inside a border band of 1/16; see ``real_data.py``),
pixel AUROC and AUPRO (FPR ≤ 30 %), fit time. **Identity-mapping measure** (CRR rows): over the defective test
images, the mean of the reconstruction map ``A_rec`` on defect pixels divided by its mean on the same images'
normal pixels; a decoder that learnt the identity reconstructs defects too and drives it toward 1.

Latency: batch-1 CPU inference of CRR (fused, and reconstruction map only), PaDiM and PatchCore (fitted, on the
same 256² input), timed round-robin in one process (median).

Usage::

    python benchmarks/crr_cnn_ablation.py --dataset tire --seeds 0 1 2
    python benchmarks/crr_cnn_ablation.py --dataset mt --seeds 0 1 --baselines Padim

Writes ``<output>/crr_cnn_<dataset>_runs.csv`` (every run), ``crr_cnn_<dataset>.csv``/``.md`` (mean ± std over
seeds) and ``crr_cnn_<dataset>_latency.csv``/``.md``.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks.common import (
    RESULTS,
    ROOT,
    WEIGHTS,
    build_datamodule,
    build_model,
    default_mfrnet_epochs,
    evaluator,
    interleaved_medians,
    typed_row,
    write_table,
)
from benchmarks.real_data import fit_timed, mfrnet_envelope_inner, result_row

PRESET = ROOT / "configs" / "model" / "crr_cnn.yaml"
CRR_ROWS = ("CRR reconstruction only", "CRR repair, no seg head", "CRR full")
SUMMARY_KEYS = (
    "image_AUROC",
    "image_AUROC_inner",
    "pixel_AUROC",
    "pixel_AUPRO",
    "identity_ratio",
    "fit_s",
)


def preset_arguments(**overrides: Any) -> dict[str, Any]:
    """``configs/model/crr_cnn.yaml``'s init args (without its pre-processor), the lite0 file, and overrides."""
    init_args = dict(yaml.safe_load(PRESET.read_text())["model"]["init_args"])
    init_args.pop("pre_processor", None)
    return {**init_args, "encoder_weights": str(WEIGHTS), **overrides}


def build_crr(image_size: int, **overrides: Any) -> Any:
    """The preset CRR at ``image_size``² with the real-data evaluator."""
    from anomalib_crr import CRR

    kwargs = preset_arguments(**overrides)
    pre_processor = CRR.configure_pre_processor(
        image_size=(image_size, image_size),
        encoder_name=kwargs["encoder_name"],
        target_layers=kwargs["target_layers"],
        token_stride=kwargs["token_stride"],
    )
    return CRR(**kwargs, pre_processor=pre_processor, evaluator=evaluator())


@torch.no_grad()
def identity_ratio(model: Any, datamodule: Any) -> float:
    """Mean ``A_rec`` on defect pixels / mean on the normal pixels of the same (defective) test images."""
    import torch.nn.functional as F  # noqa: N812

    network = model.model.eval()
    transform = model.pre_processor.transform
    on_defect, on_normal, defect_pixels, normal_pixels = 0.0, 0.0, 0, 0
    for batch in datamodule.test_dataloader():
        for image, mask, label in zip(batch.image, batch.gt_mask, batch.gt_label, strict=True):
            if not bool(label):
                continue
            resized = transform(image[None])
            encoder_maps, decoder_maps = network.extract_features(resized)
            rec = network.reconstruction_map(encoder_maps, decoder_maps)
            rec = F.interpolate(rec, size=resized.shape[-2:], mode="bilinear", align_corners=False)[0, 0]
            masks = F.interpolate(mask.reshape(1, 1, *mask.shape[-2:]).float(), size=rec.shape, mode="nearest")
            masks = masks[0, 0] > 0.5
            on_defect += float(rec[masks].sum())
            defect_pixels += int(masks.sum())
            on_normal += float(rec[~masks].sum())
            normal_pixels += int((~masks).sum())
    return (on_defect / max(defect_pixels, 1)) / (on_normal / max(normal_pixels, 1))


def _engine(output: Path, max_epochs: int | None = None) -> Any:
    from anomalib.engine import Engine

    epochs = {"max_epochs": max_epochs} if max_epochs else {}
    return Engine(
        default_root_dir=output / "runs",
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        **epochs,
    )


def run_crr(args: argparse.Namespace, seed: int, variant: str) -> list[dict[str, Any]]:
    """Fit one CRR variant (``reconstruction`` or ``full``) and test it; ``full`` also gives the no-seg row."""
    from lightning.pytorch import seed_everything

    seed_everything(seed, workers=True)
    overrides = {"repair": False, "stage2_steps": 0} if variant == "reconstruction" else {}
    model = build_crr(args.image_size, **overrides)
    datamodule = build_datamodule(args.dataset, args.batch_size, args.num_workers)
    engine = _engine(args.output)
    fit_s, load = fit_timed(engine, model, datamodule)
    hp = model.hparams
    config = (
        f"lite0 {'+'.join(hp.target_layers)} stride {hp.token_stride}, decoder {hp.decoder_dim}x{hp.decoder_depth}, "
        f"{hp.stage1_steps}+{hp.stage2_steps} steps, batch {args.batch_size}, seg width {hp.seg_base_width}"
    )
    run = {"seed": seed, "config": config, "epochs": "", "fit_s": fit_s, "load_avg_1min_at_start": load}
    rows = []
    names = (
        [("CRR reconstruction only", None)]
        if variant == "reconstruction"
        else [
            ("CRR full", None),
            ("CRR repair, no seg head", 1.0),
        ]
    )
    for name, alpha in names:
        if alpha is not None:
            model.model.fusion_alpha = alpha
        test_start = time.perf_counter()
        metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
        row = result_row({"model": name, **run}, metrics, time.perf_counter() - test_start)
        row["identity_ratio"] = identity_ratio(model, datamodule)
        rows.append(row)
        print(row, flush=True)
    model.model.fusion_alpha = hp.fusion_alpha
    args.fitted[f"CRR_{variant}"] = model
    return rows


def run_baseline(args: argparse.Namespace, seed: int, name: str) -> dict[str, Any]:
    """PatchCore, PaDiM or MFRNet as ``real_data.py`` builds them."""
    from lightning.pytorch import seed_everything

    seed_everything(seed, workers=True)
    model, info = build_model(name, args)
    datamodule = build_datamodule(args.dataset, args.batch_size, args.num_workers)
    engine = _engine(args.output, info.get("epochs"))
    start = time.perf_counter()
    fit_s, load = fit_timed(engine, model, datamodule)
    metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    run = {"model": name, "seed": seed, **info, "fit_s": fit_s, "load_avg_1min_at_start": load}
    row = result_row(run, metrics, time.perf_counter() - start)
    if name.startswith("MFRNet"):  # its image score is the envelope: inner = the envelope without the border band
        mfrnet_envelope_inner(row, model, datamodule, args, seed)
    args.fitted[name] = model
    print(row, flush=True)
    return row


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds per row name, with the seed count."""
    summary = []
    for name in dict.fromkeys(row["model"] for row in rows):
        runs = [row for row in rows if row["model"] == name]
        entry: dict[str, Any] = {"model": name, "n_seeds": len(runs), "seeds": " ".join(str(r["seed"]) for r in runs)}
        for key in SUMMARY_KEYS:
            values = [float(r[key]) for r in runs if r.get(key) not in (None, "")]
            if values:
                mean = statistics.fmean(values)
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                entry[key] = f"{mean:.3f} ± {std:.3f}" if key != "fit_s" else f"{mean:.0f} ± {std:.0f}"
        summary.append(entry)
    return summary


def run_latency(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Batch-1 inference of the fitted models on one 256² input, round-robin (median, ms)."""
    torch.set_num_threads(args.threads)
    images = torch.rand(1, 3, args.image_size, args.image_size)
    candidates = {}
    crr = args.fitted.get("CRR_full")
    if crr is None:  # built for timing only: the weights do not change the cost, an active seg head does
        crr = build_crr(args.image_size)
        crr.model.mark_seg_head_trained()
    network = crr.model.eval()
    candidates["CRR full (fused)"] = lambda: network(images)

    def reconstruction_only() -> Any:
        network.fusion_alpha = 1.0
        try:
            return network(images)
        finally:
            network.fusion_alpha = crr.hparams.fusion_alpha

    candidates["CRR reconstruction map only"] = reconstruction_only
    for name in ("Padim", "PatchCore"):
        if name in args.fitted:
            net = args.fitted[name].model.eval()
            normalize = args.fitted[name].pre_processor.transform.transforms[-1]
            candidates[name] = lambda net=net, normalize=normalize: net(normalize(images))
    load = os.getloadavg()[0]
    medians = interleaved_medians(candidates, runs=args.runs, warmup=3, synchronize=lambda: None)
    rows = []
    reference = medians.get("Padim")
    for name, median in medians.items():
        rows.append(
            {
                "model": name,
                "median_ms": median * 1e3,
                "ratio_to_padim": median / reference if reference else "",
                "threads": args.threads,
                "runs": args.runs,
                "load_avg_1min_at_start": load,
            }
        )
    return rows


def main() -> None:
    """Parse arguments, run the rows for every seed, write the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dataset", choices=["tire", "mt"], default="tire")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--variants", nargs="*", choices=["reconstruction", "full"], default=["reconstruction", "full"])
    parser.add_argument("--baselines", nargs="*", default=["PatchCore", "Padim", "MFRNet"])
    parser.add_argument("--baseline-seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--coreset", type=float, default=0.1)
    parser.add_argument("--mfrnet-epochs", type=int, default=None)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument(
        "--previous-runs", type=Path, default=None, help="a runs CSV of an earlier invocation to include in the tables"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.mfrnet_epochs is None:
        args.mfrnet_epochs = default_mfrnet_epochs()
    args.accelerator, args.fitted, args.dump_dir = "cpu", {}, None
    rows: list[dict[str, Any]] = []
    if args.previous_runs is not None:
        with args.previous_runs.open() as handle:
            rows = [typed_row(row) for row in csv.DictReader(handle)]
    stem = args.output / f"crr_cnn_{args.dataset}"
    for seed in args.seeds:
        for variant in args.variants:
            rows += run_crr(args, seed, variant)
            write_table(rows, Path(f"{stem}_runs"), f"CRR ablation on {args.dataset}: every run")
    for seed in args.baseline_seeds:
        for name in args.baselines:
            rows.append(run_baseline(args, seed, name))
            write_table(rows, Path(f"{stem}_runs"), f"CRR ablation on {args.dataset}: every run")
    write_table(summarize(rows), stem, f"CRR (lite0) ablation on {args.dataset}, 256², mean ± std over seeds")
    if not args.skip_latency:
        write_table(run_latency(args), Path(f"{stem}_latency"), f"Batch-1 CPU latency on {args.dataset}'s models")


if __name__ == "__main__":
    main()
