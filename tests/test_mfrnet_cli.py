"""MFRNet through anomalib's own CLI: train (fit + test), test from a checkpoint, predict, export, onnxruntime."""

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

from anomalib_crr import MFRNet

from .helpers import TINY_IMAGE, TINY_MFRNET, onnx_outputs, run_offline

MODEL_CONFIG: dict[str, Any] = {
    "model": {
        "init_args": {
            **TINY_MFRNET,
            "pre_processor": {
                "class_path": "anomalib.pre_processing.PreProcessor",
                "init_args": {
                    "transform": {
                        "class_path": "torchvision.transforms.v2.Resize",
                        "init_args": {"size": [TINY_IMAGE, TINY_IMAGE]},
                    }
                },
            },
        }
    }
}


@pytest.fixture(scope="module")
def cli_run(tiny_dataset: Path, module_tmp_dir: Callable[[str], Path]) -> dict[str, Any]:
    """``anomalib train --model MFRNet`` in process: fit + test on the generated dataset."""
    root = module_tmp_dir("mfrnet_cli")
    config = root / "mfrnet_tiny.yaml"
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
        args=[
            "train", "--model", "MFRNet", "--config", str(config), *data_args, *common,
            "--trainer.max_epochs", "2", "--trainer.logger", "false",
        ]
    )  # fmt: skip
    checkpoints = sorted((root / "results").rglob("*.ckpt"))
    return {"cli": cli, "root": root, "config": config, "ckpt": checkpoints[-1], "data_args": data_args}


def test_train_fits_and_tests_with_metrics(cli_run: dict[str, Any]) -> None:
    cli = cli_run["cli"]
    assert isinstance(cli.model, MFRNet)
    assert cli.engine.trainer.global_step == 4
    assert {"image_AUROC", "pixel_AUROC"} <= set(cli.engine.trainer.callback_metrics)
    saved = yaml.safe_load(next((cli_run["root"] / "results").rglob("config.yaml")).read_text())
    assert saved["model"]["class_path"] == "anomalib_crr.MFRNet"
    assert saved["model"]["init_args"]["mask_cell_size"] == [2, 4]
    assert list((cli_run["root"] / "results").rglob("images/*/*.png"))


def test_test_subcommand_restores_the_checkpoint_and_reproduces_the_metrics(cli_run: dict[str, Any]) -> None:
    trained = {k: float(v) for k, v in cli_run["cli"].engine.trainer.callback_metrics.items() if "AUROC" in k}
    cli = AnomalibCLI(
        args=[
            "test", "--model", "MFRNet", "--config", str(cli_run["config"]), "--ckpt_path", str(cli_run["ckpt"]),
            *cli_run["data_args"], "--trainer.accelerator", "cpu", "--trainer.devices", "1",
            "--default_root_dir", str(cli_run["root"] / "test"),
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
            "predict", "--model", "MFRNet", "--config", str(cli_run["config"]), "--ckpt_path", str(cli_run["ckpt"]),
            "--data", str(tiny_dataset / "washer" / "test" / "stain"),
            "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--default_root_dir", str(out),
        ]
    )  # fmt: skip
    assert sorted(p.name for p in out.rglob("*.png")) == ["000.png", "001.png"]


@pytest.fixture(scope="module")
def exported(cli_run: dict[str, Any]) -> dict[str, Path]:
    out = cli_run["root"] / "export"
    for export_type in ("onnx", "torch"):
        AnomalibCLI(
            args=[
                "export", "--model", "MFRNet", "--config", str(cli_run["config"]),
                "--export_type", export_type, "--ckpt_path", str(cli_run["ckpt"]),
                "--input_size", f"[{TINY_IMAGE}, {TINY_IMAGE}]", "--default_root_dir", str(out),
            ]
        )  # fmt: skip
    return {"onnx": next(out.rglob("model.onnx")), "torch": next(out.rglob("model.pt"))}


def _reference_outputs(ckpt: Path, images: torch.Tensor) -> Any:
    model = MFRNet.load_from_checkpoint(ckpt).eval()
    with torch.no_grad():
        return model(images)


def test_onnx_matches_the_torch_model(cli_run: dict[str, Any], exported: dict[str, Path]) -> None:
    images = torch.rand(2, 3, TINY_IMAGE, TINY_IMAGE)
    expected = _reference_outputs(cli_run["ckpt"], images)
    outputs = onnx_outputs(exported["onnx"], images)
    assert outputs["anomaly_map"].shape == tuple(expected.anomaly_map.shape) == (2, 1, TINY_IMAGE, TINY_IMAGE)
    np.testing.assert_allclose(outputs["anomaly_map"], expected.anomaly_map.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        outputs["pred_score"].reshape(-1), expected.pred_score.numpy().reshape(-1), rtol=1e-4, atol=1e-5
    )
    # the post-processor's normalised score and label travel with the graph too
    assert {"pred_label", "pred_mask"} <= set(outputs)
    np.testing.assert_array_equal(outputs["pred_label"].reshape(-1), expected.pred_label.numpy().reshape(-1))


def test_torch_export_matches_the_torch_model(cli_run: dict[str, Any], exported: dict[str, Path]) -> None:
    images = torch.rand(2, 3, TINY_IMAGE, TINY_IMAGE)
    expected = _reference_outputs(cli_run["ckpt"], images)
    model = torch.load(exported["torch"], map_location="cpu", weights_only=False)["model"].eval()
    with torch.no_grad():
        actual = model(images)
    torch.testing.assert_close(actual.pred_score, expected.pred_score)
    torch.testing.assert_close(actual.anomaly_map, expected.anomaly_map)


def test_real_console_script_resolves_mfrnet(tmp_path: Path) -> None:
    """``anomalib train --model MFRNet`` in a fresh interpreter (the start-up hook registers the plugin)."""
    script = Path(sys.executable).with_name("anomalib")
    args = ["train", "--model", "MFRNet", "--model.pre_trained", "false", "--data", "anomalib.data.MVTecAD"]
    result = run_offline([str(script), *args, "--print_config"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(("seed_everything:", "model:", "trainer:")))
    config = yaml.safe_load("\n".join(lines[start:]))
    assert config["model"]["class_path"] == "anomalib_crr.MFRNet"
    assert config["model"]["init_args"]["backbone"] == "tf_efficientnet_lite0"


def test_onnx_with_dynamic_input_size(tmp_path: Path) -> None:
    """Without ``input_size`` the graph takes any H x W; its pre-processor resizes to the model's 64 x 64."""
    from .helpers import tiny_mfrnet

    model = tiny_mfrnet().eval()
    onnx_path = model.to_onnx(tmp_path, input_size=None)
    for shape in [(1, 3, 64, 64), (2, 3, 80, 120)]:
        images = torch.rand(*shape)
        outputs = onnx_outputs(onnx_path, images)
        with torch.no_grad():
            expected = model(images)
        np.testing.assert_allclose(outputs["anomaly_map"], expected.anomaly_map.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(
            outputs["pred_score"].reshape(-1), expected.pred_score.numpy().reshape(-1), rtol=1e-4, atol=1e-4
        )
