"""CRR with a timm CNN encoder (issue 33): the preset through anomalib's CLI, exports, weights, gradients, ablations."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from anomalib.cli import AnomalibCLI
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_crr import CRR
from anomalib_crr.models.crr import CrrModel

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs" / "model" / "crr_cnn.yaml"
LITE0_WEIGHTS = ROOT.parent / "shared" / "weights" / "tf_efficientnet_lite0.in1k.safetensors"
CNN_IMAGE = 64  # a multiple of the preset's 16 px input multiple; keeps the tests fast

# A small CNN CRR: random-init lite0, the preset's stages, a 2-block decoder and a narrow head.
TINY_CNN: dict[str, Any] = {
    "encoder_name": "tf_efficientnet_lite0",
    "encoder_weights": None,
    "target_layers": ["blocks.2", "blocks.4"],
    "token_stride": 16,
    "decoder_dim": 64,
    "decoder_depth": 2,
    "seg_base_width": 8,
    "seg_output_size": 32,
}


def tiny_cnn_crr(**overrides: Any) -> CRR:
    kwargs = {
        **TINY_CNN,
        "stage1_steps": 2,
        "stage2_steps": 2,
        "warmup_steps": 1,
        "dtd_dir": None,
        "stage2_batch_size": None,
        **overrides,
    }
    kwargs.setdefault("pre_processor", CRR.configure_pre_processor(image_size=(CNN_IMAGE, CNN_IMAGE), **_enc()))
    return CRR(**kwargs)


def _enc() -> dict[str, Any]:
    return {"encoder_name": "tf_efficientnet_lite0", "target_layers": TINY_CNN["target_layers"], "token_stride": 16}


def _datamodule(root: Path) -> MVTecAD:
    return MVTecAD(root=root, category="washer", train_batch_size=4, eval_batch_size=4, num_workers=0)


def _engine(root: Path) -> Engine:
    return Engine(default_root_dir=root, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)


# --- the preset through anomalib's own CLI ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def preset_run(tiny_dataset: Path, module_tmp_dir: Callable[[str], Path]) -> dict[str, Any]:
    """``anomalib train --config configs/model/crr_cnn.yaml`` (random-init lite0, 2 + 2 steps) on generated data."""
    root = module_tmp_dir("crr_cnn")
    data_args = [
        "--data", "anomalib.data.MVTecAD", "--data.root", str(tiny_dataset), "--data.category", "washer",
        "--data.num_workers", "0", "--data.train_batch_size", "4", "--data.eval_batch_size", "4",
    ]  # fmt: skip
    overrides = [
        "--model.encoder_weights", "null", "--model.stage1_steps", "2", "--model.stage2_steps", "2",
        "--model.warmup_steps", "1",
    ]  # fmt: skip
    common = ["--trainer.accelerator", "cpu", "--trainer.devices", "1", "--default_root_dir", str(root / "results")]
    cli = AnomalibCLI(
        args=["train", "--config", str(PRESET), *overrides, *data_args, *common, "--trainer.logger", "false"]
    )
    checkpoint = sorted((root / "results").rglob("*.ckpt"))[-1]
    return {"cli": cli, "root": root, "ckpt": checkpoint, "data_args": data_args, "overrides": overrides}


def test_preset_trains_both_stages_and_tests_through_the_cli(preset_run: dict[str, Any]) -> None:
    cli = preset_run["cli"]
    assert isinstance(cli.model, CRR)
    assert cli.model.model.is_cnn
    assert cli.model.model.target_layers == ["blocks.2", "blocks.4"]
    assert cli.engine.trainer.global_step == 4  # 2 stage-I + 2 stage-II steps
    assert cli.model.model.seg_head_active
    metrics = cli.engine.trainer.callback_metrics
    assert {"image_AUROC", "pixel_AUROC"} <= set(metrics)
    assert all(np.isfinite(float(metrics[key])) for key in ("image_AUROC", "pixel_AUROC"))


def test_preset_predicts_from_its_checkpoint(preset_run: dict[str, Any], tiny_dataset: Path) -> None:
    out = preset_run["root"] / "predict"
    AnomalibCLI(
        args=[
            "predict", "--config", str(PRESET), *preset_run["overrides"], "--ckpt_path", str(preset_run["ckpt"]),
            "--data", str(tiny_dataset / "washer" / "test" / "stain"),
            "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--default_root_dir", str(out),
        ]
    )  # fmt: skip
    assert sorted(p.name for p in out.rglob("*.png")) == ["000.png", "001.png"]


def test_preset_exports_onnx_and_openvino_that_match_torch(preset_run: dict[str, Any], tmp_path: Path) -> None:
    import onnxruntime as ort
    import openvino as ov

    out = tmp_path / "export"
    for export_type in ("onnx", "openvino"):
        AnomalibCLI(
            args=[
                "export", "--config", str(PRESET), *preset_run["overrides"], "--export_type", export_type,
                "--ckpt_path", str(preset_run["ckpt"]), "--input_size", "[256, 256]", "--default_root_dir", str(out),
            ]
        )  # fmt: skip
    model = CRR.load_from_checkpoint(preset_run["ckpt"]).eval()
    images = torch.rand(2, 3, 256, 256, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(images)
    session = ort.InferenceSession(str(next(out.rglob("model.onnx"))), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    onnx_out = dict(zip(names, session.run(None, {session.get_inputs()[0].name: images.numpy()}), strict=True))
    compiled = ov.Core().compile_model(str(next(out.rglob("model.xml"))), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    ov_result = compiled(images.numpy())
    ov_out = {port.get_any_name(): ov_result[port] for port in compiled.outputs}
    for outputs in (onnx_out, ov_out):
        np.testing.assert_allclose(
            outputs["pred_score"].reshape(-1), expected.pred_score.numpy().reshape(-1), rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(outputs["anomaly_map"], expected.anomaly_map.numpy(), rtol=1e-4, atol=1e-5)


# --- weights, layers and sizes -----------------------------------------------------------------------------------


@pytest.mark.skipif(not LITE0_WEIGHTS.is_file(), reason="the shared lite0 weights file is not on this machine")
def test_shared_lite0_weights_load_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    import timm
    from safetensors.torch import load_file

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = CrrModel(**{**TINY_CNN, "encoder_weights": str(LITE0_WEIGHTS)})
    stem = load_file(str(LITE0_WEIGHTS))["conv_stem.weight"]
    torch.testing.assert_close(model.encoder.extractor.feature_extractor.conv_stem.weight, stem)
    assert timm.models.get_pretrained_cfg("tf_efficientnet_lite0").mean == (0.5, 0.5, 0.5)
    assert model.image_mean.flatten().tolist() == [0.5, 0.5, 0.5]  # the backbone's normalisation, not ImageNet's


def test_wrong_weights_file_and_unknown_layer_are_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors"):
        CrrModel(**{**TINY_CNN, "encoder_weights": str(missing)})
    other = tmp_path / "resnet18.pth"
    import timm

    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), other)
    with pytest.raises(RuntimeError, match=r"resnet18\.pth.*do not match"):
        CrrModel(**{**TINY_CNN, "encoder_weights": str(other)})
    with pytest.raises(ValueError, match=r"no feature layer\(s\) \['blocks\.9'\].*available"):
        CrrModel(**{**TINY_CNN, "target_layers": ["blocks.2", "blocks.9"]})


def test_sizes_that_do_not_tile_are_refused_with_the_nearest_valid_sizes() -> None:
    with pytest.raises(
        ValueError, match=r"image_size 250 is not a multiple of the CNN encoder's input multiple 16.*240 or 256"
    ):
        CRR.configure_pre_processor(image_size=(250, 250), **_enc())
    with pytest.raises(ValueError, match="decoder_dim and token_stride apply to CNN encoders only"):
        CrrModel(encoder_name="vit_small_patch14_reg4_dinov2", encoder_weights=None, token_stride=16)


def test_cnn_groups_are_the_stages_on_one_grid() -> None:
    model = CrrModel(**TINY_CNN).train()
    encoder_maps, decoder_maps = model(torch.rand(2, 3, 64, 96))
    assert [tuple(e.shape) for e in encoder_maps] == [(2, 40, 4, 6), (2, 112, 4, 6)]
    assert [tuple(d.shape) for d in decoder_maps] == [(2, 40, 4, 6), (2, 112, 4, 6)]
    seg_input = model.segmentation_input(encoder_maps, decoder_maps)
    assert seg_input.shape[1] == 152
    cosine = torch.nn.functional.cosine_similarity(encoder_maps[1], decoder_maps[1], dim=1)
    torch.testing.assert_close(seg_input[:, 40:].sum(dim=1), -cosine, atol=1e-5, rtol=1e-4)


# --- training: frozen encoder, ablation switches ------------------------------------------------------------------


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


def test_encoder_gets_no_gradient_in_either_stage(tiny_dataset: Path, tmp_path: Path) -> None:
    model = tiny_cnn_crr(stage1_steps=2, stage2_steps=2)
    encoder_before = _snapshot(model.model.encoder)
    decoder_before = _snapshot(model.model.decoder)
    assert not any(param.requires_grad for param in model.model.encoder.parameters())
    _engine(tmp_path).fit(model, datamodule=_datamodule(tiny_dataset))
    assert model.train_step_count.item() == 4
    assert not any(param.requires_grad for param in model.model.encoder.parameters())
    assert all(param.grad is None for param in model.model.encoder.parameters())
    assert not _changed(encoder_before, model.model.encoder)  # BatchNorm statistics included
    assert _changed(decoder_before, model.model.decoder)


def _count_synthesiser_calls(model: CRR) -> list[int]:
    """Count the calls of the synthesiser the fit creates (its ``forward``, wrapped once the fit starts)."""
    calls: list[int] = []
    original_fit_start = model.on_fit_start

    def on_fit_start() -> None:
        original_fit_start()
        forward = model.synthesizer.forward

        def counting(*args: Any, **kwargs: Any) -> Any:
            calls.append(1)
            return forward(*args, **kwargs)

        model.synthesizer.forward = counting  # type: ignore[method-assign]

    model.on_fit_start = on_fit_start  # type: ignore[method-assign]
    return calls


def test_reconstruction_only_never_synthesises_and_never_trains_the_seg_head(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    model = tiny_cnn_crr(repair=False, stage1_steps=3, stage2_steps=0)
    seg_before = _snapshot(model.model.seg_head)
    calls = _count_synthesiser_calls(model)
    _engine(tmp_path).fit(model, datamodule=_datamodule(tiny_dataset))
    assert model.train_step_count.item() == 3
    assert not calls
    assert not model.model.seg_head_active
    assert not _changed(seg_before, model.model.seg_head)


def test_repair_calls_the_synthesiser_in_stage_one(tiny_dataset: Path, tmp_path: Path) -> None:
    """The counterpart of the test above: with ``repair=True`` stage I synthesises (so that test can fail)."""
    model = tiny_cnn_crr(repair=True, stage1_steps=2, stage2_steps=0)
    calls = _count_synthesiser_calls(model)
    _engine(tmp_path).fit(model, datamodule=_datamodule(tiny_dataset))
    assert len(calls) == 2
    assert not model.model.seg_head_active  # stage2_steps=0: repair without the segmentation head


# --- the ViT path is unchanged ------------------------------------------------------------------------------------


def test_dinov2_path_gives_the_outputs_of_the_release_before_the_cnn_encoder() -> None:
    """Reference computed with the code of commit 4eab00c (before the CNN path) on the same seed and input."""
    torch.manual_seed(0)
    model = CrrModel(
        encoder_name="vit_small_patch14_reg4_dinov2",
        encoder_weights=None,
        target_layers=[0, 1],
        decoder_depth=2,
        fuse_layer_encoder=[[0], [1]],
        fuse_layer_decoder=[[0], [1]],
        seg_base_width=8,
        seg_output_size=32,
    ).eval()
    model.mark_seg_head_trained()
    images = torch.rand(2, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(images)
    assert out.pred_score.tolist() == pytest.approx([0.914049506187439, 0.9050557017326355], abs=1e-6)
    assert float(out.anomaly_map.double().sum()) == pytest.approx(5368.967655003071, rel=1e-6)
    assert float(out.anomaly_map.double().pow(2).sum()) == pytest.approx(4598.056941924808, rel=1e-6)
