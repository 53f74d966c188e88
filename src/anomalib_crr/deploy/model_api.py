# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Serve exported anomalib OpenVINO IRs with the OpenVINO Model API (``openvino-model-api``).

Over 400 lines on purpose: the rt_info writer and the Model API loader must agree key for key, so they live in one file.

Intel Geti and anomalib's deployment docs serve anomaly models with Model API's ``AnomalyDetection`` wrapper.
That wrapper reads its configuration from the IR's runtime info (``rt_info``, section ``model_info``), but
anomalib 2.7's ``to_openvino`` writes no ``rt_info`` at all, for built-in models too. Model API then loads the IR
with its defaults, which disagree with the IR's input contract:

* it feeds ``uint8`` pixels in 0-255 where anomalib IRs expect ``float32`` in [0, 1] (``intensity_mode`` "none"),
  so scores and maps saturate;
* it feeds the channels in the order it is given, and Model API's convention is OpenCV's BGR
  (``cv2.imread``), whereas anomalib models are trained on RGB (``reverse_input_channels``);
* ``labels``, ``task`` and the thresholds keep placeholder values.

:func:`write_model_api_metadata` writes those entries into an exported IR (in place, weights untouched), derived
from the model that was exported. With them, plain Model API (``Model.create_model(xml)``) reproduces anomalib's
``OpenVINOInferencer`` on the same pixels: the same score and label, and the same map up to Model API's own
presentation of it (see :func:`predict_model_api`).

Two differences remain in Model API's ``AnomalyDetection.postprocess`` itself and cannot be fixed by metadata,
because the IR's outputs already hold anomalib's post-processed values (normalised score and map, label, mask),
which that method passes through:

* ``pred_label`` is the string ``"True"``/``"False"`` (``str()`` of the IR's boolean), not a bool;
* the map is rounded to ``uint8`` (0-255) and resized with OpenCV to the *input image's* size. For a model whose
  pre-processor crops (CRR: resize 448 → centre-crop 392), the IR's map covers only the crop, and Model API
  stretches it over the whole uncropped frame, misplacing every pixel but the centre.

:func:`predict_model_api` therefore runs Model API's own pre-processing and inference but returns the IR's outputs
as ``OpenVINOInferencer`` does (an anomalib ``NumpyImageBatch``: boolean label, float map in [0, 1] at the IR's
output size, the crop's map left unstretched). :func:`load_model_api` creates the Model API wrapper with an
explicit OpenVINO plugin configuration (e.g. ``INFERENCE_PRECISION_HINT``), which ``Model.create_model`` cannot
take, and fills in anomalib's input conventions for IRs exported without this metadata.

Example:
    >>> from anomalib_crr.deploy.model_api import (  # doctest: +SKIP
    ...     load_model_api, predict_model_api, write_model_api_metadata)
    >>> xml = engine.export(model, ExportType.OPENVINO, "export", input_size=(256, 256))  # doctest: +SKIP
    >>> write_model_api_metadata(xml, model)  # doctest: +SKIP
    >>> model_api_model = load_model_api(xml, device="CPU")  # doctest: +SKIP
    >>> result = model_api_model(cv2.imread("image.png"))  # Model API's AnomalyResult  # doctest: +SKIP
    >>> batch = predict_model_api(model_api_model, "image.png")  # OpenVINOInferencer's conventions  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import os
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .raw_input import (
    RAW_RESIZE_KEY,
    first_resize,
    fit_raw_image,
    ir_raw_resize,
    leaf_transforms,
    resize_spec,
    static_input_size,
)

if TYPE_CHECKING:
    from anomalib.data import NumpyImageBatch
    from anomalib.models import AnomalibModule
    from model_api.models import AnomalyDetection

logger = logging.getLogger(__name__)

INSTALL_HINT = 'pip install "anomalib-crr[openvino]"'

#: The outputs of an anomalib IR with its post-processor. Model API's ``AnomalyDetection`` passes them through only
#: when all four exist; otherwise it treats the first output as a raw anomaly map.
ANOMALIB_OUTPUTS = ("pred_score", "pred_label", "anomaly_map", "pred_mask")
LABELS = ("Normal", "Anomaly")
_TASKS = ("classification", "detection", "segmentation")
# torchvision InterpolationMode value -> Model API interpolation_mode.
_INTERPOLATION = {"bilinear": "LINEAR", "bicubic": "CUBIC", "nearest": "NEAREST", "nearest-exact": "NEAREST"}
# Transforms that do not move pixels: the map region can still be traced through them.
_NON_GEOMETRIC = {"Normalize", "ToDtype", "ConvertImageDtype", "ToImage", "ToPureTensor", "Identity"}
# Model API parameters that make the IR's input contract explicit: anomalib IRs take RGB float32 in [0, 1], NCHW.
_INPUT_CONVENTIONS = {
    "input_dtype": "u8",
    "intensity_mode": "scale_to_unit",
    "intensity_max_value": 255.0,
    "reverse_input_channels": True,
}


def _import(module: str, purpose: str) -> Any:
    """Import ``module`` or raise a ``ModuleNotFoundError`` that names the extra to install."""
    try:
        return import_module(module)
    except ModuleNotFoundError as error:
        package = "openvino-model-api" if module.startswith("model_api") else module.split(".", maxsplit=1)[0]
        msg = f"{purpose} needs the '{package}' package, which is not installed. Install it with: {INSTALL_HINT}"
        raise ModuleNotFoundError(msg, name=error.name) from error


def _format(value: Any) -> str:
    """Serialise a value the way Model API's ``from_str`` parses it (``"True"``, ``"0.5"``, ``"Normal Anomaly"``)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return " ".join(_format(item) for item in value)
    return str(value)


def _float(value: Any, default: float = float("nan")) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _pre_processor_transforms(model: AnomalibModule) -> list[Any]:
    pre_processor = getattr(model, "pre_processor", None)
    transform = getattr(pre_processor, "export_transform", None) or getattr(pre_processor, "transform", None)
    return list(leaf_transforms(transform))


def _resize_settings(transforms: list[Any]) -> tuple[str, str]:
    """Model API ``resize_type`` and ``interpolation_mode`` that stand in for the pre-processor's first ``Resize``.

    Model API must bring an image of any size to the IR's fixed input size before the IR's own pre-processor runs.
    A ``Resize`` to (height, width) stretches the image: Model API's "standard". A ``Resize`` of the shorter side
    keeps the aspect ratio, and the crop that follows it takes the centre: Model API's "crop" (centre-crop to the
    input's aspect ratio, then resize). Without a ``Resize`` the IR takes its input size as is: "standard".
    """
    for transform in transforms:
        if not type(transform).__name__.endswith("Resize"):
            continue
        interpolation = getattr(transform, "interpolation", None)
        mode = _INTERPOLATION.get(str(getattr(interpolation, "value", interpolation)).lower(), "LINEAR")
        size = getattr(transform, "size", None)
        keeps_aspect = size is None or isinstance(size, int) or len(size) == 1
        return ("crop" if keeps_aspect else "standard"), mode
    return "standard", "LINEAR"


def _pair(size: Any) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    size = list(size)
    return (int(size[0]), int(size[0])) if len(size) == 1 else (int(size[0]), int(size[1]))


def _map_region(transforms: list[Any], input_size: tuple[int, int]) -> tuple[int, int, int, int] | None:
    """The box (x0, y0, x1, y1) of the IR's input frame that the IR's anomaly map covers.

    Traced through ``Resize`` and ``CenterCrop`` (torchvision's rounding); ``None`` when another transform could
    move pixels. The full frame for models that do not crop; the crop for CRR.
    """
    height, width = input_size
    x0, y0, x1, y1 = 0.0, 0.0, float(width), float(height)
    current_h, current_w = float(height), float(width)
    for transform in transforms:
        name = type(transform).__name__
        if name in _NON_GEOMETRIC:
            continue
        if name.endswith("Resize"):
            size = getattr(transform, "size", None)
            if size is None:
                return None
            if isinstance(size, int) or len(size) == 1:
                short = _pair(size)[0]  # torchvision: the shorter side becomes `short`, the longer is floored
                if current_h <= current_w:
                    current_h, current_w = short, int(short * current_w / current_h)
                else:
                    current_h, current_w = int(short * current_h / current_w), short
            else:
                current_h, current_w = _pair(size)
        elif name.endswith("CenterCrop"):  # anomalib's export transform uses ExportableCenterCrop
            crop_h, crop_w = _pair(transform.size)
            if crop_h > current_h or crop_w > current_w:
                return None  # torchvision pads: the map would cover more than the frame
            top, left = round((current_h - crop_h) / 2), round((current_w - crop_w) / 2)
            scale_y, scale_x = (y1 - y0) / current_h, (x1 - x0) / current_w
            x0, y0 = x0 + left * scale_x, y0 + top * scale_y
            x1, y1 = x0 + crop_w * scale_x, y0 + crop_h * scale_y
            current_h, current_w = crop_h, crop_w
        else:
            return None
    return round(x0), round(y0), round(x1), round(y1)


def _task(model: AnomalibModule, task: Any) -> str:
    """The Model API task: given, or "segmentation" when the model is evaluated on pixels (or not evaluated)."""
    if task is not None:
        value = str(getattr(task, "value", task)).lower()
        if value not in _TASKS:
            msg = f"task must be one of {_TASKS}, got {task!r}"
            raise ValueError(msg)
        return value
    evaluator = getattr(model, "evaluator", None)
    metrics = [*getattr(evaluator, "val_metrics", []), *getattr(evaluator, "test_metrics", [])]
    if not metrics:
        return "segmentation"  # the IR outputs a map and a mask
    pixel = any(
        {"anomaly_map", "gt_mask", "pred_mask"} & set(getattr(metric, "fields", ()) or ()) for metric in metrics
    )
    return "segmentation" if pixel else "classification"


def model_api_metadata(
    model: AnomalibModule,
    input_size: tuple[int, int] | None = None,
    task: str | None = None,
) -> dict[tuple[str, str], Any]:
    """The ``rt_info`` entries :func:`write_model_api_metadata` writes, keyed by (section, name).

    Section ``model_info`` holds Model API ``AnomalyDetection`` parameters:

    * ``model_type`` "AnomalyDetection", ``labels`` "Normal Anomaly", ``task``;
    * the input contract: ``input_dtype`` u8, ``intensity_mode`` scale_to_unit with ``intensity_max_value`` 255
      (0-255 pixels become anomalib's [0, 1]), ``reverse_input_channels`` True (Model API takes OpenCV's BGR,
      anomalib models RGB), and ``resize_type`` / ``interpolation_mode`` for images of another size than the IR's
      input (see ``_resize_settings``);
    * ``image_threshold``, ``pixel_threshold`` and ``normalization_scale`` in the units of the IR's outputs. The IR
      holds anomalib's post-processor, so its ``pred_score`` and ``anomaly_map`` are already min-max normalised
      around the thresholds, and its labels compare them with the post-processor's *normalised* thresholds
      (0.5 unless a sensitivity is set); the scale is 1. Writing the raw thresholds here (as OTX does for IRs that
      output raw maps) would describe numbers this IR never outputs.

    Section ``anomalib`` keeps the raw calibration for reference (``image_threshold``, ``pixel_threshold``,
    ``image_min/max``, ``pixel_min/max`` from the post-processor's buffers, ``normalized``), the exported
    ``model_class``, and ``map_region``: the box of the input frame the IR's map covers (for CRR the centre crop),
    which Model API's own result stretches over the whole frame.

    Args:
        model: The exported model (its post-processor, pre-processor and evaluator are read).
        input_size: The IR's input (height, width), for ``map_region``; omitted when ``None``.
        task: "classification", "segmentation" or "detection" (Model API computes boxes from the mask for
            "detection"). ``None``: "segmentation" if the model's evaluator has pixel metrics or no metrics.

    Returns:
        dict[tuple[str, str], Any]: ``{(section, name): value}``.
    """
    post_processor = getattr(model, "post_processor", None)
    raw = {
        name: _float(getattr(post_processor, name, None))
        for name in ("image_threshold", "pixel_threshold", "image_min", "image_max", "pixel_min", "pixel_max")
    }
    enabled = bool(getattr(post_processor, "enable_normalization", False))
    normalized = enabled and all(np.isfinite(raw[name]) for name in ("image_min", "image_max"))
    if post_processor is None or not normalized:
        logger.warning(
            "%s has no fitted normalisation (post-processor %s): its IR outputs raw scores and maps, not values in "
            "[0, 1], and Model API's uint8 map (value x 255) will be clipped or wrap around. Fit or validate the "
            "model before exporting it.",
            type(model).__name__,
            "missing" if post_processor is None else ("disabled" if not enabled else "without min/max statistics"),
        )
    resize_type, interpolation = _resize_settings(transforms := _pre_processor_transforms(model))
    entries: dict[tuple[str, str], Any] = {
        ("model_info", "model_type"): "AnomalyDetection",
        ("model_info", "labels"): list(LABELS),
        ("model_info", "task"): _task(model, task),
        **{("model_info", name): value for name, value in _INPUT_CONVENTIONS.items()},
        ("model_info", "resize_type"): resize_type,
        ("model_info", "interpolation_mode"): interpolation,
        ("model_info", "image_threshold"): _float(getattr(post_processor, "normalized_image_threshold", None), 0.5),
        ("model_info", "pixel_threshold"): _float(getattr(post_processor, "normalized_pixel_threshold", None), 0.5),
        ("model_info", "normalization_scale"): 1.0,
        **{("anomalib", name): value for name, value in raw.items()},
        ("anomalib", "normalized"): normalized,
        ("anomalib", "model_class"): f"{type(model).__module__}.{type(model).__qualname__}",
    }
    resize = first_resize(model)
    if resize is not None:  # how raw images are brought to the graph's input, as in training (see raw_input)
        entries[tuple(RAW_RESIZE_KEY)] = json.dumps(resize_spec(resize))
    region = _map_region(transforms, input_size) if input_size is not None else None
    if region is not None:
        entries["anomalib", "map_region"] = list(region)
    return entries


def write_model_api_metadata(xml_path: Path | str, model: AnomalibModule, task: str | None = None) -> None:
    """Add the ``rt_info`` Model API's ``AnomalyDetection`` needs to an exported anomalib IR, in place.

    anomalib 2.7's export writes no ``rt_info``, so Model API serves its IRs with saturated scores (0-255 pixels
    fed to a model that expects [0, 1]) and swapped colour channels. This writes the entries listed in
    :func:`model_api_metadata`; call it right after ``to_openvino`` / ``Engine.export`` with the model that was
    exported. Works for any ``AnomalibModule`` with anomalib's post-processor (built-in models too) and any
    precision: the IR is read and written back by OpenVINO without compression (``compress_to_fp16=False``), so
    FP32, FP16, INT8-weight and quantized IRs keep their weights and outputs. The files are written next to the
    originals and then renamed over them, so an interrupted call leaves the IR intact. Existing ``rt_info`` entries
    are kept, ours are overwritten (calling it twice is harmless).

    Args:
        xml_path: The IR's ``.xml`` (its ``.bin`` is next to it).
        model: The model that was exported.
        task: Model API task ("classification", "segmentation", "detection"); see :func:`model_api_metadata`.

    Raises:
        ModuleNotFoundError: If OpenVINO is not installed.
        FileNotFoundError: If the ``.xml`` or ``.bin`` file does not exist.
        ValueError: If the IR lacks anomalib's post-processed outputs (``pred_score``, ``pred_label``,
            ``anomaly_map``, ``pred_mask``): Model API would read its first output as a raw anomaly map and fail.
            Export with the post-processor (and its thresholding) enabled.
    """
    ov = _import("openvino", "Writing Model API metadata into an OpenVINO IR")
    xml_path = Path(xml_path)
    bin_path = xml_path.with_suffix(".bin")
    for path in (xml_path, bin_path):
        if not path.is_file():
            msg = f"OpenVINO IR file not found: {path}"
            raise FileNotFoundError(msg)
    core = ov.Core()
    # Read the weights into memory rather than mapping the file that is about to be replaced.
    core.set_property({"ENABLE_MMAP": False})
    ov_model = core.read_model(xml_path, bin_path)
    names = {name for output in ov_model.outputs for name in output.get_names()}
    missing = [name for name in ANOMALIB_OUTPUTS if name not in names]
    if missing:
        msg = (
            f"{xml_path} has no output(s) {missing} (outputs: {sorted(names)}). Model API's AnomalyDetection passes "
            f"anomalib's results through only when the IR has all of {list(ANOMALIB_OUTPUTS)}; export the model with "
            "its post-processor (normalisation and thresholding) enabled."
        )
        raise ValueError(msg)
    input_size = static_input_size(ov_model)
    if input_size is None:
        logger.warning(
            "%s has a dynamic input size: Model API then embeds no pre-processing (no resize, no channel swap) and "
            "scales uint8 pixels to [0, 1] itself, so its own calls need RGB images (predict_model_api swaps BGR "
            "for you). Export with input_size=(height, width) to serve BGR images of any size.",
            xml_path,
        )
    for (section, name), value in model_api_metadata(model, input_size=input_size, task=task).items():
        ov_model.set_rt_info(_format(value), [section, name])
    tmp_xml = xml_path.with_name(f".{xml_path.stem}.model_api.tmp.xml")
    tmp_bin = tmp_xml.with_suffix(".bin")
    try:
        ov.save_model(ov_model, tmp_xml, compress_to_fp16=False)
        del ov_model
        os.replace(tmp_bin, bin_path)
        os.replace(tmp_xml, xml_path)
    finally:
        tmp_xml.unlink(missing_ok=True)
        tmp_bin.unlink(missing_ok=True)


def load_model_api(
    xml_path: Path | str,
    device: str = "CPU",
    config: dict[str, Any] | None = None,
    configuration: dict[str, Any] | None = None,
) -> AnomalyDetection:
    """Create Model API's ``AnomalyDetection`` wrapper for an exported anomalib IR.

    What ``Model.create_model(xml)`` does, plus two things it cannot: an OpenVINO plugin configuration (pass
    ``{"INFERENCE_PRECISION_HINT": "f32"}`` to match ``OpenVINOInferencer(config=...)`` exactly on CPUs that
    default to bf16), and anomalib's input conventions (pixels scaled to [0, 1], BGR input swapped to RGB,
    labels, model type) for IRs exported without :func:`write_model_api_metadata`, which Model API would otherwise
    serve with saturated scores. Entries the IR has are kept; ``configuration`` overrides both.

    Args:
        xml_path: The IR's ``.xml``.
        device: OpenVINO device ("CPU", "GPU", "NPU", "AUTO").
        config: OpenVINO plugin properties, e.g. ``{"INFERENCE_PRECISION_HINT": "f32"}``.
        configuration: Model API parameters (``resize_type``, ``reverse_input_channels``, ...).

    Returns:
        AnomalyDetection: The wrapper, loaded on ``device``; call it with a BGR ``uint8`` image for Model API's
        ``AnomalyResult``, or pass it to :func:`predict_model_api` for ``OpenVINOInferencer``'s conventions.

    Raises:
        ModuleNotFoundError: If ``openvino-model-api`` (or OpenVINO) is not installed.
        FileNotFoundError: If the ``.xml`` file does not exist.
    """
    models = _import("model_api.models", "Serving an IR with the OpenVINO Model API")
    adapters = _import("model_api.adapters.openvino_adapter", "Serving an IR with the OpenVINO Model API")
    xml_path = Path(xml_path)
    if not xml_path.is_file():
        msg = f"OpenVINO IR file not found: {xml_path}"
        raise FileNotFoundError(msg)
    plugin_config = {**adapters.get_user_config(device, "1", None), **(config or {})}
    adapter = adapters.OpenvinoAdapter(
        adapters.create_core(), str(xml_path), device=device, plugin_config=plugin_config
    )
    defaults = {"model_type": "AnomalyDetection", "labels": list(LABELS), **_INPUT_CONVENTIONS}
    missing = {name: value for name, value in defaults.items() if not adapter.model.has_rt_info(["model_info", name])}
    if missing:
        logger.warning(
            "%s has no Model API metadata for %s; using anomalib's conventions. Run write_model_api_metadata(xml, "
            "model) after export so that any Model API client (Geti, OVMS) serves it correctly.",
            xml_path,
            sorted(missing),
        )
    model_type = missing.pop("model_type", None)
    # float32 pixels in 0-255 at the embedded input (uint8 arrays are converted on the way in): predict_model_api
    # then hands over the image resized in float as in training without rounding it to uint8 (which moved a tiny
    # MFRNet's normalised score by 0.016). The IR's own metadata keeps uint8 for other Model API clients.
    defaults = {"input_dtype": "f32"}
    return models.Model.create_model(
        adapter, model_type=model_type, configuration={**defaults, **missing, **(configuration or {})}, preload=True
    )


def _raw_resize(model: AnomalyDetection) -> Any:
    """The trained pre-processor's first ``Resize`` (from ``rt_info``), else antialiased to the IR's static size."""
    ov_model = model.inference_adapter.model
    if ov_model.has_rt_info(RAW_RESIZE_KEY):
        return ir_raw_resize(ov_model)
    height, width = int(getattr(model, "h", -1)), int(getattr(model, "w", -1))
    if getattr(model, "_is_dynamic", False) or height <= 0 or width <= 0:
        return None
    from torchvision.transforms.v2 import Resize

    return Resize((height, width), antialias=True)


def predict_model_api(model: AnomalyDetection, image: np.ndarray | Path | str) -> NumpyImageBatch:
    """Predict with Model API's pre-processing and inference; return the result as ``OpenVINOInferencer`` does.

    Model API's own result (``model(image)``) turns the label into the string "True"/"False" and the map into
    ``uint8`` resized to the input image, which for cropping models (CRR) stretches the crop's map over the whole
    frame. This returns the IR's outputs themselves in an anomalib ``NumpyImageBatch``, like
    ``OpenVINOInferencer.predict``: ``pred_score`` in [0, 1], boolean ``pred_label`` and ``pred_mask``, and the float
    ``anomaly_map`` at the IR's output size (the crop's map for CRR; ``rt_info`` ``anomalib/map_region`` says where
    it lies in the input frame). That keeps anomalib's visualisers and metrics usable on Model API deployments.

    Args:
        model: A Model API ``AnomalyDetection`` wrapper (see :func:`load_model_api`).
        image: A ``uint8`` image in Model API's convention (HxWx3 BGR, as ``cv2.imread`` returns it; RGB if the
            IR's ``reverse_input_channels`` is False), or a path. Also for dynamic-size IRs, where Model API itself
            would need RGB.

    Returns:
        NumpyImageBatch: A batch of one: ``image`` (the input as RGB float NCHW in [0, 1]) and the IR's outputs.

    Raises:
        ModuleNotFoundError: If ``openvino-model-api`` is not installed.
        FileNotFoundError: If ``image`` is a path that cannot be read.
        TypeError: If ``image`` is not a ``uint8`` HxWx3 array.
    """
    cv2 = _import("cv2", "Reading images for the OpenVINO Model API")
    from anomalib.data import NumpyImageBatch

    if isinstance(image, (str, Path)):
        path = image
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            msg = f"Cannot read image {path}"
            raise FileNotFoundError(msg)
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        msg = "predict_model_api takes a uint8 HxWx3 BGR image (as cv2.imread returns it) or a path"
        raise TypeError(msg)
    rgb = np.ascontiguousarray(image[..., ::-1]) if model.params.reverse_input_channels else image
    resize = _raw_resize(model)
    if resize is not None:
        # Resize as the trained model's pre-processor does (antialiased, in float), not with Model API's own uint8
        # resize, then round to the uint8 pixels Model API takes; its embedded resize is then the identity.
        fitted = fit_raw_image(rgb, resize)[0].permute(1, 2, 0).numpy() * np.float32(255.0)
        rounded = model.params.input_dtype == "u8"  # an IR loaded with uint8 input: the pixels must be rounded
        rgb = np.ascontiguousarray(np.round(fitted).astype(np.uint8) if rounded else fitted)
        image = np.ascontiguousarray(rgb[..., ::-1]) if model.params.reverse_input_channels else rgb
    # Model API swaps the channels only in the pre-processing it embeds into IRs with a static input size; for
    # dynamic-size IRs it feeds the pixels as given, so they must be RGB already.
    embedded = getattr(model, "_embedded_processing", not getattr(model, "_is_dynamic", False))
    inputs, _meta = model.base_preprocess(image if embedded else rgb)
    outputs = {name: np.array(value, copy=True) for name, value in model.infer_sync(inputs).items()}
    batch_image = rgb.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
    return NumpyImageBatch(image=batch_image, **{name: outputs[name] for name in ANOMALIB_OUTPUTS if name in outputs})


__all__ = [
    "ANOMALIB_OUTPUTS",
    "LABELS",
    "load_model_api",
    "model_api_metadata",
    "predict_model_api",
    "write_model_api_metadata",
]
