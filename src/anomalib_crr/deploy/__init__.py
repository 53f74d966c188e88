# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Deployment: inferencers that score raw files as the trained model does, INT8 quantisation, Model API serving."""

from .inferencer import OpenVINOInferencer, TorchInferencer, default_cache_dir
from .model_api import load_model_api, model_api_metadata, predict_model_api, write_model_api_metadata
from .quantization import (
    WHOLE_GRAPH,
    CalibrationDataError,
    QuantizationCheckError,
    UnfittedModelError,
    export_quantized_openvino,
    quantize_openvino,
)
from .raw_input import fit_raw_image

__all__ = [
    "WHOLE_GRAPH",
    "CalibrationDataError",
    "OpenVINOInferencer",
    "QuantizationCheckError",
    "TorchInferencer",
    "UnfittedModelError",
    "default_cache_dir",
    "export_quantized_openvino",
    "fit_raw_image",
    "load_model_api",
    "model_api_metadata",
    "predict_model_api",
    "quantize_openvino",
    "write_model_api_metadata",
]
