# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Deployment: INT8 quantisation of exported models, OpenVINO Model API serving, a cache-tidy inferencer."""

from .inferencer import OpenVINOInferencer, default_cache_dir
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
    "OpenVINOInferencer",
    "QuantizationCheckError",
    "UnfittedModelError",
    "default_cache_dir",
    "export_quantized_openvino",
    "load_model_api",
    "model_api_metadata",
    "predict_model_api",
    "quantize_openvino",
    "write_model_api_metadata",
]
