"""Issue 24, item 3: exported IRs served by the OpenVINO Model API agree with anomalib's OpenVINOInferencer.

One tiny CRR, one tiny MFRNet and anomalib's built-in Padim are fitted (one epoch on the generated 64 px dataset, so
the post-processor has thresholds and min/max statistics) and exported to FP32 OpenVINO IRs. A copy of each IR is
kept as anomalib wrote it (no ``rt_info``); the other gets ``write_model_api_metadata``. Both sides read the same
64x64 PNG files: Model API through ``cv2.imread`` (BGR, its convention), OpenVINOInferencer from the path.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.deploy import ExportType, OpenVINOInferencer
from anomalib.engine import Engine
from anomalib.models import AnomalibModule, Padim

from anomalib_crr.deploy.model_api import (
    ANOMALIB_OUTPUTS,
    INSTALL_HINT,
    load_model_api,
    model_api_metadata,
    predict_model_api,
    write_model_api_metadata,
)

from .helpers import TINY_IMAGE, tiny_crr, tiny_mfrnet

cv2 = pytest.importorskip("cv2")
model_api_models = pytest.importorskip("model_api.models")

CATEGORY = "washer"
F32 = {"INFERENCE_PRECISION_HINT": "f32"}
# On CPUs OpenVINO quantizes activations on the fly for INT8-weight IRs (DYNAMIC_QUANTIZATION_GROUP_SIZE 32), which
# turns the last-bit difference between Model API's pixel scaling (x * 1/255) and OpenVINOInferencer's (x / 255) into
# score differences of ~1e-3 (measured 8e-4). Without it the two agree exactly as for FP32 IRs.
F32_NO_DYNAMIC_QUANTIZATION = {**F32, "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}
SCORE_ATOL = 1e-4  # the target of issue 24; measured <= 6e-6
# Model API rounds the map to uint8 and resizes it with OpenCV (on uint8) to the image size: compared with
# OpenVINOInferencer's float map resized the same way, measured <= 1.14/255 (0.50/255 where no resize happens).
MAP_ATOL = 1.5 / 255
HELPER_MAP_ATOL = 1e-4  # predict_model_api returns the IR's float map itself; measured <= 8e-6
MODELS: dict[str, Callable[[], Any]] = {
    "CRR": lambda: tiny_crr(stage1_steps=1, stage2_steps=1),  # two steps: stage II runs, the seg head is exported
    "MFRNet": tiny_mfrnet,
    # anomalib's built-in model tells our gaps from anomalib's; at 64 px (its default 256 px fit takes 45 s here).
    "Padim": lambda: Padim(
        backbone="resnet18",
        pre_trained=False,
        layers=["layer1", "layer2"],
        pre_processor=Padim.configure_pre_processor(image_size=(TINY_IMAGE, TINY_IMAGE)),
    ),
}
# The box of the 64x64 input frame each IR's map covers: CRR resizes to 64 and centre-crops 56.
MAP_REGION = {"CRR": [4, 4, 60, 60], "MFRNet": [0, 0, 64, 64], "Padim": [0, 0, 64, 64]}


@pytest.fixture(scope="module")
def exported(tiny_dataset: Path, module_tmp_dir: Callable[[str], Path]) -> dict[str, Any]:
    """Each model fitted for one epoch and exported; ``xml`` has our metadata, ``plain_xml`` is anomalib's file."""
    root = module_tmp_dir("model_api")
    runs: dict[str, dict[str, Any]] = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for name, make in MODELS.items():
            torch.manual_seed(0)
            model = make()
            engine = Engine(
                default_root_dir=root / name, logger=False, accelerator="cpu", devices=1, enable_progress_bar=False,
                max_epochs=1, limit_train_batches=2,
            )  # fmt: skip
            datamodule = MVTecAD(root=tiny_dataset, category=CATEGORY, train_batch_size=4, num_workers=0)
            engine.fit(model=model, datamodule=datamodule)
            xml = engine.export(model, ExportType.OPENVINO, root / name / "export", input_size=(TINY_IMAGE,) * 2)
            # anomalib's own export (no rt_info): the plugin's to_openvino bypassed for CRR and MFRNet
            plain_xml = AnomalibModule.to_openvino(model, root / name / "plain", input_size=(TINY_IMAGE,) * 2)
            if name == "Padim":  # anomalib's model through Engine.export: the metadata is written by hand
                write_model_api_metadata(xml, model)
            runs[name] = {"model": model.eval(), "xml": xml, "plain_xml": plain_xml}
    images = sorted((tiny_dataset / CATEGORY / "test").rglob("*.png"))
    assert images
    assert all(cv2.imread(str(path)).shape == (TINY_IMAGE, TINY_IMAGE, 3) for path in images)  # = the IR input
    return {"root": root, "runs": runs, "images": images}


def _inferencer(xml: Path) -> OpenVINOInferencer:
    return OpenVINOInferencer(xml, device="CPU", config=F32)


def _scalar(value: Any) -> float:
    return float(np.asarray(value).reshape(-1)[0])


def _plain_model_api(xml: Path, config: dict[str, Any] | None = None) -> Any:
    """Model API's wrapper as any client builds it: its own adapter, no configuration (the IR's rt_info only)."""
    from model_api.adapters.openvino_adapter import OpenvinoAdapter, create_core

    adapter = OpenvinoAdapter(create_core(), str(xml), device="CPU", plugin_config=config)
    return model_api_models.Model.create_model(adapter)


def _rt_info(xml: Path, section: str, name: str) -> str:
    import openvino as ov

    return ov.Core().read_model(xml).get_rt_info([section, name]).astype(str)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_metadata_describes_the_ir(name: str, exported: dict[str, Any]) -> None:
    run = exported["runs"][name]
    xml, post_processor = run["xml"], run["model"].post_processor
    expected = {
        "model_type": "AnomalyDetection",
        "labels": "Normal Anomaly",
        "task": "segmentation",
        "input_dtype": "u8",
        "intensity_mode": "scale_to_unit",
        "intensity_max_value": "255.0",
        "reverse_input_channels": "True",
        "resize_type": "standard",
        "interpolation_mode": "LINEAR",
        "normalization_scale": "1.0",
    }
    assert {key: _rt_info(xml, "model_info", key) for key in expected} == expected
    # Thresholds in the units of the IR's (normalised) outputs; the raw calibration under "anomalib".
    assert float(_rt_info(xml, "model_info", "image_threshold")) == pytest.approx(
        float(post_processor.normalized_image_threshold)
    )
    assert float(_rt_info(xml, "model_info", "pixel_threshold")) == pytest.approx(
        float(post_processor.normalized_pixel_threshold)
    )
    for key in ("image_threshold", "pixel_threshold", "image_min", "image_max", "pixel_min", "pixel_max"):
        value = float(_rt_info(xml, "anomalib", key))
        assert math.isfinite(value)
        assert value == pytest.approx(float(getattr(post_processor, key)), rel=1e-6)
    assert _rt_info(xml, "anomalib", "normalized") == "True"
    assert _rt_info(xml, "anomalib", "map_region") == " ".join(map(str, MAP_REGION[name]))
    # Model API reads the same values back.
    wrapper = load_model_api(xml, config=F32)
    assert wrapper.params.intensity_mode == "scale_to_unit"
    assert wrapper.params.reverse_input_channels is True
    assert wrapper.params.labels == ["Normal", "Anomaly"]
    assert wrapper.params.image_threshold == pytest.approx(float(post_processor.normalized_image_threshold))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_api_matches_openvino_inferencer(
    name: str, exported: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Plain Model API (rt_info only) and predict_model_api give OpenVINOInferencer's score, label and map."""
    monkeypatch.chdir(tmp_path)  # OpenVINOInferencer writes ./openvino_cache
    run = exported["runs"][name]
    threshold = float(run["model"].post_processor.normalized_image_threshold)
    inferencer = _inferencer(run["xml"])
    plain = _plain_model_api(run["xml"], F32)
    assert type(plain).__name__ == "AnomalyDetection"
    helper = load_model_api(run["xml"], config=F32)
    worst = {"score": 0.0, "map_x255": 0.0, "helper_score": 0.0, "helper_map": 0.0}
    labels_compared = 0
    for path in exported["images"]:
        expected = inferencer.predict(path)
        score, label = _scalar(expected.pred_score), bool(np.asarray(expected.pred_label).reshape(-1)[0])
        expected_map = np.asarray(expected.anomaly_map, dtype=np.float32).reshape(expected.anomaly_map.shape[-2:])

        result = plain(cv2.imread(str(path)))  # Model API's AnomalyResult
        worst["score"] = max(worst["score"], abs(result.pred_score - score))
        height, width = result.anomaly_map.shape
        assert result.anomaly_map.dtype == np.uint8
        assert (height, width) == (TINY_IMAGE, TINY_IMAGE)  # resized to the image (stretched, for CRR's crop)
        stretched = cv2.resize(expected_map, (width, height))
        worst["map_x255"] = max(worst["map_x255"], float(np.abs(result.anomaly_map / 255.0 - stretched).max()) * 255)

        batch = predict_model_api(helper, path)
        assert batch.anomaly_map.shape == expected.anomaly_map.shape  # the IR's output size: 56x56 for CRR
        assert batch.pred_label.dtype == np.bool_
        worst["helper_score"] = max(worst["helper_score"], abs(_scalar(batch.pred_score) - score))
        worst["helper_map"] = max(worst["helper_map"], float(np.abs(batch.anomaly_map - expected.anomaly_map).max()))
        # Labels: Model API writes str(bool). An image scored within the tolerance of the threshold (the adaptive
        # threshold is one validation image's score) may legitimately fall on either side.
        if abs(score - threshold) > SCORE_ATOL:
            labels_compared += 1
            assert result.pred_label == str(label), (path, result.pred_score, score)
            assert bool(batch.pred_label.reshape(-1)[0]) == label, path
    print(f"\n{name}: {worst} ({labels_compared}/{len(exported['images'])} labels compared)")
    assert labels_compared >= len(exported["images"]) - 1
    assert worst["score"] <= SCORE_ATOL, worst
    assert worst["helper_score"] <= SCORE_ATOL, worst
    assert worst["map_x255"] <= MAP_ATOL * 255, worst
    assert worst["helper_map"] <= HELPER_MAP_ATOL, worst


@pytest.mark.parametrize("name", sorted(MODELS))
def test_without_metadata_model_api_disagrees_and_load_model_api_fills_it_in(
    name: str, exported: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """anomalib's own IR (no rt_info): Model API feeds 0-255 BGR pixels and its scores are far off."""
    monkeypatch.chdir(tmp_path)
    plain_xml = exported["runs"][name]["plain_xml"]
    import openvino as ov

    assert not ov.Core().read_model(plain_xml).has_rt_info(["model_info", "intensity_mode"])
    inferencer = _inferencer(plain_xml)
    bare = model_api_models.Model.create_model(str(plain_xml), device="CPU")  # what users do; model type detected
    filled = load_model_api(plain_xml, config=F32)
    bare_worst, filled_worst = 0.0, 0.0
    for path in exported["images"]:
        score = _scalar(inferencer.predict(path).pred_score)
        bare_worst = max(bare_worst, abs(bare(cv2.imread(str(path))).pred_score - score))
        filled_worst = max(filled_worst, abs(_scalar(predict_model_api(filled, path).pred_score) - score))
    print(f"\n{name}: without metadata |score difference| up to {bare_worst:.3f}; filled in {filled_worst:.1e}")
    assert bare_worst > 0.1
    assert filled_worst <= SCORE_ATOL


def _pixels(path: Path) -> np.ndarray:
    """An image file as OpenVINOInferencer feeds it: RGB float32 NCHW in [0, 1]."""
    return np.ascontiguousarray(cv2.imread(str(path))[..., ::-1].transpose(2, 0, 1)[None]) / np.float32(255)


@pytest.mark.parametrize("variant", ["FP16", "INT8", "INT8_PTQ"])
def test_compressed_irs_keep_weights_and_outputs(
    variant: str, exported: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """FP16, INT8-weight and quantized IRs (made with the calls anomalib's export uses) are re-saved unchanged.

    Model API then serves them like OpenVINO. For the quantized IR the reference is the IR at batch size 1 (what
    Model API runs): OpenVINO 2026.4's CPU plugin computes FakeQuantize IRs with anomalib's dynamic batch axis
    differently (we saw all-zero maps where batch 1, and the plugin with low-precision transformations off, give
    plausible ones), so OpenVINOInferencer on such an IR disagrees with OpenVINO at batch 1, not only with Model API.
    """
    import nncf
    import openvino as ov

    monkeypatch.chdir(tmp_path)
    run = exported["runs"]["CRR"]
    core = ov.Core()
    source = core.read_model(run["plain_xml"])
    xml = tmp_path / "model.xml"
    if variant == "FP16":
        ov.save_model(source, xml, compress_to_fp16=True)
    elif variant == "INT8":
        ov.save_model(nncf.compress_weights(source), xml, compress_to_fp16=False)
    else:
        calibration = nncf.Dataset([_pixels(path) for path in exported["images"]])
        ov.save_model(
            nncf.quantize(source, calibration, subset_size=len(exported["images"])), xml, compress_to_fp16=False
        )
    weights = xml.with_suffix(".bin").read_bytes()
    probe = _pixels(exported["images"][0])
    before = core.compile_model(xml, "CPU", F32)(probe)
    before = {name: before[name] for name in ANOMALIB_OUTPUTS}

    write_model_api_metadata(xml, run["model"])
    write_model_api_metadata(xml, run["model"])  # idempotent

    assert xml.with_suffix(".bin").read_bytes() == weights  # same precision, same bytes
    after = core.compile_model(xml, "CPU", F32)(probe)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value)
    assert _rt_info(xml, "model_info", "intensity_mode") == "scale_to_unit"
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary files left

    helper = load_model_api(xml, config=F32_NO_DYNAMIC_QUANTIZATION)
    if variant == "INT8_PTQ":
        batch_one = core.read_model(xml)
        batch_one.reshape({0: ov.PartialShape([1, 3, TINY_IMAGE, TINY_IMAGE])})
        compiled = core.compile_model(batch_one, "CPU", F32_NO_DYNAMIC_QUANTIZATION)

        def reference(path: Path) -> tuple[float, np.ndarray]:
            outputs = compiled(_pixels(path))
            return _scalar(outputs["pred_score"]), outputs["anomaly_map"]
    else:
        inferencer = OpenVINOInferencer(xml, device="CPU", config=F32_NO_DYNAMIC_QUANTIZATION)

        def reference(path: Path) -> tuple[float, np.ndarray]:
            expected = inferencer.predict(path)
            return _scalar(expected.pred_score), expected.anomaly_map

    worst_score, worst_map = 0.0, 0.0
    for path in exported["images"]:
        score, anomaly_map = reference(path)
        batch = predict_model_api(helper, path)
        worst_score = max(worst_score, abs(_scalar(batch.pred_score) - score))
        worst_map = max(worst_map, float(np.abs(batch.anomaly_map - anomaly_map).max()))
    print(f"\nCRR {variant}: |score difference| {worst_score:.1e}, |map difference| {worst_map:.1e}")
    assert worst_score <= SCORE_ATOL
    assert worst_map <= HELPER_MAP_ATOL


def test_ir_without_post_processed_outputs_is_refused(exported: dict[str, Any], tmp_path: Path) -> None:
    """Model API would read the first output as a raw map; we refuse and leave the file alone."""
    import openvino as ov
    from openvino import opset13 as ops

    image = ops.parameter([1, 3, TINY_IMAGE, TINY_IMAGE], np.float32, name="input")
    score = ops.reduce_max(image, [1, 2, 3])
    score.output(0).set_names({"pred_score"})
    anomaly_map = ops.reduce_mean(image, [1], keep_dims=True)
    anomaly_map.output(0).set_names({"anomaly_map"})
    xml = tmp_path / "raw.xml"
    ov.save_model(ov.Model([score, anomaly_map], [image]), xml)
    before = xml.read_bytes()
    with pytest.raises(ValueError, match=r"pred_label.*pred_mask"):
        write_model_api_metadata(xml, exported["runs"]["MFRNet"]["model"])
    assert xml.read_bytes() == before
    with pytest.raises(FileNotFoundError):
        write_model_api_metadata(tmp_path / "missing.xml", exported["runs"]["MFRNet"]["model"])


def test_task_and_input_errors(exported: dict[str, Any]) -> None:
    model = exported["runs"]["MFRNet"]["model"]
    assert model_api_metadata(model, task="detection")["model_info", "task"] == "detection"
    assert model_api_metadata(model)["model_info", "task"] == "segmentation"  # pixel metrics in the evaluator
    with pytest.raises(ValueError, match="task must be one of"):
        model_api_metadata(model, task="regression")
    helper = load_model_api(exported["runs"]["MFRNet"]["xml"], config=F32)
    with pytest.raises(TypeError, match="uint8"):
        predict_model_api(helper, np.zeros((TINY_IMAGE, TINY_IMAGE, 3), np.float32))


def test_missing_packages_name_the_extra(exported: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    run = exported["runs"]["MFRNet"]
    monkeypatch.setitem(sys.modules, "model_api.models", None)  # as if openvino-model-api were not installed
    with pytest.raises(ModuleNotFoundError, match=r"openvino-model-api.*anomalib-crr\[openvino\]"):
        load_model_api(run["xml"])
    monkeypatch.setitem(sys.modules, "openvino", None)
    with pytest.raises(ModuleNotFoundError, match=r"'openvino'.*anomalib-crr\[openvino\]"):
        write_model_api_metadata(run["xml"], run["model"])
    assert INSTALL_HINT == 'pip install "anomalib-crr[openvino]"'
