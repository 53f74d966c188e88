# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""What the benchmark scripts share: paths, the real-data datamodules and lite0 models, timing, tables.

Each piece lives here once so that two scripts measuring the same thing build it the same way (a table comparing
``real_data.py`` with ``int8.py`` is only meaningful if both fit the same model on the same datamodule), and so that
no script reaches into another one's private helpers.

How the scripts import this module: every script uses absolute package imports
(``from benchmarks.common import write_table``, ``from benchmarks.int8 import ...``) and works both as
``python -m benchmarks.x`` and as ``python benchmarks/x.py`` from the repository root, without editing
``sys.path`` and without reinstalling the package:

* ``python -m benchmarks.x``: the current directory (the repository root) is on ``sys.path``, so ``benchmarks``
  is this package.
* ``python benchmarks/x.py``: Python puts ``benchmarks/`` itself on ``sys.path``, where the top-level name
  ``benchmarks`` finds ``benchmarks/benchmarks.py``, a shim that loads this package from its file and registers
  it in ``sys.modules``; the rest of the import then proceeds as under ``-m``.

Registering the repository root in the editable install instead (hatch ``dev-mode-dirs``) would need a reinstall
of every environment and would put the root's other folders (``tests``, ``docs``) on every interpreter's path.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import statistics
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# Data and weights shared by every checkout of this workplace (offline: nothing is downloaded).
SHARED = ROOT.parent / "shared"
DATASETS = {
    "tire": {"root": SHARED / "data" / "mvtec3d_rgb", "category": "tire"},
    "mt": {"root": SHARED / "data" / "magnetic_tile" / "mt", "category": "mt"},
}
WEIGHTS = SHARED / "weights" / "tf_efficientnet_lite0.in1k.safetensors"
MFRNET_CONFIG = ROOT / "configs" / "model" / "mfrnet.yaml"
MODELS = ("MFRNet", "PatchCore", "Padim", "MFRNet-repair")
BORDER_FRACTION = 1 / 16  # 16 px at 256²: one stride-16 feature cell (see real_data.py's docstring)


def default_mfrnet_epochs() -> int:
    """``trainer.max_epochs`` of the shipped default config, so that benchmarks train MFRNet as users would."""
    return int(yaml.safe_load(MFRNET_CONFIG.read_text())["trainer"]["max_epochs"])


# ------------------------------------------------------------------ real-data models and datamodules
def evaluator() -> Any:
    """The real-data test metrics: image AUROC (plain and away from the border), pixel AUROC and AUPROs.

    ``image_InnerMaxAUROC`` ranks images by the map's maximum inside a border band of ``BORDER_FRACTION``: on
    ``tire`` the band separates defective from good images by acquisition alone, so the plain AUROC can reward a
    model for firing on the border. ``pixel_LocationOnlyAUPRO`` is the AUPRO of the mean good-image map, the
    reference a model's AUPRO should be read against.
    """
    from anomalib.metrics import AUPRO, AUROC, Evaluator
    from torchmetrics.classification import BinaryROC

    from anomalib_crr.benchmark.metrics import LocationOnlyAUPRO

    class InnerMaxAUROC(AUROC):
        """Image AUROC of each anomaly map's maximum inside the border band."""

        def update(self, batch: Any, *args: Any, **kwargs: Any) -> None:
            del args, kwargs
            height, width = batch.anomaly_map.shape[-2:]
            rows, cols = round(height * BORDER_FRACTION), round(width * BORDER_FRACTION)
            inner = batch.anomaly_map[..., rows : height - rows, cols : width - cols].flatten(1).amax(dim=1)
            BinaryROC.update(self, inner, batch.gt_label.int())

    return Evaluator(
        test_metrics=[
            AUROC(fields=["pred_score", "gt_label"], prefix="image_"),
            InnerMaxAUROC(fields=["anomaly_map", "gt_label"], prefix="image_"),
            AUROC(fields=["anomaly_map", "gt_mask"], prefix="pixel_"),
            AUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", fpr_limit=0.3),
            LocationOnlyAUPRO(fields=["anomaly_map", "gt_mask"], prefix="pixel_", fpr_limit=0.3),
        ]
    )


def build_datamodule(dataset: str, batch_size: int, num_workers: int, keep_aspect_size: int | None = None) -> Any:
    """MVTecAD for tire (PNG); Folder for magnetic tile (grayscale JPEG, converted to RGB by anomalib's reader).

    ``keep_aspect_size``: resize each image (and mask) so that its longer side is this size and pad it with black
    to a square, instead of squashing it (images of very different aspect ratios, e.g. magnetic tile).
    """
    from anomalib.data import Folder, MVTecAD

    info = DATASETS[dataset]
    if not Path(info["root"]).is_dir():
        msg = f"Dataset folder not found: {info['root']}"
        raise SystemExit(msg)
    common: dict[str, Any] = {"train_batch_size": batch_size, "eval_batch_size": batch_size, "num_workers": num_workers}
    if keep_aspect_size is not None:
        from torchvision.transforms.v2 import CenterCrop, Compose, Resize

        side = keep_aspect_size
        common["augmentations"] = Compose([Resize(size=None, max_size=side, antialias=True), CenterCrop(side)])
    if dataset == "tire":
        return MVTecAD(root=info["root"], category=info["category"], **common)
    root = Path(info["root"])
    defects = sorted(p.name for p in (root / "test").iterdir() if p.is_dir() and p.name != "good")
    return Folder(
        name="magnetic_tile",
        root=root,
        normal_dir="train/good",
        normal_test_dir="test/good",
        abnormal_dir=[f"test/{d}" for d in defects],
        mask_dir=[f"ground_truth/{d}" for d in defects],
        extensions=(".jpg", ".JPG", ".png"),
        # Folder's default (from_test) moves half of the test images, a different half per model and seed, to
        # validation; MVTecAD (tire) tests on the whole set. Every model here is tested on the whole set.
        val_split_mode="same_as_test",
        **common,
    )


def build_model(name: str, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """A lite0 model of the real-data comparison (one of ``MODELS``) and a description of its configuration.

    Every model loads the same offline EfficientNet-Lite0 ImageNet weights (``WEIGHTS``) so that differences
    between rows come from the methods, not from the backbone. ``args`` needs ``image_size``, ``coreset`` and
    ``mfrnet_epochs``.
    """
    from anomalib.pre_processing import PreProcessor
    from torchvision.transforms.v2 import Compose, Normalize, Resize

    from anomalib_crr import MFRNet
    from anomalib_crr.models.mfrnet.components import load_backbone_weights

    size = (args.image_size, args.image_size)
    lite_norm = PreProcessor(
        transform=Compose([Resize(size, antialias=True), Normalize(mean=[0.5] * 3, std=[0.5] * 3)])
    )
    if name in {"MFRNet", "MFRNet-repair"}:
        model = MFRNet(
            backbone="tf_efficientnet_lite0",
            pre_trained=False,
            weights_path=WEIGHTS,
            repair=name == "MFRNet-repair",  # CRR's synthetic anomalies, restored toward the clean features
            dtd_dir=None,
            pre_processor=MFRNet.configure_pre_processor(size),
            evaluator=evaluator(),
        )
        hp = model.hparams
        config = (
            f"defaults: {'+'.join(model.model.aggregator.layers)} stride {model.model.aggregator.feature_stride}, "
            f"k={list(model.model.cell_sizes)}, restorer d{hp.stem_dim}/D{hp.embed_dim}/L{hp.depth}/p{hp.patch_size}, "
            f"lambda_ssim {hp.lambda_ssim:g}, {'whitened' if hp.whiten_residual else 'plain'} squared error, "
            f"{model.model.test_grid.value} test grid, {model.model.image_score.value} image score"
            + (", repair (synthetic anomalies -> clean features)" if hp.repair else "")
        )
        return model, {"config": config, "epochs": args.mfrnet_epochs}
    if name == "PatchCore":
        from anomalib.models import Patchcore

        model = Patchcore(
            backbone="tf_efficientnet_lite0",
            layers=("blocks.2", "blocks.4"),
            pre_trained=False,
            coreset_sampling_ratio=args.coreset,
            pre_processor=lite_norm,
            evaluator=evaluator(),
        )
        load_backbone_weights(model.model.feature_extractor.feature_extractor, WEIGHTS)
        return model, {"config": f"blocks.2+blocks.4, coreset {args.coreset}", "epochs": 1}
    if name == "Padim":
        from anomalib.models import Padim

        model = Padim(
            backbone="tf_efficientnet_lite0",
            layers=["blocks.1", "blocks.2", "blocks.4"],
            pre_trained=False,
            n_features=100,
            pre_processor=lite_norm,
            evaluator=evaluator(),
        )
        load_backbone_weights(model.model.feature_extractor.feature_extractor, WEIGHTS)
        return model, {"config": "blocks.1+blocks.2+blocks.4, 100 random features", "epochs": 1}
    msg = f"Unknown model {name!r}; choose from {MODELS}"
    raise SystemExit(msg)


@contextlib.contextmanager
def random_init_dinomaly() -> Iterator[Any]:
    """Inside this block anomalib's Dinomaly builds a random-init encoder; yields its ``torch_model`` module.

    Dinomaly hard-codes ``pre_trained=True`` (a download); the weights do not change the cost that the speed
    benchmarks measure, so its feature extractor is swapped for one that ignores the flag, and restored on exit.
    """
    import anomalib.models.image.dinomaly.torch_model as dinomaly_torch
    from anomalib.models.components.feature_extractors import TimmFeatureExtractor

    def random_init_extractor(*args: Any, **kwargs: Any) -> TimmFeatureExtractor:
        kwargs["pre_trained"] = False  # Dinomaly passes pre_trained=True explicitly
        return TimmFeatureExtractor(*args, **kwargs)

    original = dinomaly_torch.TimmFeatureExtractor
    dinomaly_torch.TimmFeatureExtractor = random_init_extractor
    try:
        yield dinomaly_torch
    finally:
        dinomaly_torch.TimmFeatureExtractor = original


# ------------------------------------------------------------------ timing and sizes
def interleaved_medians(
    candidates: dict[str, Callable[[], object]],
    runs: int,
    warmup: int,
    synchronize: Callable[[], None] | None = None,
    grad: bool = False,
    events: bool = False,
    verbose: bool = True,
) -> dict[str, float]:
    """Median seconds per call of each candidate, timed round-robin so load drifts hit all of them alike.

    Args:
        candidates: Name -> call to time.
        runs: Timed rounds.
        warmup: Untimed rounds first.
        synchronize: Called around each timed call (default: ``torch.cuda.synchronize`` when CUDA is present).
        grad: Keep autograd on (training steps); inference timings run under ``torch.inference_mode``.
        events: On CUDA, time each call with CUDA events (GPU time between the two records, so host-side
            jitter between the call and the synchronisation does not count); wall clock elsewhere.
        verbose: Print each round's times.
    """
    use_events = events and torch.cuda.is_available()
    if synchronize is None:
        synchronize = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    with torch.inference_mode(mode=not grad):
        for round_index in range(warmup + runs):
            for name, call in candidates.items():
                synchronize()
                if use_events:
                    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    begin.record()
                    call()
                    end.record()
                    synchronize()
                    elapsed = begin.elapsed_time(end) / 1000
                else:
                    start = time.perf_counter()
                    call()
                    synchronize()
                    elapsed = time.perf_counter() - start
                if round_index >= warmup:
                    times[name].append(elapsed)
            if verbose:
                print(
                    f"round {round_index}: " + ", ".join(f"{n}={v[-1]:.4f}s" for n, v in times.items() if v), flush=True
                )
    return {name: statistics.median(values) for name, values in times.items()}


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters of ``module`` (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


# ------------------------------------------------------------------ tables
def write_table(
    rows: list[dict[str, Any]],
    path: Path,
    title: str = "",
    notes: str = "",
    *,
    intro: str = "",
    float_format: str = ".4g",
    headers: Mapping[str, str] | None = None,
) -> None:
    """Write ``<path>.csv`` (full precision) and ``<path>.md`` (rounded, for reading), and print the markdown.

    The CSV is what later scripts and ``--append``/``--from-runs`` read back, so it keeps every digit; the markdown
    is for docs and reviews. Columns are the union of the rows' keys in first-seen order, so rows measured with
    different options (an extra column for some models) still share one table; a missing cell is left empty.

    Args:
        rows: One dict per table row; nothing is written when empty.
        path: Output path without suffix (``results/real_data_tire`` gives ``real_data_tire.csv`` and ``.md``);
            a dot in the name is kept, not taken for a suffix.
        title: Markdown heading (``# title``) above the table; none when empty.
        notes: Paragraph below the table (measurement conditions).
        intro: Paragraph above the table, below the title.
        float_format: Format spec for float cells in the markdown (``""``: ``str``).
        headers: Column name -> markdown header text, for the columns whose CSV name reads badly.
    """
    if not rows:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(key for row in rows for key in row))
    with path.parent.joinpath(f"{path.name}.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    names = [(headers or {}).get(key, key) for key in keys]
    lines = [f"# {title}", ""] if title else []
    lines += [intro, ""] if intro else []
    lines += ["| " + " | ".join(names) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [format(row[k], float_format) if isinstance(row.get(k), float) else str(row.get(k, "")) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    if notes:
        lines += ["", notes]
    path.parent.joinpath(f"{path.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def typed_row(row: Mapping[str, str]) -> dict[str, Any]:
    """A row read back from a ``write_table`` CSV with its numbers as numbers again (int, then float, else text)."""
    typed: dict[str, Any] = {}
    for key, value in row.items():
        try:
            typed[key] = int(value)
        except ValueError:
            try:
                typed[key] = float(value)
            except ValueError:
                typed[key] = value
    return typed
