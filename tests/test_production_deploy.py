"""Issue 11, items 2-4: OpenVINO / onnxruntime / TorchInferencer parity, folder prediction tables, checkpoints.

One tiny CRR is trained through anomalib's CLI (so its run folder holds the ``config.yaml`` users pass back
with ``--config``) and one tiny MFRNet through the Engine; every test here reuses them.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from anomalib.cli import AnomalibCLI
from anomalib.data import MVTecAD
from anomalib.data.utils import read_image
from anomalib.deploy import CompressionType, ExportType
from anomalib.engine import Engine
from PIL import Image

from anomalib_crr import CRR, MFRNet
from anomalib_crr.cli import accept_training_run_config
from anomalib_crr.cli import main as cli_main
from anomalib_crr.data.validation import InvalidInputError
from anomalib_crr.models.components.input_checks import CheckpointMismatchError

from .helpers import TINY_CRR, TINY_IMAGE, onnx_outputs, tiny_crr, tiny_mfrnet

CATEGORY = "washer"
MODELS = {"CRR": CRR, "MFRNet": MFRNet}
# |OpenVINO or onnxruntime - torch| allowed on post-processed scores and maps (both in [0, 1]): float32 kernels
# sum in other orders; FP16 weights round to 11 significant bits.
FP32_ATOL = 1e-4
FP16_ATOL = 2e-2


def _datamodule(root: Path) -> MVTecAD:
    return MVTecAD(root=root, category=CATEGORY, train_batch_size=2, eval_batch_size=4, num_workers=0)


def _engine(root: Path, **kwargs: Any) -> Engine:
    return Engine(
        default_root_dir=root, logger=False, accelerator="cpu", devices=1, enable_progress_bar=False, **kwargs
    )


CLI_MODEL = {
    "model": {
        "class_path": "anomalib_crr.CRR",
        "init_args": {
            **TINY_CRR,
            "stage1_steps": 1,
            "stage2_steps": 1,
            "pre_processor": {
                "class_path": "anomalib.pre_processing.PreProcessor",
                "init_args": {
                    "transform": {
                        "class_path": "torchvision.transforms.v2.Compose",
                        "init_args": {
                            "transforms": [
                                {"class_path": "torchvision.transforms.v2.Resize", "init_args": {"size": [64, 64]}},
                                {"class_path": "torchvision.transforms.v2.CenterCrop", "init_args": {"size": [56, 56]}},
                            ]
                        },
                    }
                },
            },
        },
    }
}


@pytest.fixture(scope="module")
def trained(tiny_dataset: Path, module_tmp_dir: Callable[[str], Path]) -> dict[str, Any]:
    """CRR via ``anomalib train`` (in process) and MFRNet via ``Engine.fit``; checkpoints and run config."""
    root = module_tmp_dir("deploy")
    config = root / "crr_tiny.yaml"
    config.write_text(yaml.safe_dump(CLI_MODEL))
    AnomalibCLI(
        args=[
            "fit", "--config", str(config), "--data", "anomalib.data.MVTecAD", "--data.root", str(tiny_dataset),
            "--data.category", CATEGORY, "--data.num_workers", "0", "--data.train_batch_size", "2",
            "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.logger", "false",
            "--default_root_dir", str(root / "results"),
        ]
    )  # fmt: skip
    crr_ckpt = next((root / "results").rglob("model.ckpt"))
    engine = _engine(root / "mfrnet", max_epochs=1, limit_train_batches=1)
    engine.fit(model=tiny_mfrnet(), datamodule=_datamodule(tiny_dataset))
    images = sorted((tiny_dataset / CATEGORY / "test").rglob("*.png"))
    return {
        "root": root,
        "ckpt": {"CRR": crr_ckpt, "MFRNet": Path(engine.best_model_path)},
        "run_config": next((root / "results").rglob("config.yaml")),
        "images": images,
        "batch": torch.stack([read_image(path, as_tensor=True) for path in images]),
    }


def _torch_outputs(name: str, trained: dict[str, Any]) -> dict[str, np.ndarray]:
    model = MODELS[name].load_from_checkpoint(trained["ckpt"][name]).eval()
    with torch.no_grad():
        out = model(trained["batch"])
    return {"pred_score": out.pred_score.numpy(), "anomaly_map": out.anomaly_map.numpy()}


def _max_difference(expected: dict[str, np.ndarray], actual: dict[str, Any]) -> dict[str, float]:
    return {
        key: float(np.abs(np.asarray(actual[key]).reshape(value.shape) - value).max())
        for key, value in expected.items()
    }


@pytest.mark.parametrize("name", sorted(MODELS))
def test_openvino_and_onnxruntime_match_torch(
    name: str, trained: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FP32 and FP16 OpenVINO IR through anomalib's OpenVINOInferencer, and the ONNX file through onnxruntime."""
    from anomalib.deploy import OpenVINOInferencer

    monkeypatch.chdir(tmp_path)  # OpenVINOInferencer writes ./openvino_cache
    model_class, ckpt = MODELS[name], trained["ckpt"][name]
    expected = _torch_outputs(name, trained)
    engine = _engine(tmp_path)
    size = (TINY_IMAGE, TINY_IMAGE)
    onnx_path = engine.export(
        model_class.load_from_checkpoint(ckpt), ExportType.ONNX, tmp_path / "onnx", input_size=size
    )
    differences = {"onnxruntime": _max_difference(expected, onnx_outputs(onnx_path, trained["batch"]))}
    for compression, tolerance in ((None, FP32_ATOL), (CompressionType.FP16, FP16_ATOL)):
        label = f"openvino_{compression.value if compression else 'FP32'}"
        xml = engine.export(
            model_class.load_from_checkpoint(ckpt), ExportType.OPENVINO, tmp_path / label, input_size=size,
            compression_type=compression,
        )  # fmt: skip
        inferencer = OpenVINOInferencer(xml, device="CPU", config={"INFERENCE_PRECISION_HINT": "f32"})
        results = [inferencer.predict(path) for path in trained["images"]]  # from files, as users call it
        actual = {key: np.concatenate([getattr(r, key) for r in results]) for key in expected}
        differences[label] = _max_difference(expected, actual)
        assert max(differences[label].values()) <= tolerance, differences
    assert max(differences["onnxruntime"].values()) <= FP32_ATOL, differences
    (tmp_path.parent / f"parity_{name}.json").write_text(json.dumps(differences))  # for the report


def test_openvino_cli_export(trained: dict[str, Any], tmp_path: Path) -> None:
    """``anomalib-crr export --export_type openvino --config <run config.yaml>``; the run's file is not edited."""
    run_config = Path(trained["run_config"])
    before = run_config.read_bytes()
    args = [
        "export", "--config", str(run_config), "--export_type", "openvino",
        "--ckpt_path", str(trained["ckpt"]["CRR"]), "--input_size", f"[{TINY_IMAGE}, {TINY_IMAGE}]",
        "--default_root_dir", str(tmp_path),
    ]  # fmt: skip
    with pytest.raises(SystemExit):  # plain anomalib 2.7 refuses the run's training-only keys
        AnomalibCLI(args=args)
    cli_main(args)
    xml = next(tmp_path.rglob("model.xml"))
    assert xml.with_suffix(".bin").stat().st_size > 0
    assert run_config.read_bytes() == before


def test_training_run_config_filter_keeps_everything_else(trained: dict[str, Any], tmp_path: Path) -> None:
    run_config = Path(trained["run_config"])
    original = yaml.safe_load(run_config.read_text())
    for prefix in ("--config ", "--config="):
        args = ["predict", *f"{prefix}{run_config}".split(" "), "--ckpt_path", "x.ckpt"]
        updated = accept_training_run_config(args, tmp_path)
        copy = Path(updated[1].removeprefix("--config=") if prefix.endswith("=") else updated[2])
        assert copy.parent == tmp_path
        assert updated[-2:] == ["--ckpt_path", "x.ckpt"]
        filtered = yaml.safe_load(copy.read_text())
        assert set(original) - set(filtered) == {"optimizer", "lr_scheduler"}
        assert filtered == {k: v for k, v in original.items() if k not in ("optimizer", "lr_scheduler")}
    train_args = ["train", "--config", str(run_config)]
    assert accept_training_run_config(train_args, tmp_path) == train_args  # train keeps its optimizer keys


def _table(folder: Path) -> tuple[list[dict[str, str]], list[dict[str, Any]]]:
    csv_path, json_path = next(folder.rglob("predictions.csv")), next(folder.rglob("predictions.json"))
    with csv_path.open() as file:
        return list(csv.DictReader(file)), json.loads(json_path.read_text())


def test_cli_predict_on_a_folder_writes_images_and_a_table(
    trained: dict[str, Any], tiny_dataset: Path, tmp_path: Path
) -> None:
    """``anomalib-crr predict --ckpt_path ... --config <run config.yaml> --data <folder>``."""
    folder = tiny_dataset / CATEGORY / "test" / "stain"
    cli_main(
        [
            "predict", "--config", str(trained["run_config"]), "--ckpt_path", str(trained["ckpt"]["CRR"]),
            "--data", str(folder), "--default_root_dir", str(tmp_path),
        ]
    )  # fmt: skip
    rows, records = _table(tmp_path)
    names = sorted(path.name for path in folder.glob("*.png"))
    assert sorted(Path(row["image_path"]).name for row in rows) == names
    assert sorted(p.name for p in tmp_path.rglob("images/**/*.png")) == names
    assert [float(row["pred_score"]) for row in rows] == [record["pred_score"] for record in records]
    assert {row["pred_label"] for row in rows} <= {"0", "1"}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_load_from_checkpoint_and_engine_predict_write_the_table(
    name: str, trained: dict[str, Any], tiny_dataset: Path, tmp_path: Path
) -> None:
    model = MODELS[name].load_from_checkpoint(trained["ckpt"][name])
    predictions = _engine(tmp_path).predict(
        model=model, data_path=tiny_dataset / CATEGORY / "test", return_predictions=True
    )
    returned = {
        str(path): (float(score), bool(label))
        for batch in predictions
        for path, score, label in zip(
            batch.image_path, batch.pred_score.flatten(), batch.pred_label.flatten(), strict=True
        )
    }
    rows, records = _table(tmp_path)
    assert len(rows) == len(records) == len(returned) == len(trained["images"])
    for record in records:
        score, label = returned[record["image_path"]]
        assert record["pred_score"] == pytest.approx(score, abs=1e-7)
        assert record["pred_label"] == int(label)
        assert 0.0 <= record["anomaly_map_max"] <= 1.0


def test_torch_export_runs_in_anomalibs_torch_inferencer(
    trained: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anomalib.deploy import TorchInferencer

    expected = _torch_outputs("CRR", trained)
    model = CRR.load_from_checkpoint(trained["ckpt"]["CRR"])
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    path = _engine(tmp_path).export(model, ExportType.TORCH, tmp_path, input_size=(TINY_IMAGE, TINY_IMAGE))
    # The exported file is inference-only; the module that was exported keeps its trainable parameters.
    assert trainable
    assert {name for name, parameter in model.named_parameters() if parameter.requires_grad} == trainable
    with pytest.raises(ValueError, match="TRUST_REMOTE_CODE"):  # a pickled module is code: opt-in only
        TorchInferencer(path, device="cpu")
    monkeypatch.setenv("TRUST_REMOTE_CODE", "1")
    inferencer = TorchInferencer(path, device="cpu")
    results = [inferencer.predict(image) for image in trained["images"]]
    assert not any(getattr(result, key).requires_grad for result in results for key in expected)  # no autograd graph
    actual = {key: torch.cat([getattr(r, key) for r in results]).numpy() for key in expected}
    assert max(_max_difference(expected, actual).values()) <= FP32_ATOL  # batch 1 vs batched float32 kernels


@pytest.fixture(scope="module")
def checkpoints(tiny_dataset: Path, module_tmp_dir: Callable[[str], Path]) -> dict[str, Path]:
    """1 + 1 step CRR and a 1-epoch MFRNet, fitted once for the checkpoint tests."""
    root = module_tmp_dir("inputs_ckpt")
    paths = {}
    for name, factory, kwargs in (
        ("CRR", lambda: tiny_crr(stage1_steps=1, stage2_steps=1), {}),
        ("MFRNet", tiny_mfrnet, {"max_epochs": 1, "limit_train_batches": 1}),
    ):
        engine = Engine(default_root_dir=root, logger=False, accelerator="cpu", devices=1, **kwargs)
        engine.fit(model=factory(), datamodule=_datamodule(tiny_dataset))
        paths[name] = Path(engine.best_model_path)
    return paths


def test_bad_file_in_a_prediction_folder_is_named(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (TINY_IMAGE, TINY_IMAGE), "gray").save(folder / "fine.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    model = CRR.load_from_checkpoint(checkpoints["CRR"])
    with pytest.raises(InvalidInputError, match=r"1 unusable input file\(s\) for predict:\n  .*broken.png: "):
        _engine(tmp_path).predict(model=model, data_path=folder)


def test_checkpoint_of_the_other_model_is_explained(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(CheckpointMismatchError, match=rf"Checkpoint {checkpoints['MFRNet']} does not fit this CRR"):
        CRR.load_from_checkpoint(checkpoints["MFRNet"])
    with pytest.raises(CheckpointMismatchError, match="looks like another model") as error:
        _engine(tmp_path).test(model=tiny_crr(), datamodule=None, ckpt_path=checkpoints["MFRNet"])
    assert str(checkpoints["MFRNet"]) in str(error.value)
    assert "model.aggregator" in str(error.value)


def test_checkpoint_of_another_encoder_is_explained(
    checkpoints: dict[str, Path], tiny_dataset: Path, tmp_path: Path
) -> None:
    other = tiny_crr(encoder_name="vit_base_patch14_reg4_dinov2")
    with pytest.raises(CheckpointMismatchError, match="weights have other shapes") as error:
        _engine(tmp_path).test(model=other, datamodule=_datamodule(tiny_dataset), ckpt_path=checkpoints["CRR"])
    assert f"Checkpoint {checkpoints['CRR']} does not fit this CRR" in str(error.value)
    assert "(384,) in the checkpoint, (768,) in the model" in str(error.value)
    # Rebuilding from the checkpoint's own hyper-parameters (enums included) is the supported way.
    assert CRR.load_from_checkpoint(checkpoints["CRR"]).hparams.encoder_name == "vit_small_patch14_reg4_dinov2"


class _Payload:
    """Unpickling this runs ``os.system`` (what a malicious checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("model_class", [CRR, MFRNet], ids=["CRR", "MFRNet"])
def test_untrusted_checkpoint_is_refused_without_running_its_code(
    model_class: Any, checkpoints: dict[str, Path], tmp_path: Path
) -> None:
    marker = tmp_path / "payload_ran"
    checkpoint = torch.load(checkpoints[model_class.__name__], map_location="cpu", weights_only=False)  # ours
    checkpoint["hyper_parameters"]["payload"] = _Payload(marker)
    path = tmp_path / "untrusted.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(Exception, match="Weights only load failed"):
        model_class.load_from_checkpoint(path)
    assert not marker.exists()
    with pytest.raises(Exception, match="Weights only load failed"):
        _engine(tmp_path).test(
            model=model_class.load_from_checkpoint(checkpoints[model_class.__name__]), ckpt_path=path
        )
    assert not marker.exists()
