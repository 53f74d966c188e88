# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Write the report files of a run folder as one unit, so a reader never sees old and new files mixed.

Why: a report written file by file and stopped by an error halfway (as a picture that failed to draw did)
leaves ``results.csv`` from this run next to ``report.md`` from the last one, and the folder contradicts
itself. Here every file is first written into ``<run>/.report-staging/``. When all of them exist, a
``manifest.json`` (the run's time stamp, each file's size and sha256, and any section that failed) is added,
and the staging folder is renamed to ``.report-ready/`` in one ``rename``: the commit point. Then each file is
renamed into the run folder, files of the previous report that the new one no longer has are removed, and the
manifest is moved last.

* A failure before the commit point leaves the previous report untouched (the staging folder is discarded).
* A process killed between the commit point and the last rename leaves ``.report-ready/``;
  :func:`finish_pending` (called before every report and at the start of every run) completes the move, so the
  folder ends with the new set. Until then ``manifest.json`` still lists the previous set, and its sha256 sums
  show which files already changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

STAGING = ".report-staging"
READY = ".report-ready"
MANIFEST = "manifest.json"
# Report files written before manifests existed: removed when a new report no longer has them.
LEGACY_PATTERNS = (
    "grid_*.png",
    "grid_*.pdf",
    "scores_*.png",
    "accuracy_vs_latency.png",
    "image_auroc_per_category.png",
)


def sha256(path: Path) -> str:
    """The file's sha256 (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(out: Path) -> dict[str, Any] | None:
    """The run folder's current ``manifest.json`` (``None`` without one, or an unreadable one)."""
    path = out / MANIFEST
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def start(out: Path) -> Path:
    """A fresh, empty staging folder in ``out`` (after completing any report a killed process left)."""
    finish_pending(out)
    staging = out / STAGING
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def discard(out: Path) -> None:
    """Drop a staging folder whose report failed; the previous report stays as it was."""
    shutil.rmtree(out / STAGING, ignore_errors=True)


def commit(out: Path, written: str, failed: dict[str, str] | None = None) -> dict[str, Any]:
    """Record every staged file in a manifest, then move the staged set into ``out`` as one unit.

    Args:
        out: The run folder.
        written: The report's time stamp (ISO 8601, UTC), the same one its files show.
        failed: Sections that could not be written, by name, with the error (e.g. ``pictures``).

    Returns:
        The manifest now in ``out/manifest.json``.
    """
    staging = out / STAGING
    files = sorted(p for p in staging.iterdir() if p.is_file() and p.name != MANIFEST)
    manifest = {
        "written": written,
        "files": {p.name: {"bytes": p.stat().st_size, "sha256": sha256(p)} for p in files},
        "failed": dict(failed or {}),
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.rmtree(out / READY, ignore_errors=True)  # finish_pending ran in start(): nothing is lost
    os.replace(staging, out / READY)  # the commit point
    finish_pending(out)
    return manifest


def finish_pending(out: Path) -> bool:
    """Complete a committed report whose files were not all moved into place; returns whether there was one."""
    ready = out / READY
    if not (ready / MANIFEST).is_file():
        shutil.rmtree(ready, ignore_errors=True)  # renamed without a manifest cannot happen; never half-use it
        return False
    new = json.loads((ready / MANIFEST).read_text())
    for name in new["files"]:
        if (ready / name).is_file():  # already moved when an earlier attempt stopped part-way
            os.replace(ready / name, out / name)
    old = set((read_manifest(out) or {}).get("files", {}))
    old |= {p.name for pattern in LEGACY_PATTERNS for p in out.glob(pattern)}
    for name in sorted(old - set(new["files"])):
        (out / name).unlink(missing_ok=True)
    os.replace(ready / MANIFEST, out / MANIFEST)
    shutil.rmtree(ready, ignore_errors=True)
    return True
