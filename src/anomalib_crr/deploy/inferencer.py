# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""``OpenVINOInferencer`` that keeps OpenVINO's compiled-model cache out of the working directory.

anomalib 2.7's ``OpenVINOInferencer`` creates ``openvino_cache/`` in the current directory on every load and
points OpenVINO's ``CACHE_DIR`` at it, so running a script from a project or data folder leaves a cache folder
there. This subclass reads and compiles the model as anomalib does, but puts the cache in the user's cache
directory (``$XDG_CACHE_HOME/anomalib_crr/openvino``, ``~/.cache/...`` by default), in a folder you pass, or
nowhere (``cache_dir=None``). Predictions are anomalib's, unchanged.

Example:
    >>> from anomalib_crr.deploy import OpenVINOInferencer
    >>> inferencer = OpenVINOInferencer("<run>/weights/openvino/model.xml", device="CPU")  # doctest: +SKIP
    >>> inferencer.predict("image.png")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from anomalib.deploy import OpenVINOInferencer as AnomalibOpenVINOInferencer

MODEL_SUFFIXES = {".xml", ".bin", ".onnx"}


def default_cache_dir() -> Path:
    """The per-user folder for OpenVINO's compiled models (``$XDG_CACHE_HOME`` or ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "anomalib_crr" / "openvino"


class OpenVINOInferencer(AnomalibOpenVINOInferencer):
    """anomalib's ``OpenVINOInferencer`` with OpenVINO's model cache outside the working directory.

    Args:
        path: ``.xml``/``.bin``/``.onnx`` file, or a ``(xml_bytes, bin_bytes)`` tuple, as for anomalib's class.
        device: OpenVINO device ("CPU", "GPU", "NPU", "AUTO").
        config: OpenVINO plugin properties, e.g. ``{"INFERENCE_PRECISION_HINT": "f32"}``.
        cache_dir: Folder for OpenVINO's compiled-model cache (faster second loads on GPU/NPU); ``"default"``: the
            per-user cache folder (:func:`default_cache_dir`); ``None``: no cache at all.
    """

    def __init__(
        self,
        path: str | Path | tuple[bytes, bytes],
        device: str = "AUTO",
        config: dict | None = None,
        cache_dir: str | Path | None = "default",
    ) -> None:
        self.cache_dir = default_cache_dir() if cache_dir == "default" else cache_dir
        super().__init__(path, device=device, config=config)

    def load_model(self, path: str | Path | tuple[bytes, bytes]) -> tuple[Any, Any, Any]:
        """Read and compile the model as anomalib does, with the cache in ``cache_dir`` (or none)."""
        import openvino as ov

        core = ov.Core()
        if isinstance(path, tuple):
            model = core.read_model(model=path[0], weights=path[1])
        else:
            path = Path(path)
            if path.suffix not in MODEL_SUFFIXES:
                msg = f"Path must be .onnx, .bin or .xml file. Got {path.suffix}"
                raise ValueError(msg)
            model = core.read_model(path.with_suffix(".xml")) if path.suffix == ".bin" else core.read_model(path)
        if self.cache_dir is not None:
            Path(self.cache_dir).mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(self.cache_dir)})
        compiled = core.compile_model(model=model, device_name=self.device, config=self.config)
        return compiled.input(0), compiled.output(0), compiled
