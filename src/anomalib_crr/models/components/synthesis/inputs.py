# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""What the synthesiser is given: the texture folder, the canvas it draws on, the foreground masks.

Kept out of the Lightning modules so that CRR and MFRNet (``repair=True``) resolve them the same way, with the
same errors.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from anomalib.data.utils import DownloadInfo, download_and_extract
from anomalib.pre_processing import PreProcessor
from torchvision.transforms.v2 import Resize

from anomalib_crr.models.components.transforms import flatten_transforms

from .foreground import ForegroundMaskFolder

# The Describable Textures Dataset, release 1.0.1: the archive DRAEM, GLASS and the official CRR code draw textures
# from (anomalib defines the same record in two Lightning modules; a Lightning module is no place to import it from).
DTD_DOWNLOAD_INFO = DownloadInfo(
    name="dtd-r1.0.1.tar.gz",
    url="https://www.robots.ox.ac.uk/~vgg/data/dtd/download/dtd-r1.0.1.tar.gz",
    hashsum="e42855a52a4950a3b59612834602aa253914755c95b0cff9ead6d07395f8e205",
)
TEXTURE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def resolve_texture_dir(dtd_dir: str | Path | None) -> Path | None:
    """The DTD folder, downloaded when it holds no images; ``None`` means Perlin-noise textures.

    Raises:
        RuntimeError: The folder is empty and the download failed; names the folder and the offline option. A folder
            this call created is removed again, so a failed download leaves nothing behind.
    """
    if dtd_dir is None:
        return None
    dtd_dir = Path(dtd_dir)
    if dtd_dir.is_dir() and any(p.suffix.lower() in TEXTURE_SUFFIXES for p in dtd_dir.rglob("*")):
        return dtd_dir
    created = not dtd_dir.exists()
    try:
        download_and_extract(dtd_dir, DTD_DOWNLOAD_INFO)
    except Exception as exc:
        if created and dtd_dir.is_dir() and not any(dtd_dir.iterdir()):
            shutil.rmtree(dtd_dir)
        msg = (
            f"dtd_dir '{dtd_dir}' holds no texture images and downloading DTD from {DTD_DOWNLOAD_INFO.url} "
            f"failed ({type(exc).__name__}: {exc}). Offline, pass dtd_dir=None (CLI: --model.dtd_dir null) to "
            "synthesise anomalies from Perlin-noise textures and the image itself, or point dtd_dir at a copy "
            "of DTD."
        )
        raise RuntimeError(msg) from exc
    return dtd_dir


def synthesis_canvas(pre_processor: object) -> tuple[int, int] | None:
    """The pre-processor's fixed resize size: the official CRR code synthesises there, before the centre crop."""
    if not isinstance(pre_processor, PreProcessor):
        return None
    sizes = [t.size for t in flatten_transforms(pre_processor.transform) if isinstance(t, Resize)]
    if sizes and isinstance(sizes[-1], Sequence) and len(sizes[-1]) == 2:
        return int(sizes[-1][0]), int(sizes[-1][1])
    return None


def open_foreground_masks(foreground: str | Path | None, pre_processor: object) -> ForegroundMaskFolder | None:
    """Check ``foreground`` and open its mask folder (``None`` for ``None`` and ``"auto"``).

    Raises:
        FileNotFoundError: ``foreground`` is neither ``None``, ``"auto"`` nor an existing folder; names it.
    """
    if foreground is None or foreground == "auto":
        return None
    folder = Path(foreground)
    if not folder.is_dir():
        msg = (
            f"foreground='{foreground}' is neither None, 'auto' nor an existing folder of foreground masks "
            "(a tree mirroring the dataset, e.g. <category>/train/good/000.png)"
        )
        raise FileNotFoundError(msg)
    transform = pre_processor.transform if isinstance(pre_processor, PreProcessor) else None
    return ForegroundMaskFolder(folder, transform=transform)
