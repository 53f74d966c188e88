# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""ONNX export at opset 18 by default, shared by the plugin's models."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Opset18OnnxExport:
    """Mixin for ``AnomalibModule`` subclasses: ``to_onnx`` targets opset 18 unless told otherwise.

    torch's dynamo exporter builds opset 18; anomalib's default target of 14 makes it attempt a
    down-conversion that fails for these graphs (with a long printed traceback) and keeps 18 anyway.
    """

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
