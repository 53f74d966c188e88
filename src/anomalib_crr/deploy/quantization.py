# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""INT8 post-training quantisation (nncf) of an exported anomalib model, for any ``AnomalibModule``.

Over 400 lines on purpose: the PTQ and accuracy-controlled paths share calibration data, scope selection and the IR
checks.

anomalib 2.7's ``INT8_PTQ`` / ``INT8_ACQ`` export fails or ships a useless model, for its own models as for ours
(measured on PaDiM and MFRNet, tire, lite0 weights):

* **Calibration size.** anomalib feeds nncf the datamodule's images as they come from the files (800x600 for tire),
  while an IR exported with ``input_size`` has a static input (``[?, 3, 256, 256]``): OpenVINO refuses the tensor.
  Here every calibration and validation image is resized to the IR's input size first (antialiased bilinear,
  clamped to [0, 1] because the antialiased kernel overshoots), and left as it is for a dynamic-size IR, whose
  graph resizes it itself.
* **What is quantised.** nncf quantises every convolution, matmul and eligible elementwise op of the graph, and the
  exported graph holds more than the network: the distance to the memory bank or the Gaussian (PatchCore, PaDiM),
  the restoration error (MFRNet), the encoder-decoder distance (CRR), and the post-processor's normalisation and
  thresholds. Anomaly scores are small differences of large activations; 8 bits on them leave nothing (constant
  outputs, image AUROC 0.5). Only the modules that compute features are quantised here (``quantized_modules``,
  module paths read from the ``name_scopes`` that torch's exporter writes into every ONNX node); everything else
  goes to nncf's ``ignored_scope`` and stays in float.
* **Calibration data.** anomalib calibrates on the validation split, which holds the test set's defects. Here
  calibration uses the training images (normal images: what a user has when deploying), and the validation split
  is kept for the check below and for ``INT8_ACQ``'s accuracy control.
* **A check after quantisation.** The quantised model is run beside the float one on the validation images; a model
  whose scores are constant, or whose image AUROC drops by more than ``max_auroc_drop``, is refused with a
  ``QuantizationCheckError`` instead of being saved.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .raw_input import fit_to_input, static_input_size

if TYPE_CHECKING:
    from anomalib.data import AnomalibDataModule
    from anomalib.models import AnomalibModule
    from torchmetrics import Metric

logger = logging.getLogger(__name__)

INT8_EXTRA = 'pip install "anomalib-crr[int8]"'
# Fewer images than this cannot give nncf usable activation ranges; anomalib recommends 300.
MIN_CALIBRATION_IMAGES = 8
RECOMMENDED_CALIBRATION_IMAGES = 300
# Module paths (prefixes) whose graph nodes compute features, for models that do not declare their own scope.
FEATURE_MODULE_NAMES = ("feature_extractor", "backbone", "encoder", "extractor")
# The check's AUROC criterion needs this many good and defective images: one swapped pair of 9 images moves the
# AUROC by 0.05. Smaller validation sets are checked for constant scores and map agreement only.
MIN_AUROC_CLASS_SIZE = 10
# ``quantized_modules`` that quantises every op nncf can, as anomalib's own export does.
WHOLE_GRAPH: tuple[str, ...] = ("*",)


class CalibrationDataError(ValueError):
    """The datamodule gives no, or too few, calibration images."""


class UnfittedModelError(ValueError):
    """The model's post-processor has no fitted statistics, so its quantised IR cannot be compiled."""


class QuantizationCheckError(RuntimeError):
    """The quantised model lost the float model's information (constant scores or a large AUROC drop)."""


@dataclass(frozen=True)
class QuantizationReport:
    """What the check after quantisation measured (logged, and kept on the export for the benchmark)."""

    calibration_images: int
    check_images: int
    float_auroc: float | None
    int8_auroc: float | None
    float_score_std: float
    int8_score_std: float
    float_nodes: int
    map_correlation: float | None = None


def require_nncf() -> Any:
    """Import nncf, or say which extra installs it."""
    try:
        import nncf
    except ModuleNotFoundError as error:
        msg = f"INT8_PTQ and INT8_ACQ export need nncf, which is not installed: {INT8_EXTRA}"
        raise ModuleNotFoundError(msg, name="nncf") from error
    return nncf


def static_batch_size(ov_model: Any) -> int:
    """The IR's static batch size, or 1 when the batch axis is dynamic."""
    shape = ov_model.input(0).get_partial_shape()
    return shape[0].get_length() if shape.rank.is_static and shape[0].is_static else 1


class ResizedImages:
    """A dataset's images at the IR's input size, in batches of the IR's batch size; iterable more than once.

    Each item is ``(images, labels)``: ``batch`` images (the last batch padded by repeating its last image) and the
    labels of the real ones. nncf re-reads the data, so nothing is consumed.

    Args:
        dataset: an anomalib dataset (items with ``image`` and ``gt_label``).
        size: the IR's static ``(height, width)``, or ``None`` to keep each image's size.
        limit: read at most this many images (nncf's ``subset_size``), in the dataset's order.
        batch: the IR's static batch size (anomalib's PatchCore export fixes it at 2), 1 for a dynamic batch.
    """

    def __init__(self, dataset: Any, size: tuple[int, int] | None, limit: int | None = None, batch: int = 1) -> None:
        self.dataset = dataset
        self.size = size
        self.count = len(dataset) if limit is None else min(limit, len(dataset))
        self.batch = batch

    def __len__(self) -> int:
        return (self.count + self.batch - 1) // self.batch  # batches

    def __iter__(self) -> Iterator[tuple[np.ndarray, list[int]]]:
        for start in range(0, self.count, self.batch):
            items = [self.dataset[index] for index in range(start, min(start + self.batch, self.count))]
            images = [fit_to_input(item.image, self.size) for item in items]
            images += images[-1:] * (self.batch - len(images))
            yield np.concatenate(images), [int(item.gt_label) for item in items]


def _split(datamodule: AnomalibDataModule, name: str) -> Any | None:
    return getattr(datamodule, f"{name}_data", None)


def calibration_images(
    datamodule: AnomalibDataModule | None,
    size: tuple[int, int] | None,
    subset_size: int,
    compression: str,
    batch: int = 1,
) -> ResizedImages:
    """The training images of ``datamodule`` for nncf, with a clear error when there are none or too few."""
    if datamodule is None:
        msg = (
            f"{compression} needs calibration images: pass a datamodule (Engine.export(..., datamodule=...), or "
            "`--data <datamodule>` on `anomalib-crr export`). Its training images are used."
        )
        raise CalibrationDataError(msg)
    datamodule.setup("fit")
    train = _split(datamodule, "train")
    found = 0 if train is None else len(train)
    root, category = getattr(datamodule, "root", "?"), getattr(datamodule, "category", "?")
    where = f"{type(datamodule).__name__}(root={root}, category={category})"
    if found < MIN_CALIBRATION_IMAGES:
        msg = (
            f"{compression} needs at least {MIN_CALIBRATION_IMAGES} calibration images, but the training split of "
            f"{where} has {found}. Point --data at a folder with more normal images ({RECOMMENDED_CALIBRATION_IMAGES} "
            "recommended)."
        )
        raise CalibrationDataError(msg)
    images = ResizedImages(train, size, limit=subset_size, batch=batch)
    logger.info(
        "%s: nncf calibrates on %d of the %d training images of %s, resized to %s",
        compression,
        images.count,
        found,
        where,
        "the IR input size " + "x".join(map(str, size)) if size else "(dynamic IR: their own size)",
    )
    if images.count < RECOMMENDED_CALIBRATION_IMAGES:
        logger.warning(
            "%s: %d calibration images (%d recommended); activation ranges may be less accurate.",
            compression,
            images.count,
            RECOMMENDED_CALIBRATION_IMAGES,
        )
    return images


def check_images(
    datamodule: AnomalibDataModule, size: tuple[int, int] | None, limit: int = 64, batch: int = 1
) -> ResizedImages:
    """Labelled images for the check and for accuracy control: the validation split, else the test split."""
    for name in ("val", "test"):
        split = _split(datamodule, name)
        if split is not None and len(split) > 0:
            return ResizedImages(split, size, limit=limit, batch=batch)
    return ResizedImages(_split(datamodule, "train"), size, limit=limit, batch=batch)


def node_module_paths(onnx_path: Path) -> dict[str, str]:
    """ONNX node and output names -> the innermost module path that produced them (``""`` for the root).

    torch's dynamo exporter writes ``pkg.torch.onnx.name_scopes`` into each node's metadata: the module path from
    the root module down to the op (``['', 'model', 'model.feature_extractor', 'hardtanh']``). OpenVINO keeps the
    ONNX node name as the operation's name (the output name for graph outputs), so both are mapped.
    """
    import ast

    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    paths: dict[str, str] = {}
    for node in graph.node:
        metadata = {entry.key: entry.value for entry in node.metadata_props}
        scopes = metadata.get("pkg.torch.onnx.name_scopes")
        module = ""
        if scopes:
            try:
                names = ast.literal_eval(scopes)
                module = str(names[-2]) if len(names) >= 2 else ""
            except (ValueError, SyntaxError):
                module = ""
        for name in (node.name, *node.output):
            paths[name] = module
    return paths


def default_quantized_modules(model: torch.nn.Module) -> tuple[str, ...]:
    """The feature-computing modules of a model that declares none: children of ``model`` named like a backbone."""
    inner = getattr(model, "model", None)
    if not isinstance(inner, torch.nn.Module):
        return ()
    found = []
    for name, _ in inner.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in FEATURE_MODULE_NAMES and not any(name.startswith(f"{prefix}.") for prefix in found):
            found.append(name)
    return tuple(f"model.{name}" for name in found)


def float_scope(ov_model: Any, onnx_path: Path, quantized_modules: Sequence[str]) -> list[str]:
    """Names of the IR's operations that stay in float: every op outside ``quantized_modules``."""
    if tuple(quantized_modules) == WHOLE_GRAPH:
        return []
    return float_operations(ov_model, node_module_paths(onnx_path), quantized_modules)


def float_operations(ov_model: Any, paths: dict[str, str], quantized_modules: Sequence[str]) -> list[str]:
    """The operations of ``ov_model`` outside ``quantized_modules``, given the ONNX names' module paths.

    An operation that OpenVINO created or renamed while converting (no ONNX node of that name: a convolution that
    absorbed the ``Multiply`` after it is named after that ``Multiply``) stays in float when everything it feeds
    does. Without that rule anomalib's PatchCore had its map blur quantised (an 8-bit input to the blur's
    convolution, renamed ``Multiply_*``), against the design that only the feature modules are.
    """

    def quantized(module: str) -> bool:
        return any(module == prefix or module.startswith(f"{prefix}.") for prefix in quantized_modules)

    floating: set[str] = set()
    for op in reversed(ov_model.get_ordered_ops()):  # consumers before their producers
        name, kind = op.get_friendly_name(), op.get_type_name()
        module = paths.get(name)
        if kind == "Result":
            floating.add(name)
        elif module is not None:
            if not quantized(module):
                floating.add(name)
        else:
            consumers = [port.get_node() for output in op.outputs() for port in output.get_target_inputs()]
            if consumers and all(consumer.get_friendly_name() in floating for consumer in consumers):
                floating.add(name)
    inherited_only = {"Result", "Constant", "Parameter"}  # listed when their ONNX node is; nothing to quantise
    return [
        op.get_friendly_name()
        for op in ov_model.get_ordered_ops()
        if op.get_friendly_name() in floating
        and (op.get_friendly_name() in paths or op.get_type_name() not in inherited_only)
    ]


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    if len(np.unique(labels)) < 2:
        return None
    from torchmetrics.functional.classification import binary_auroc

    return float(binary_auroc(torch.from_numpy(scores.astype(np.float64)), torch.from_numpy(labels)))


def _outputs(compiled: Any, images: ResizedImages) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Scores, labels and anomaly maps (empty without an ``anomaly_map`` output) of a compiled model."""
    scores, labels, maps = [], [], []
    names = {name for output in compiled.outputs for name in output.get_names()}
    for image, batch_labels in images:
        outputs = compiled(image)
        count = len(batch_labels)
        scores.extend(np.asarray(outputs["pred_score"], dtype=np.float64).reshape(-1)[:count].tolist())
        labels.extend(batch_labels)
        if "anomaly_map" in names:
            maps.extend(np.asarray(outputs["anomaly_map"], dtype=np.float64).reshape(len(image), -1)[:count])
    return np.asarray(scores), np.asarray(labels), list(maps)


def map_correlation(reference: list[np.ndarray], other: list[np.ndarray]) -> float | None:
    """Mean Pearson correlation of two models' maps over the images where both maps vary."""
    values = [
        float(np.corrcoef(first, second)[0, 1])
        for first, second in zip(reference, other, strict=True)
        if first.std() > 1e-9 and second.std() > 1e-9
    ]
    return float(np.mean(values)) if values else None


def check_quantized(
    float_model: Any,
    int8_model: Any,
    images: ResizedImages,
    max_auroc_drop: float = 0.05,
    min_map_correlation: float = 0.5,
    calibration_count: int = 0,
    floats: int = 0,
) -> QuantizationReport:
    """Run both models on labelled images; refuse a quantised model that lost the float model's information.

    Refused: constant scores where the float model's vary; an image AUROC drop above ``max_auroc_drop`` (when the
    images hold at least ``MIN_AUROC_CLASS_SIZE`` of each class); anomaly maps whose mean per-image correlation
    with the float maps is below ``min_map_correlation`` (the map can break while the image score survives: PaDiM
    with a quantised backbone and nncf's default preset).
    """
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    float_scores, labels, float_maps = _outputs(core.compile_model(float_model, "CPU", config), images)
    try:
        int8_compiled = core.compile_model(int8_model, "CPU", config)
    except RuntimeError as error:
        msg = (
            f"INT8 quantisation refused: OpenVINO cannot compile the quantised model ({str(error).strip()[-300:]}). "
            "Keep the module named in the message in float: pass `quantized_modules` without it."
        )
        raise QuantizationCheckError(msg) from error
    int8_scores, _, int8_maps = _outputs(int8_compiled, images)
    report = QuantizationReport(
        calibration_images=calibration_count,
        check_images=len(labels),
        float_auroc=_auroc(float_scores, labels),
        int8_auroc=_auroc(int8_scores, labels),
        float_score_std=float(float_scores.std()),
        int8_score_std=float(int8_scores.std()),
        float_nodes=floats,
        map_correlation=map_correlation(float_maps, int8_maps) if float_maps else None,
    )
    logger.info("INT8 check: %s", report)
    advice = (
        "Keep more of the graph in float: pass `quantized_modules` with fewer module paths (only the backbone), "
        "use INT8_ACQ (accuracy-controlled), or deploy the FP16/FP32 IR."
    )
    if report.float_score_std > 1e-6 and report.int8_score_std <= 1e-3 * report.float_score_std:
        msg = (
            f"INT8 quantisation refused: the quantised model gives the same score ({int8_scores[0]:.4g}) for all "
            f"{report.check_images} check images, where the float model's scores vary (std "
            f"{report.float_score_std:.3g}). {advice}"
        )
        raise QuantizationCheckError(msg)
    class_sizes = np.bincount(labels.astype(int), minlength=2) if len(labels) else np.zeros(2, dtype=int)
    if report.float_auroc is not None and report.int8_auroc is not None and class_sizes.min() >= MIN_AUROC_CLASS_SIZE:
        drop = report.float_auroc - report.int8_auroc
        if drop > max_auroc_drop:
            msg = (
                f"INT8 quantisation refused: image AUROC on {report.check_images} validation images fell from "
                f"{report.float_auroc:.3f} (float) to {report.int8_auroc:.3f} (INT8), a drop of {drop:.3f} > "
                f"max_auroc_drop={max_auroc_drop}. {advice}"
            )
            raise QuantizationCheckError(msg)
    if report.map_correlation is not None and report.map_correlation < min_map_correlation:
        msg = (
            f"INT8 quantisation refused: the quantised anomaly maps correlate with the float maps at only "
            f"{report.map_correlation:.2f} on average over {report.check_images} validation images (< "
            f"min_map_correlation={min_map_correlation}). {advice}"
        )
        raise QuantizationCheckError(msg)
    return report


def _validation_fn(metric: Metric | None) -> Any:
    """The accuracy-control function of nncf: the anomalib metric (image AUROC when none) on the validation images."""
    from anomalib.data import ImageBatch

    def validate(compiled: Any, data: Any) -> float:
        if metric is None:
            scores, labels, _ = _outputs(compiled, data)
            value = _auroc(scores, labels)
            return 0.0 if value is None else value
        metric.reset()  # anomalib's own validation function never resets it: values would pile up over calls
        for image, labels in data:
            outputs = compiled(image)
            count = len(labels)
            metric.update(
                ImageBatch(
                    image=torch.from_numpy(image[:count]),
                    pred_score=torch.from_numpy(np.asarray(outputs["pred_score"])).reshape(-1)[:count],
                    pred_label=torch.from_numpy(np.asarray(outputs["pred_label"])).reshape(-1)[:count],
                    gt_label=torch.tensor(labels),
                )
            )
        return float(metric.compute())

    return validate


def quantize_openvino(
    ov_model: Any,
    onnx_path: Path,
    datamodule: AnomalibDataModule | None,
    quantized_modules: Sequence[str],
    compression: str = "INT8_PTQ",
    metric: Metric | None = None,
    max_drop: float = 0.01,
    subset_size: int = RECOMMENDED_CALIBRATION_IMAGES,
    max_auroc_drop: float = 0.05,
    min_map_correlation: float = 0.5,
    check: bool = True,
    preset: str = "mixed",
    fast_bias_correction: bool = False,
) -> tuple[Any, QuantizationReport | None]:
    """Quantise an OpenVINO model converted from ``onnx_path`` with nncf (``INT8_PTQ`` or ``INT8_ACQ``).

    Args:
        ov_model: the float ``openvino.Model``.
        onnx_path: the ONNX file it was converted from (its node metadata name the modules).
        datamodule: calibration (training split) and check / accuracy-control images (validation split).
        quantized_modules: module paths whose ops are quantised (``"model.feature_extractor"``); ``WHOLE_GRAPH``
            quantises every op as anomalib does (not recommended: see the module docstring).
        compression: ``"INT8_PTQ"`` or ``"INT8_ACQ"``.
        metric: ``INT8_ACQ``'s accuracy metric (an anomalib metric); ``None`` uses image AUROC.
        max_drop: ``INT8_ACQ``'s largest accepted metric drop.
        subset_size: the most calibration images nncf reads.
        max_auroc_drop: the check's largest accepted image AUROC drop on the validation images.
        min_map_correlation: the check's smallest accepted mean correlation of INT8 and float maps.
        check: run the check (a ``QuantizationCheckError`` refuses the model).
        preset: nncf's ``QuantizationPreset``: ``"mixed"`` (asymmetric activations) or ``"performance"``
            (symmetric, nncf's default).
        fast_bias_correction: nncf's fast bias correction (its default) instead of the full one.

    Returns:
        The quantised model and the check's report (``None`` without a check).
    """
    nncf = require_nncf()
    size = static_input_size(ov_model)
    batch = static_batch_size(ov_model)
    calibration = calibration_images(datamodule, size, subset_size, compression, batch)
    floats = float_scope(ov_model, onnx_path, quantized_modules)
    ignored = nncf.IgnoredScope(names=floats, validate=False) if floats else None
    logger.info("%s: %d operations stay in float (outside %s)", compression, len(floats), quantized_modules)
    calibration_dataset = nncf.Dataset(calibration, lambda item: item[0])
    assert datamodule is not None  # calibration_images raised otherwise
    validation = check_images(datamodule, size, batch=batch)
    options = {
        "subset_size": subset_size,
        "ignored_scope": ignored,
        "preset": nncf.QuantizationPreset(preset),
        "fast_bias_correction": fast_bias_correction,
    }
    if compression == "INT8_ACQ":
        quantized = nncf.quantize_with_accuracy_control(
            ov_model,
            calibration_dataset,
            nncf.Dataset(validation, lambda item: item[0]),
            _validation_fn(metric),
            max_drop=max_drop,
            **options,
        )
    else:
        quantized = nncf.quantize(ov_model, calibration_dataset, **options)
    report = None
    if check:
        report = check_quantized(
            ov_model, quantized, validation, max_auroc_drop, min_map_correlation, calibration.count, len(floats)
        )
    return quantized, report


POST_PROCESSOR_STATISTICS = ("image_min", "image_max", "pixel_min", "pixel_max", "image_threshold", "pixel_threshold")


def check_post_processor_fitted(model: torch.nn.Module, compression: str) -> None:
    """Refuse a model whose post-processor normalises with statistics it never fitted (NaN until validation).

    Why: anomalib's ``PostProcessor`` starts with NaN minima, maxima and thresholds and fits them during
    validation. A float IR of such a model still runs (its outputs are not normalised), but after quantisation
    OpenVINO 2026.4 cannot compile it ("ClampTransformation: m_min <= m_max failed": the NaN bounds of the map's
    clamp), measured on a never-validated CRR. Saying so before the slow ONNX export and calibration is clearer.

    Raises:
        UnfittedModelError: Naming the NaN statistics and how to fit them.
    """
    post_processor = getattr(model, "post_processor", None)
    if post_processor is None or not getattr(post_processor, "enable_normalization", False):
        return
    missing = []
    for name in POST_PROCESSOR_STATISTICS:
        value = getattr(post_processor, name, None)
        if isinstance(value, torch.Tensor) and value.numel() and bool(torch.isnan(value).any()):
            missing.append(name)
    if missing:
        msg = (
            f"{compression} needs a fitted model: its post-processor's {', '.join(missing)} are NaN, because the "
            f"model was never validated, and OpenVINO cannot compile a quantised model with NaN normalisation "
            "bounds. Fit it (engine.fit validates at the end) or run engine.validate(model, datamodule) before the "
            "INT8 export."
        )
        raise UnfittedModelError(msg)


def export_quantized_openvino(
    model: AnomalibModule,
    export_root: Path | str,
    compression: str,
    datamodule: AnomalibDataModule | None,
    model_file_name: str = "model",
    input_size: tuple[int, int] | None = None,
    quantized_modules: Sequence[str] | None = None,
    metric: Metric | None = None,
    max_drop: float = 0.01,
    ov_kwargs: dict[str, Any] | None = None,
    onnx_kwargs: dict[str, Any] | None = None,
    **quantize_kwargs: Any,
) -> Path:
    """Export any anomalib model to an INT8 OpenVINO IR at ``<export_root>/weights/openvino/<name>.xml``.

    ``quantized_modules`` defaults to the model's ``int8_quantized_modules`` attribute (CRR and MFRNet declare
    theirs), else to its backbone-like children (``default_quantized_modules``).
    """
    import openvino as ov
    from anomalib.deploy import ExportType
    from anomalib.models.components.base.export_mixin.utils import create_export_root

    from anomalib_crr.models.components.blur import separable_blurs

    if datamodule is None:  # before the (slow) ONNX export
        calibration_images(None, None, 0, compression)
    check_post_processor_fitted(model, compression)
    if quantized_modules is None:
        declared = getattr(model, "int8_quantized_modules", None)
        quantized_modules = tuple(declared) if declared is not None else default_quantized_modules(model)
    with tempfile.TemporaryDirectory() as onnx_directory:
        with separable_blurs(model):  # the mixin's to_onnx does this too; a plain anomalib model gets it here
            onnx_path = model.to_onnx(onnx_directory, model_file_name, input_size, **(onnx_kwargs or {}))
        float_model = ov.convert_model(onnx_path, **(ov_kwargs or {}))
        quantized, report = quantize_openvino(
            float_model,
            Path(onnx_path),
            datamodule,
            quantized_modules,
            compression=compression,
            metric=metric,
            max_drop=max_drop,
            **quantize_kwargs,
        )
    xml_path = create_export_root(export_root, ExportType.OPENVINO) / f"{model_file_name}.xml"
    ov.save_model(quantized, xml_path, compress_to_fp16=False)
    if report is not None:
        logger.info("Exported INT8 model to %s (%s)", xml_path, report)
    return xml_path
