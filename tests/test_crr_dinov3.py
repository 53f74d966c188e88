"""CRR with timm's DINOv3 ViTs (patch 16, RoPE, 4 registers): sizes from the model, patch-size checks, a short fit
and ONNX export. Random-init encoders only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from anomalib.pre_processing import PreProcessor
from torchvision.transforms.v2 import Compose, Resize

from anomalib_crr import CRR
from anomalib_crr.models.crr.components.encoder import dino_architecture, supported_encoders

from .helpers import onnx_outputs, tiny_crr, tiny_crr_model

DINOV3 = "vit_small_patch16_dinov3"
IMAGE, CROP = 72, 64  # 4 x 4 patches of 16 px


def test_installed_timm_has_the_dinov3_names_and_they_are_accepted() -> None:
    assert {"vit_small_patch16_dinov3", "vit_base_patch16_dinov3"} <= set(timm.list_models("*dinov3*"))
    assert {"vit_small_patch16_dinov3", "vit_base_patch16_dinov3", "vit_large_patch16_dinov3"} <= set(
        supported_encoders()
    )
    base, large = dino_architecture("vit_base_patch16_dinov3"), dino_architecture("vit_large_patch16_dinov3")
    assert (base["patch_size"], base["num_prefix_tokens"], base["embed_dim"], base["num_heads"]) == (16, 5, 768, 12)
    assert base["target_layers"] == [2, 3, 4, 5, 6, 7, 8, 9]
    assert large["target_layers"] == [4, 6, 8, 10, 12, 14, 16, 18]


def test_dinov3_model_takes_patch_size_and_prefix_tokens_from_the_encoder() -> None:
    model = tiny_crr_model(encoder_name=DINOV3)
    assert (model.patch_size, model.num_prefix_tokens) == (16, 5)
    assert len(model.encoder.feature_extractor.blocks) == 2  # pruned after the deepest target layer
    model.train()
    encoder_maps, decoder_maps = model(torch.rand(2, 3, CROP, CROP))
    assert [tuple(m.shape) for m in encoder_maps + decoder_maps] == [(2, 384, 4, 4)] * 4
    model.eval()
    model.mark_seg_head_trained()
    with torch.no_grad():
        output = model(torch.rand(1, 3, CROP, 80))
    assert output.anomaly_map.shape == (1, 1, CROP, 80)


def test_image_sides_must_be_multiples_of_the_encoders_patch_size() -> None:
    assert tuple(CRR.configure_pre_processor(encoder_name=DINOV3).transform.transforms[1].size) == (384, 384)
    with pytest.raises(ValueError, match="not a multiple of the DINOv3 patch size 16"):
        CRR.configure_pre_processor(crop_size=56, encoder_name=DINOV3)
    with pytest.raises(ValueError, match=r"56x56 .*DINOv3 patch size 16"):
        tiny_crr(encoder_name=DINOV3, pre_processor=PreProcessor(transform=Compose([Resize((56, 56))])))
    with pytest.raises(ValueError, match="not a multiple of the encoder patch size 16"):
        tiny_crr_model(encoder_name=DINOV3).eval()(torch.rand(1, 3, 56, 56))


def test_dinov3_trains_a_few_steps_and_exports(tiny_dataset: Path, tmp_path: Path) -> None:
    pre_processor = CRR.configure_pre_processor(image_size=(IMAGE, IMAGE), crop_size=CROP, encoder_name=DINOV3)
    model = tiny_crr(encoder_name=DINOV3, pre_processor=pre_processor, stage1_steps=2, stage2_steps=1)
    before = {k: v.clone() for k, v in model.model.state_dict().items()}
    datamodule = MVTecAD(root=tiny_dataset, category="washer", train_batch_size=4, eval_batch_size=4, num_workers=0)
    Engine(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1).fit(model, datamodule=datamodule)
    after = model.model.state_dict()
    assert not torch.equal(before["decoder.0.attn.qkv.weight"], after["decoder.0.attn.qkv.weight"])
    assert not torch.equal(before["seg_head.fin_out.weight"], after["seg_head.fin_out.weight"])
    assert torch.equal(
        before["encoder.feature_extractor.blocks.1.attn.qkv.weight"],
        after["encoder.feature_extractor.blocks.1.attn.qkv.weight"],
    )
    model.eval()
    images = torch.rand(2, 3, IMAGE, IMAGE)
    with torch.no_grad():
        expected = model(images)
    outputs = onnx_outputs(model.to_onnx(tmp_path / "onnx", input_size=(IMAGE, IMAGE)), images)
    assert outputs["anomaly_map"].shape == (2, 1, CROP, CROP)
    np.testing.assert_allclose(outputs["anomaly_map"], expected.anomaly_map.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        outputs["pred_score"].reshape(-1), expected.pred_score.numpy().reshape(-1), rtol=1e-4, atol=1e-5
    )
