# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Fit the real-data models that ``benchmarks/int8.py`` deploys, and keep their weights.

The models and datamodules are those of ``benchmarks/real_data.py`` (EfficientNet-Lite0 ImageNet weights from
``shared/weights``, 256², MFRNet with its shipped defaults and epochs, PatchCore coreset 0.1, PaDiM 100 features),
fitted with anomalib's Engine for one seed. Each fit's ``state_dict`` goes to ``<ckpt-dir>/<dataset>_<model>.pt``;
an existing file is kept (delete it to refit).

Usage::

    python benchmarks/int8_fit.py --datasets tire mt --models MFRNet PatchCore Padim
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import MODELS, RESULTS, build_datamodule, build_model, default_mfrnet_epochs

DEFAULT_CKPT_DIR = RESULTS / "int8_models"


def model_args(image_size: int = 256, coreset: float = 0.1, mfrnet_epochs: int | None = None) -> argparse.Namespace:
    """The ``common.build_model`` arguments used for every INT8 measurement."""
    epochs = default_mfrnet_epochs() if mfrnet_epochs is None else mfrnet_epochs
    return argparse.Namespace(image_size=image_size, coreset=coreset, mfrnet_epochs=epochs)


def checkpoint_path(ckpt_dir: Path, dataset: str, name: str) -> Path:
    """Where the fitted weights of one (dataset, model) live."""
    return ckpt_dir / f"{dataset}_{name}.pt"


def load_fitted(ckpt_dir: Path, dataset: str, name: str, args: argparse.Namespace, path: Path | None = None) -> Any:
    """The model of ``common.build_model`` with the fitted weights (memory bank, statistics, thresholds)."""
    model, _ = build_model(name, args)
    path = checkpoint_path(ckpt_dir, dataset, name) if path is None else path
    state = torch.load(path, map_location="cpu", weights_only=True)
    for buffer_name, buffer in list(model.named_buffers()):  # buffers sized by the fit (MFRNet's envelope) start empty
        if buffer_name in state and buffer.numel() == 0 and state[buffer_name].numel() > 0:
            owner, _, leaf = buffer_name.rpartition(".")
            model.get_submodule(owner).register_buffer(leaf, torch.empty_like(state[buffer_name]))
    model.load_state_dict(state)
    return model.eval()


def fit(dataset: str, name: str, args: argparse.Namespace, ckpt_dir: Path, seed: int) -> float:
    """Fit one model with anomalib's Engine and save its weights; returns the fit time in seconds."""
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    seed_everything(seed, workers=True)
    model, info = build_model(name, args)
    datamodule = build_datamodule(dataset, batch_size=8, num_workers=2)
    engine = Engine(
        default_root_dir=ckpt_dir / "runs",
        max_epochs=info["epochs"],
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
    )
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    seconds = time.perf_counter() - start
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), checkpoint_path(ckpt_dir, dataset, name))
    return seconds


def main() -> None:
    """Fit every missing (dataset, model) pair."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--datasets", nargs="+", default=["tire", "mt"])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--ckpt-dir", type=Path, default=DEFAULT_CKPT_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mfrnet-epochs", type=int, default=None)
    args = parser.parse_args()
    margs = model_args(mfrnet_epochs=args.mfrnet_epochs)
    for dataset in args.datasets:
        for name in args.models:
            path = checkpoint_path(args.ckpt_dir, dataset, name)
            if path.is_file():
                print(f"{path.name}: kept", flush=True)
                continue
            seconds = fit(dataset, name, margs, args.ckpt_dir, args.seed)
            print(f"{path.name}: fitted in {seconds:.0f} s", flush=True)


if __name__ == "__main__":
    main()
