# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""anomalib's inferencers, scoring a user's raw files as the trained model does, with no cache in the working directory.

Both classes resize a raw image (any file size) with the trained pre-processor's own first ``Resize`` before the
exported graph (see :mod:`anomalib_crr.deploy.raw_input`): anomalib's classes feed the file as it is, so a
static-size IR refuses it and a dynamic one (or the ``.pt`` export) resizes it without antialiasing, which moved
normalised scores by up to 0.22 on raw ``tire`` files. With the resize here, scores, labels and maps equal
``Engine.predict``'s on the same file (tested to 1e-3 on the scores; measured in ``docs/deployment.md``).

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

import numpy as np
import torch
from anomalib.deploy import OpenVINOInferencer as AnomalibOpenVINOInferencer
from anomalib.deploy import TorchInferencer as AnomalibTorchInferencer

from .raw_input import first_resize, fit_raw_image, ir_raw_resize, static_input_size

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
        self.raw_resize = ir_raw_resize(model)
        self.input_size = static_input_size(model)
        return compiled.input(0), compiled.output(0), compiled

    def predict(self, image: str | Path | np.ndarray | Any) -> Any:
        """Score ``image`` with anomalib's ``predict`` after resizing it as the trained pre-processor does.

        Args:
            image: A path, an ``(H, W, C)`` array (``uint8`` or [0, 1]), a PIL image or a ``(C, H, W)`` tensor in
                [0, 1], at any size.

        Returns:
            NumpyImageBatch: ``pred_score``, ``pred_label``, ``anomaly_map``, ``pred_mask`` (and the resized image).

        Raises:
            ValueError: If the resized image does not have the size of an IR exported with another ``input_size``
                than the model's resize (the message names both).
        """
        batch = fit_raw_image(_as_tensor(image), self.raw_resize)
        if self.input_size is not None and tuple(batch.shape[-2:]) != self.input_size:
            msg = (
                f"this IR takes {self.input_size[0]}x{self.input_size[1]} images, but the trained model resizes "
                f"images to {batch.shape[-2]}x{batch.shape[-1]}: re-export it with --input_size "
                f"[{batch.shape[-2]},{batch.shape[-1]}] (or without --input_size) to score raw images as it does"
            )
            raise ValueError(msg)
        return super().predict(batch.numpy())


class TorchInferencer(AnomalibTorchInferencer):
    """anomalib's ``TorchInferencer`` (``.pt`` exports) with the trained pre-processor's resize for raw images.

    anomalib's exported module resizes inside its ``forward`` with antialiasing switched off (the exportable
    transform); this resizes the raw image first with the training transform's first ``Resize``, so the module's
    own resize is the identity and the result equals ``Engine.predict``'s on the same file. Loading needs
    ``TRUST_REMOTE_CODE=1``, as for anomalib's class (a pickled module is code).
    """

    def load_model(self, path: str | Path) -> torch.nn.Module:
        """Load the exported module as anomalib does and keep its pre-processor's first ``Resize``."""
        model = super().load_model(path)
        self.raw_resize = first_resize(model)
        return model

    def predict(self, image: str | Path | np.ndarray | Any) -> Any:
        """Score ``image`` with anomalib's ``predict`` after resizing it as in training (see the class docstring)."""
        return super().predict(fit_raw_image(_as_tensor(image), self.raw_resize).to(self.device))


def _as_tensor(image: str | Path | np.ndarray | Any) -> torch.Tensor | np.ndarray:
    """A path or PIL image read as anomalib's inferencers read them (float in [0, 1]); arrays and tensors as given."""
    from anomalib.data.utils import read_image
    from PIL.Image import Image as PILImage

    if isinstance(image, (str, Path)):
        return read_image(image, as_tensor=True)
    if isinstance(image, PILImage):
        return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    return image


__all__ = ["OpenVINOInferencer", "TorchInferencer", "default_cache_dir"]
