"""Issue 34, item 1: every deployment route scores a user's raw file (any size) as ``Engine.predict`` does.

A tiny CRR (resize 64 + centre crop 56) and a tiny MFRNet (resize 64) are trained on generated 64 px images and
scored on files of other sizes: generated 97x131 and 40x52 files and, when ``../shared`` is present, real
800x600 ``tire`` and magnetic tile files. Reference: ``Engine.predict`` on the file (anomalib's antialiased
resize in torch). Routes: ``OpenVINOInferencer`` on a static IR (exported at the resize size) and on a
dynamic one, Model API (``predict_model_api``), and ``TorchInferencer`` on the ``.pt`` export.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from anomalib.deploy import ExportType
from anomalib.engine import Engine
from PIL import Image

from anomalib_crr.deploy import OpenVINOInferencer, TorchInferencer, load_model_api, predict_model_api

from .helpers import tiny_crr, tiny_datamodule, tiny_mfrnet

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
REAL_FILES = [
    *sorted((SHARED / "mvtec3d_rgb" / "tire" / "test").rglob("*.png"))[::40],
    *sorted((SHARED / "magnetic_tile" / "mt" / "test").rglob("*.jpg"))[::150],
]
SCORE_ATOL = 1e-3  # the bound on post-processed scores (in [0, 1]); measured ~1e-6 (float32 kernels)
MAP_ATOL = 1e-3
F32 = {"INFERENCE_PRECISION_HINT": "f32"}  # CPUs with native bf16 would infer in bf16 otherwise


def _engine(root: Path, **kwargs: Any) -> Engine:
    return Engine(
        default_root_dir=root, logger=False, accelerator="cpu", devices=1, enable_progress_bar=False, **kwargs
    )


MODELS: dict[str, Callable[[], Any]] = {
    "CRR": lambda: tiny_crr(stage1_steps=2, stage2_steps=1),  # resize 64, centre crop 56
    "MFRNet": tiny_mfrnet,  # resize 64
}


@pytest.fixture(scope="module")
def raw_files(tiny_dataset: Path, module_tmp_dir: Callable[[str], Path]) -> list[Path]:
    """The generated test images at two other sizes than the training size, plus real files when present."""
    folder = module_tmp_dir("raw_files")
    files = []
    for index, path in enumerate(sorted((tiny_dataset / "washer" / "test").rglob("*.png"))):
        size = (131, 97) if index % 2 else (52, 40)  # PIL: (width, height)
        target = folder / f"{path.parent.name}_{path.stem}_{size[0]}x{size[1]}.png"
        Image.open(path).convert("RGB").resize(size, Image.Resampling.BICUBIC).save(target)
        files.append(target)
    return files + REAL_FILES


@pytest.fixture(scope="module", params=["CRR", "MFRNet"])
def deployed(request: pytest.FixtureRequest, tiny_dataset: Path, module_tmp_dir: Callable[[str], Path]) -> dict:
    """One trained tiny model, its exports (static IR, dynamic IR, ``.pt``) and ``Engine.predict``'s results."""
    name = request.param
    root = module_tmp_dir(f"deploy_raw_{name}")
    torch.manual_seed(0)
    model = MODELS[name]()
    engine = _engine(root, max_epochs=1, limit_train_batches=2)
    engine.fit(model=model, datamodule=tiny_datamodule(tiny_dataset))
    model.eval()
    return {
        "name": name,
        "model": model,
        "engine": engine,
        "static": engine.export(model, ExportType.OPENVINO, root / "static", input_size=(64, 64)),
        "dynamic": engine.export(model, ExportType.OPENVINO, root / "dynamic"),
        "torch": engine.export(model, ExportType.TORCH, root / "torch", input_size=(64, 64)),
    }


def _reference(deployed: dict, path: Path) -> dict[str, np.ndarray]:
    (batch,) = deployed["engine"].predict(model=deployed["model"], data_path=path, return_predictions=True)
    return {
        "pred_score": batch.pred_score.reshape(-1).numpy(),
        "pred_label": batch.pred_label.reshape(-1).numpy(),
        "anomaly_map": batch.anomaly_map.reshape(-1).numpy(),
    }


def _as_numpy(value: Any) -> np.ndarray:
    return (value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)).reshape(-1)


def _routes(deployed: dict, monkeypatch: pytest.MonkeyPatch) -> dict[str, Callable[[Path], Any]]:
    monkeypatch.setenv("TRUST_REMOTE_CODE", "1")
    static = OpenVINOInferencer(deployed["static"], device="CPU", config=F32, cache_dir=None)
    dynamic = OpenVINOInferencer(deployed["dynamic"], device="CPU", config=F32, cache_dir=None)
    model_api = load_model_api(deployed["static"], device="CPU", config=F32)
    torch_inferencer = TorchInferencer(deployed["torch"], device="cpu")
    return {
        "OpenVINOInferencer, static IR": static.predict,
        "OpenVINOInferencer, dynamic IR": dynamic.predict,
        "Model API": lambda path: predict_model_api(model_api, path),
        "TorchInferencer": torch_inferencer.predict,
    }


def test_every_route_scores_raw_files_as_engine_predict(
    deployed: dict, raw_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    routes = _routes(deployed, monkeypatch)
    gaps: dict[tuple[str, str], float] = {}
    flipped: list[tuple[str, str]] = []
    for path in raw_files:
        expected = _reference(deployed, path)
        for route, predict in routes.items():
            result = predict(path)
            for key in ("pred_score", "anomaly_map"):
                gap = float(np.abs(_as_numpy(getattr(result, key)) - expected[key]).max())
                gaps[route, key] = max(gaps.get((route, key), 0.0), gap)
                gaps[f"{route} on {path.name}", key] = gap
            if not np.array_equal(_as_numpy(result.pred_label).astype(bool), expected["pred_label"].astype(bool)):
                flipped.append((route, path.name))
    print(deployed["name"], {key: f"{gap:.1e}" for key, gap in gaps.items() if " on " not in key[0]})
    assert not flipped
    for (route, key), gap in gaps.items():
        assert gap <= (SCORE_ATOL if key == "pred_score" else MAP_ATOL), (route, key, gap)


def test_anomalibs_own_inferencer_differs_on_raw_files(
    deployed: dict, raw_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Why the resize is needed: anomalib's own class on the dynamic IR resizes without antialiasing."""
    from anomalib.deploy import OpenVINOInferencer as AnomalibOpenVINOInferencer

    monkeypatch.chdir(tmp_path)  # anomalib's class writes openvino_cache/ into the working directory

    inferencer = AnomalibOpenVINOInferencer(deployed["dynamic"], device="CPU", config=F32)
    large = [path for path in raw_files if "131x97" in path.name]
    gaps = [
        float(np.abs(_as_numpy(inferencer.predict(path).anomaly_map) - _reference(deployed, path)["anomaly_map"]).max())
        for path in large
    ]
    assert max(gaps) > MAP_ATOL


def test_ir_exported_at_another_size_is_refused_with_both_sizes(deployed: dict, raw_files: list[Path]) -> None:
    root = Path(deployed["static"]).parents[2] / "other_size"
    xml = deployed["engine"].export(deployed["model"], ExportType.OPENVINO, root, input_size=(72, 72))
    inferencer = OpenVINOInferencer(xml, device="CPU", config=F32, cache_dir=None)
    with pytest.raises(ValueError, match=r"takes 72x72 images.*resizes images to 64x64.*--input_size \[64,64\]"):
        inferencer.predict(raw_files[0])
