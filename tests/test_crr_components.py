"""Synthesis, losses, weights and input validation of CRR: acceptance checks 6, 8 and 9 of the CRR spec."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.pre_processing import PreProcessor
from safetensors.torch import save_file
from torchvision.transforms.v2 import CenterCrop, Compose, Normalize, Resize

from anomalib_crr import CRR
from anomalib_crr.models.crr.components import CrrAnomalySynthesizer, grid_shuffle
from anomalib_crr.models.crr.loss import CrrFocalLoss, CrrReconstructionRepairLoss

from .helpers import TINY_CROP, tiny_crr, tiny_crr_model


# ---------------------------------------------------------------- check 8: synthesis
def test_synthesis_always_corrupts_and_leaves_outside_of_mask_untouched() -> None:
    synthesizer = CrrAnomalySynthesizer(dtd_dir=None)
    images = torch.rand(12, 3, 64, 64)
    synthetic = synthesizer(images)
    assert synthetic.image.shape == images.shape
    assert synthetic.mask.shape == (12, 1, 64, 64)
    assert set(synthetic.mask.unique().tolist()) <= {0.0, 1.0}
    assert all(m.sum() > 0 for m in synthetic.mask)  # probability 1.0: every image gets a defect
    outside = synthetic.mask.expand_as(images) == 0
    assert torch.equal(synthetic.image[outside], images[outside])
    assert torch.all((synthetic.weight >= 0.2) & (synthetic.weight < 0.8))
    assert synthetic.image.min() >= 0
    assert synthetic.image.max() <= 1
    inside = ~outside
    assert not torch.allclose(synthetic.image[inside], images[inside])


def test_synthesis_blend_weight_inside_mask() -> None:
    """With a texture that is all zeros after augmentation, x̃ = (1 - w)·x inside the mask."""
    synthesizer = CrrAnomalySynthesizer(dtd_dir=None)

    class Blackout(torch.nn.Module):
        def forward(self, source: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(source)

    synthesizer.generator.augmenters = Blackout()
    images = torch.rand(4, 3, 32, 32) * 0.5 + 0.5
    synthetic = synthesizer(images)
    for image, corrupted, mask, weight in zip(images, synthetic.image, synthetic.mask, synthetic.weight, strict=True):
        inside = mask.expand_as(image) == 1
        torch.testing.assert_close(corrupted[inside], (1 - weight) * image[inside])


def test_synthesis_reads_texture_folder(tmp_path) -> None:
    from PIL import Image

    (tmp_path / "banded").mkdir()
    Image.new("RGB", (40, 40), (255, 0, 0)).save(tmp_path / "banded" / "t.jpg")
    synthesizer = CrrAnomalySynthesizer(dtd_dir=tmp_path, texture_probability=1.0)
    assert len(synthesizer.texture_paths) == 1
    texture = synthesizer.texture_source(16, 16, torch.device("cpu"))
    assert texture.shape == (3, 16, 16)
    assert texture[0].mean() > 0.9
    assert texture[1].mean() < 0.1


def test_grid_shuffle_is_a_permutation_of_strips() -> None:
    image = torch.arange(64.0).view(1, 8, 8)
    shuffled = grid_shuffle(image, grid=8)
    assert torch.equal(shuffled.flatten().sort().values, image.flatten())
    # whole columns move (then whole rows), so every column's set of values is some original column's
    original_columns = {tuple(image[0, :, j].sort().values.tolist()) for j in range(8)}
    assert {tuple(shuffled[0, :, j].sort().values.tolist()) for j in range(8)} == original_columns
    assert not torch.equal(shuffled, image)


def test_normalizing_pre_processor_is_rejected() -> None:
    pre = PreProcessor(transform=Compose([Resize((64, 64)), CenterCrop(56), Normalize([0.5] * 3, [0.5] * 3)]))
    with pytest.raises(ValueError, match="must not contain Normalize"):
        tiny_crr(pre_processor=pre)


# ---------------------------------------------------------------- check 6: repair loss
def test_stage_one_loss_is_reconstruction_plus_repair_against_detached_clean_features() -> None:
    loss_fn = CrrReconstructionRepairLoss()
    clean_e = [torch.randn(2, 8, 4, 4, requires_grad=True) for _ in range(2)]
    clean_d = [torch.randn(2, 8, 4, 4, requires_grad=True) for _ in range(2)]
    repaired = [torch.randn(2, 8, 4, 4, requires_grad=True) for _ in range(2)]
    loss = loss_fn(clean_e, clean_d, repaired, step=0)

    def global_cosine(e: list[torch.Tensor], d: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(
            [(1 - F.cosine_similarity(a.flatten(1), b.flatten(1))).mean() for a, b in zip(e, d, strict=True)]
        ).mean()

    torch.testing.assert_close(loss, global_cosine(clean_e, clean_d) + global_cosine(clean_e, repaired))
    loss.backward()
    assert all(e.grad is None for e in clean_e)  # the target is detached
    assert all(d.grad is not None for d in repaired)


def test_a_step_on_the_repair_term_lowers_the_repair_distance() -> None:
    model = tiny_crr_model().train()
    loss_fn = CrrReconstructionRepairLoss()
    clean = torch.rand(2, 3, TINY_CROP, TINY_CROP)
    corrupted = CrrAnomalySynthesizer()(clean).image
    params = [*model.bottleneck.parameters(), *model.decoder.parameters()]
    optimizer = torch.optim.Adam(params, lr=1e-3)

    def repair_distance() -> float:
        model.eval()
        with torch.no_grad():
            clean_e, _ = model.extract_features(clean)
            _, repaired = model.extract_features(corrupted)
            value = sum(
                (1 - F.cosine_similarity(e.flatten(1), d.flatten(1))).mean()
                for e, d in zip(clean_e, repaired, strict=True)
            )
        model.train()
        return float(value)

    before = repair_distance()
    clean_e, _ = model.extract_features(clean)
    _, repaired = model.extract_features(corrupted)
    loss = loss_fn.reconstruction(clean_e, repaired, step=0)
    optimizer.zero_grad()
    loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    optimizer.step()
    assert repair_distance() < before


def test_focal_loss_matches_formula() -> None:
    logits = torch.randn(2, 2, 5, 5)
    target = torch.randint(0, 2, (2, 1, 5, 5))
    probs = torch.softmax(logits, dim=1)
    one_hot = F.one_hot(target[:, 0], 2).permute(0, 3, 1, 2).float().clamp(1e-5, 1 - 1e-5)
    p_t = (one_hot * probs).sum(1) + 1e-5
    expected = (-((1 - p_t) ** 2) * p_t.log()).mean()
    torch.testing.assert_close(CrrFocalLoss()(logits, target), expected)


# ---------------------------------------------------------------- check 9: weights and bad input
def test_local_weight_file_is_loaded(tmp_path) -> None:
    state = {k: v.clone() for k, v in timm.create_model("vit_small_patch14_reg4_dinov2").state_dict().items()}
    path = tmp_path / "vit_s_dinov2.safetensors"
    save_file(state, str(path))
    model = tiny_crr_model(encoder_weights=str(path))
    loaded = model.encoder.feature_extractor.state_dict()
    assert torch.equal(loaded["blocks.1.attn.qkv.weight"], state["blocks.1.attn.qkv.weight"])
    assert torch.equal(loaded["patch_embed.proj.weight"], state["patch_embed.proj.weight"])


def test_original_dinov2_key_names_are_converted(tmp_path) -> None:
    state = timm.create_model("vit_small_patch14_reg4_dinov2").state_dict()
    original = {}
    for key, value in state.items():  # timm -> original DINOv2 naming and layout
        original[key.replace("reg_token", "register_tokens")] = value.clone()
    original["pos_embed"] = torch.cat([torch.zeros(1, 1, 384), state["pos_embed"]], dim=1)  # with a cls position
    original["mask_token"] = torch.zeros(1, 384)
    path = tmp_path / "dinov2_vits14_reg4_pretrain.pth"
    torch.save(original, path)
    model = tiny_crr_model(encoder_weights=path)
    vit = model.encoder.feature_extractor
    assert torch.equal(vit.reg_token, state["reg_token"])
    assert torch.equal(vit.blocks[1].mlp.fc1.weight, state["blocks.1.mlp.fc1.weight"])
    torch.testing.assert_close(vit.pos_embed, state["pos_embed"])


def test_missing_weights_file_names_the_file(tmp_path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match=r"nope\.safetensors"):
        tiny_crr(encoder_weights=str(missing))


def test_failed_download_names_the_hub_id_and_how_to_run_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # no network: the hub answers at once
    with pytest.raises(RuntimeError, match=r"timm/vit_small_patch14_reg4_dinov2\.lvd142m.*offline"):
        tiny_crr(encoder_weights="pretrained")


def test_unknown_encoder_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"Unknown encoder_name 'not_a_timm_model'.*or a timm CNN"):
        tiny_crr(encoder_name="not_a_timm_model")
    with pytest.raises(ValueError, match="Unknown encoder_name"):
        tiny_crr(encoder_name="vit_tiny_patch14_dinov2_nonexistent")


def test_crop_size_not_multiple_of_14_is_rejected() -> None:
    with pytest.raises(ValueError, match="not a multiple of the DINOv2 patch size 14"):
        CRR.configure_pre_processor(image_size=(128, 128), crop_size=100)
    with pytest.raises(ValueError, match=r"100x100.*patch size 14"):
        tiny_crr(pre_processor=PreProcessor(transform=Compose([Resize((100, 100))])))
    with pytest.raises(ValueError, match="not a multiple of the encoder patch size 14"):
        tiny_crr_model().eval()(torch.rand(1, 3, 50, 56))


def test_bad_group_and_step_arguments_are_rejected() -> None:
    with pytest.raises(ValueError, match="fuse_layer_decoder"):
        tiny_crr_model(fuse_layer_decoder=[[0], [5]])
    with pytest.raises(ValueError, match="stage1_steps"):
        tiny_crr(stage1_steps=0, stage2_steps=0)
