"""CRR through anomalib's own CLI: train (fit + test), predict, export to ONNX and torch, onnxruntime agreement."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from anomalib.cli import AnomalibCLI

from anomalib_crr import CRR

from .helpers import PRINT_CONFIG_ARGS, TINY_CROP, TINY_CRR, TINY_IMAGE, run_offline

MODEL_CONFIG: dict[str, Any] = {
    "model": {
        "init_args": {
            **dict(TINY_CRR.items()),
            "stage1_steps": 2,
            "stage2_steps": 2,
            "pre_processor": {
                "class_path": "anomalib.pre_processing.PreProcessor",
                "init_args": {
                    "transform": {
                        "class_path": "torchvision.transforms.v2.Compose",
                        "init_args": {
                            "transforms": [
                                {
                                    "class_path": "torchvision.transforms.v2.Resize",
                                    "init_args": {"size": [TINY_IMAGE, TINY_IMAGE]},
                                },
                                {
                                    "class_path": "torchvision.transforms.v2.CenterCrop",
                                    "init_args": {"size": [TINY_CROP, TINY_CROP]},
                                },
                            ]
                        },
                    }
                },
            },
        }
    }
}


@pytest.fixture(scope="module")
def cli_run(tiny_dataset: Path, module_tmp_dir: Callable[[str], Path]) -> dict[str, Any]:
    """``anomalib train --model CRR`` in process: fit + test on the generated dataset."""
    root = module_tmp_dir("cli")
    config = root / "crr_tiny.yaml"
    config.write_text(yaml.safe_dump(MODEL_CONFIG))
    data_args = [
        "--data", "anomalib.data.MVTecAD",
        "--data.root", str(tiny_dataset),
        "--data.category", "washer",
        "--data.num_workers", "0",
        "--data.train_batch_size", "4",
        "--data.eval_batch_size", "4",
    ]  # fmt: skip
    common = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--default_root_dir", str(root / "results")]
    cli = AnomalibCLI(
        args=["train", "--model", "CRR", "--config", str(config), *data_args, *common, "--trainer.logger", "false"]
    )
    checkpoints = sorted((root / "results").rglob("*.ckpt"))
    return {"cli": cli, "root": root, "config": config, "ckpt": checkpoints[-1], "data_args": data_args}


def test_train_fits_and_tests_with_metrics(cli_run: dict[str, Any]) -> None:
    cli = cli_run["cli"]
    assert isinstance(cli.model, CRR)
    assert cli.engine.trainer.global_step == 4
    metrics = cli.engine.trainer.callback_metrics
    assert {"image_AUROC", "pixel_AUROC"} <= set(metrics)
    saved = yaml.safe_load(next((cli_run["root"] / "results").rglob("config.yaml")).read_text())
    assert saved["model"]["class_path"] == "anomalib_crr.CRR"
    assert list((cli_run["root"] / "results").rglob("images/*/*.png"))


def test_test_subcommand_restores_the_checkpoint_and_reproduces_the_metrics(cli_run: dict[str, Any]) -> None:
    """``anomalib test --model CRR --ckpt_path ...`` rebuilds the model and gives the metrics of the train run."""
    trained = {k: float(v) for k, v in cli_run["cli"].engine.trainer.callback_metrics.items() if "AUROC" in k}
    out = cli_run["root"] / "test"
    cli = AnomalibCLI(
        args=[
            "test", "--model", "CRR", "--config", str(cli_run["config"]), "--ckpt_path", str(cli_run["ckpt"]),
            *cli_run["data_args"], "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--default_root_dir", str(out),
        ]
    )  # fmt: skip
    tested = {k: float(v) for k, v in cli.engine.trainer.callback_metrics.items() if "AUROC" in k}
    assert set(tested) == set(trained) == {"image_AUROC", "pixel_AUROC"}
    for key, value in trained.items():
        assert tested[key] == pytest.approx(value, abs=1e-6)


def test_predict_writes_images(cli_run: dict[str, Any], tiny_dataset: Path) -> None:
    out = cli_run["root"] / "predict"
    AnomalibCLI(
        args=[
            "predict", "--model", "CRR", "--config", str(cli_run["config"]),
            "--ckpt_path", str(cli_run["ckpt"]),
            "--data", str(tiny_dataset / "washer" / "test" / "stain"),
            "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--default_root_dir", str(out),
        ]
    )  # fmt: skip
    written = sorted(p.name for p in out.rglob("*.png"))
    assert written == ["000.png", "001.png"]


@pytest.fixture(scope="module")
def exported(cli_run: dict[str, Any]) -> dict[str, Path]:
    out = cli_run["root"] / "export"
    for export_type in ("onnx", "torch"):
        AnomalibCLI(
            args=[
                "export", "--model", "CRR", "--config", str(cli_run["config"]),
                "--export_type", export_type, "--ckpt_path", str(cli_run["ckpt"]),
                "--input_size", f"[{TINY_IMAGE}, {TINY_IMAGE}]", "--default_root_dir", str(out),
            ]
        )  # fmt: skip
    return {"onnx": next(out.rglob("model.onnx")), "torch": next(out.rglob("model.pt"))}


def _reference_outputs(ckpt: Path, images: torch.Tensor) -> Any:
    model = CRR.load_from_checkpoint(ckpt).eval()
    with torch.no_grad():
        return model(images)


def test_onnx_matches_the_torch_model(cli_run: dict[str, Any], exported: dict[str, Path]) -> None:
    import onnxruntime as ort

    images = torch.rand(2, 3, TINY_IMAGE, TINY_IMAGE)
    expected = _reference_outputs(cli_run["ckpt"], images)
    session = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    outputs = dict(zip(names, session.run(None, {session.get_inputs()[0].name: images.numpy()}), strict=True))
    np.testing.assert_allclose(
        outputs["pred_score"].reshape(-1), expected.pred_score.numpy().reshape(-1), rtol=1e-4, atol=1e-6
    )
    assert outputs["anomaly_map"].shape == tuple(expected.anomaly_map.shape) == (2, 1, TINY_CROP, TINY_CROP)
    np.testing.assert_allclose(outputs["anomaly_map"], expected.anomaly_map.numpy(), rtol=1e-4, atol=1e-6)


def test_torch_export_matches_the_torch_model(cli_run: dict[str, Any], exported: dict[str, Path]) -> None:
    images = torch.rand(2, 3, TINY_IMAGE, TINY_IMAGE)
    expected = _reference_outputs(cli_run["ckpt"], images)
    model = torch.load(exported["torch"], map_location="cpu", weights_only=False)["model"].eval()
    with torch.no_grad():
        actual = model(images)
    torch.testing.assert_close(actual.pred_score, expected.pred_score)
    torch.testing.assert_close(actual.anomaly_map, expected.anomaly_map)


def test_real_console_script_resolves_the_short_name(tmp_path: Path) -> None:
    """``anomalib train --model CRR`` in a fresh interpreter: only the start-up hook can make it resolve."""
    script = Path(sys.executable).with_name("anomalib")
    result = run_offline([str(script), *PRINT_CONFIG_ARGS], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    # stdout holds anomalib's log lines, then the YAML config from its first top-level key on
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(("seed_everything:", "model:", "trainer:")))
    config = yaml.safe_load("\n".join(lines[start:]))
    assert config["model"]["class_path"] == "anomalib_crr.CRR"
    assert config["model"]["init_args"]["stage1_steps"] == 10000


def test_onnx_with_dynamic_input_size(tmp_path: Path) -> None:
    """Without ``input_size`` the graph takes any H x W; the pre-processor inside resizes to the model size."""
    import onnxruntime as ort

    from .helpers import tiny_crr

    model = tiny_crr().eval()
    model.model.mark_seg_head_trained()
    session = ort.InferenceSession(str(model.to_onnx(tmp_path, input_size=None)), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 64, 64), (2, 3, 80, 120)]:
        images = torch.rand(*shape)
        names = [o.name for o in session.get_outputs()]
        outputs = dict(zip(names, session.run(None, {"input": images.numpy()}), strict=True))
        with torch.no_grad():
            expected = model(images)
        np.testing.assert_allclose(
            outputs["pred_score"].reshape(-1), expected.pred_score.numpy().reshape(-1), rtol=1e-4
        )
        np.testing.assert_allclose(outputs["anomaly_map"], expected.anomaly_map.numpy(), rtol=1e-4, atol=1e-6)
