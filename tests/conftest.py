"""Shared fixtures: a tiny generated MVTec-style dataset and seeding."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from .helpers import TINY_IMAGE

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated category ('washer'): 8 train, 2 good + 2 scratch + 2 stain test images, 64 px."""
    from anomalib_crr.data import make_synthetic_mvtec

    root = tmp_path_factory.mktemp("mvtec")
    return make_synthetic_mvtec(
        root, categories=["washer"], num_train=8, num_test_good=2, num_test_defect=2, image_size=TINY_IMAGE, seed=0
    )


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
