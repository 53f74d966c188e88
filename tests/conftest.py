"""Shared fixtures: a tiny generated MVTec-style dataset and seeding."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
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


@pytest.fixture(scope="module")
def module_tmp_dir(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], Path]]:
    """``mktemp`` for module-scoped fixtures, whose folders are deleted when the module ends unless a test failed.

    Why: every CRR checkpoint carries the frozen ViT (130-380 MB per run folder with exports). pytest keeps
    ``tmp_path_factory`` folders until the session ends, so the suite once held 7-10 GB at its end and filled the
    CI machine's disk. Together with ``tmp_path_retention_policy = "failed"`` the peak is one module's runs.
    """
    failures_before = request.session.testsfailed
    created: list[Path] = []

    def make(name: str) -> Path:
        path = tmp_path_factory.mktemp(name)
        created.append(path)
        return path

    yield make
    if request.session.testsfailed == failures_before:
        for path in created:
            shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
