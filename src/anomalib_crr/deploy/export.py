# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Export mixins for any ``AnomalibModule``: ONNX at opset 18, inference-only torch files, working INT8, metadata.

CRR and MFRNet inherit :class:`Opset18OnnxExport`; ``anomalib-crr export`` gives anomalib's built-in models
:class:`QuantizedOpenVinoExport`. They live in ``deploy`` (not ``models/components``) because they call the
deployment code (quantisation, Model API metadata): shared model components never import ``deploy``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anomalib_crr.models.components.blur import separable_blurs

from .model_api import write_model_api_metadata
from .quantization import export_quantized_openvino

if TYPE_CHECKING:
    from anomalib.data import AnomalibDataModule
    from anomalib.deploy import CompressionType
    from torchmetrics import Metric

logger = logging.getLogger(__name__)

QUANTIZED_COMPRESSIONS = ("int8_ptq", "int8_acq")

# Loggers of the ONNX graph optimiser that torch's exporter runs: at INFO they print one line per deduplicated
# initializer ("Replaced initializer ..."), 129 lines for MFRNet, which buries the export's own messages.
CHATTY_EXPORT_LOGGERS = ("onnx_ir.passes", "onnxscript.optimizer", "onnxscript.rewriter")


@contextmanager
def quiet_export_logs(level: int = logging.WARNING) -> Iterator[None]:
    """Raise the ONNX optimiser's loggers to ``level`` for the export, unless the user set their level.

    Why: anomalib's ``configure_logger`` puts the root logger at INFO, so every exported graph prints its
    optimiser's per-initializer log. A logger whose level the user set (e.g. DEBUG to see it) is left alone.
    """
    changed = []
    for name in CHATTY_EXPORT_LOGGERS:
        chatty = logging.getLogger(name)
        if chatty.level == logging.NOTSET:
            changed.append(chatty)
            chatty.setLevel(level)
    try:
        yield
    finally:
        for chatty in changed:
            chatty.setLevel(logging.NOTSET)


class QuantizedOpenVinoExport:
    """Mixin for any ``AnomalibModule``: ``INT8_PTQ`` / ``INT8_ACQ`` OpenVINO export that works.

    ``to_openvino`` with ``INT8_PTQ`` / ``INT8_ACQ`` runs the plugin's quantisation
    (``anomalib_crr.deploy.quantization``): calibration images at the IR's input size, only ``int8_quantized_modules``
    quantised, and a check that refuses a model that lost its information. anomalib's own route fails on the image
    size and, once that is fixed, quantises the scoring and post-processing into constant outputs. The other
    precisions are anomalib's. Every ONNX and OpenVINO graph blurs its map separably (``to_onnx``).
    ``anomalib-crr export`` gives anomalib's built-in models this mixin too.
    """

    # Module paths whose ops nncf quantises; the rest of the graph (scoring, post-processing) stays in float.
    # ``None``: the model's backbone-like children (``deploy.quantization.default_quantized_modules``).
    int8_quantized_modules: Sequence[str] | None = None

    def to_onnx(
        self,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        **kwargs: Any,
    ) -> Path:
        """Export to ONNX with large Gaussian map blurs computed separably; see ``AnomalibModule.to_onnx``.

        Every ONNX and OpenVINO export passes here. anomalib's ``σ = 4`` map blur (33 × 33) was 45 % of PaDiM's
        FP32 IR time; ``separable_blurs`` writes the same function as two 1-D passes into the graph.
        """
        with separable_blurs(self) as swapped, quiet_export_logs():  # type: ignore[arg-type]
            if swapped:
                logger.info("Exporting %s as separable 1-D passes", ", ".join(swapped))
            return super().to_onnx(export_root, model_file_name=model_file_name, input_size=input_size, **kwargs)  # type: ignore[misc]

    def to_openvino(
        self,
        export_root: Path | str,
        model_file_name: str = "model",
        input_size: tuple[int, int] | None = None,
        compression_type: CompressionType | None = None,
        datamodule: AnomalibDataModule | None = None,
        metric: Metric | None = None,
        task: Any = None,
        max_drop: float = 0.01,
        ov_kwargs: dict[str, Any] | None = None,
        onnx_kwargs: dict[str, Any] | None = None,
    ) -> Path:
        """Export an OpenVINO IR; see ``AnomalibModule.to_openvino`` (``INT8_PTQ``/``INT8_ACQ``: see the class)."""
        compression = getattr(compression_type, "value", compression_type)
        if compression is not None and str(compression).lower() in QUANTIZED_COMPRESSIONS:
            xml_path = export_quantized_openvino(
                self,  # type: ignore[arg-type]
                export_root,
                str(compression).upper(),
                datamodule,
                model_file_name=model_file_name,
                input_size=input_size,
                metric=metric,
                max_drop=max_drop,
                ov_kwargs=ov_kwargs,
                onnx_kwargs=onnx_kwargs,
            )
        else:
            xml_path = super().to_openvino(  # type: ignore[misc]
                export_root,
                model_file_name=model_file_name,
                input_size=input_size,
                compression_type=compression_type,
                datamodule=datamodule,
                metric=metric,
                task=task,
                max_drop=max_drop,
                ov_kwargs=ov_kwargs,
                onnx_kwargs=onnx_kwargs,
            )
        # OpenVINO Model API (Geti, anomalib's deployment docs) reads these; anomalib 2.7 writes none.
        try:
            write_model_api_metadata(xml_path, self, task=task)  # type: ignore[arg-type]
        except ValueError as error:  # e.g. post-processing off: the IR works, Model API cannot serve it
            logger.warning("No OpenVINO Model API metadata written to %s: %s", xml_path, error)
        return xml_path


class Opset18OnnxExport(QuantizedOpenVinoExport):
    """Mixin for ``AnomalibModule`` subclasses: export defaults for deployment.

    * ``to_onnx`` targets opset 18 unless told otherwise: torch's dynamo exporter builds opset 18;
      anomalib's default target of 14 makes it attempt a down-conversion that fails for these graphs (with a
      long printed traceback) and keeps 18 anyway.
    * ``to_torch`` writes parameters that do not require gradients. anomalib's ``TorchInferencer`` calls
      the pickled module outside ``torch.no_grad()``; with trainable parameters (the decoder, restorer and
      segmentation head) every prediction would build an autograd graph, hold its activations, and return
      tensors on which ``.numpy()`` fails. The module being exported is left as it was.
    * ``to_openvino``: see ``QuantizedOpenVinoExport``.
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
