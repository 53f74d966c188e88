# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Export defaults shared by the plugin's models: ONNX at opset 18, inference-only torch files."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Opset18OnnxExport:
    """Mixin for ``AnomalibModule`` subclasses: export defaults for deployment.

    * ``to_onnx`` targets opset 18 unless told otherwise: torch's dynamo exporter builds opset 18;
      anomalib's default target of 14 makes it attempt a down-conversion that fails for these graphs (with a
      long printed traceback) and keeps 18 anyway.
    * ``to_torch`` writes parameters that do not require gradients. anomalib's ``TorchInferencer`` calls
      the pickled module outside ``torch.no_grad()``; with trainable parameters (the decoder, restorer and
      segmentation head) every prediction would build an autograd graph, hold its activations, and return
      tensors on which ``.numpy()`` fails. The module being exported is left as it was.
    """

    def to_torch(self, export_root: Path | str, model_file_name: str = "model") -> Path:
        """Export the pickled module for ``TorchInferencer`` with ``requires_grad=False`` parameters."""
        parameters = list(self.parameters())  # type: ignore[attr-defined]
        trainable = [parameter.requires_grad for parameter in parameters]
        try:
            for parameter in parameters:
                parameter.requires_grad_(False)
            return super().to_torch(export_root, model_file_name=model_file_name)  # type: ignore[misc]
        finally:
            for parameter, requires_grad in zip(parameters, trainable, strict=True):
                parameter.requires_grad_(requires_grad)

    def to_onnx(
        self,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> Path:
        """Export to ONNX (opset 18 by default); see ``AnomalibModule.to_onnx``."""
        kwargs.setdefault("opset_version", 18)
        return super().to_onnx(export_root, model_file_name=model_file_name, input_size=input_size, **kwargs)  # type: ignore[misc]
