# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Deployment: INT8 quantisation of exported models and OpenVINO Model API serving."""

from .model_api import load_model_api, model_api_metadata, predict_model_api, write_model_api_metadata
from .quantization import (
    WHOLE_GRAPH,
    CalibrationDataError,
    QuantizationCheckError,
    UnfittedModelError,
    export_quantized_openvino,
    quantize_openvino,
)

__all__ = [
    "WHOLE_GRAPH",
    "CalibrationDataError",
    "QuantizationCheckError",
    "UnfittedModelError",
    "export_quantized_openvino",
    "load_model_api",
    "model_api_metadata",
    "predict_model_api",
    "quantize_openvino",
    "write_model_api_metadata",
]
