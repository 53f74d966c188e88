"""Loading checkpoints in the official CRR-MUAD layout (github.com/Qiqigeww/CRR-MUAD).

The fixture writes state dicts with the official key names and shapes, as the official code builds them:
``ViTill`` (``encoder``: Meta's DINOv2-R ViT with all blocks, ``register_tokens``, a class-token position
embedding and ``mask_token``; ``bottleneck``: ``ModuleList([bMlp6])``; ``decoder``: ``ModuleList`` of ``Block``)
and ``DecoderReconstructive(base_width=192, out_channels=2)`` (``up<k>`` = Upsample, conv, BN, ReLU;
``db<k>`` = conv, BN, ReLU, conv, BN, ReLU; ``fin_out`` = Sequential(conv)). ViT-S with four single-layer
groups gives the head its official 1536 input channels at a fraction of ViT-B's cost.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from anomalib_crr import CRR
from anomalib_crr.models.crr.official_checkpoint import OfficialCheckpoint

from .helpers import TINY_CROP, TINY_IMAGE, tiny_crr_model

DIM, HEADS, DEPTH, ENCODER_BLOCKS, WIDTH = 384, 6, 4, 12, 192
OFFICIAL_LIKE: dict[str, Any] = {
    "target_layers": [0, 1, 2, 3],
    "decoder_depth": DEPTH,
    "fuse_layer_encoder": [[0], [1], [2], [3]],
    "fuse_layer_decoder": [[0], [1], [2], [3]],
    "seg_base_width": WIDTH,
    "seg_output_size": 32,
}


def _official_model_shapes() -> dict[str, tuple[int, ...]]:
    """Key → shape of ``ViTill(encoder=vit_small DINOv2-R (img 518, 4 registers), [bMlp6], 4 x Block)``."""
    shapes: dict[str, tuple[int, ...]] = {
        "encoder.cls_token": (1, 1, DIM),
        "encoder.pos_embed": (1, 37 * 37 + 1, DIM),
        "encoder.register_tokens": (1, 4, DIM),
        "encoder.mask_token": (1, DIM),
        "encoder.patch_embed.proj.weight": (DIM, 3, 14, 14),
        "encoder.patch_embed.proj.bias": (DIM,),
        "encoder.norm.weight": (DIM,),
        "encoder.norm.bias": (DIM,),
        "bottleneck.0.fc1.weight": (4 * DIM, DIM),
        "bottleneck.0.fc1.bias": (4 * DIM,),
        "bottleneck.0.fc2.weight": (DIM, 4 * DIM),
        "bottleneck.0.fc2.bias": (DIM,),
    }
    block = {
        "norm1.weight": (DIM,),
        "norm1.bias": (DIM,),
        "attn.qkv.weight": (3 * DIM, DIM),
        "attn.qkv.bias": (3 * DIM,),
        "attn.proj.weight": (DIM, DIM),
        "attn.proj.bias": (DIM,),
        "norm2.weight": (DIM,),
        "norm2.bias": (DIM,),
        "mlp.fc1.weight": (4 * DIM, DIM),
        "mlp.fc1.bias": (4 * DIM,),
        "mlp.fc2.weight": (DIM, 4 * DIM),
        "mlp.fc2.bias": (DIM,),
    }
    for index in range(ENCODER_BLOCKS):
        shapes.update({f"encoder.blocks.{index}.{k}": v for k, v in block.items()})
        shapes.update({f"encoder.blocks.{index}.ls1.gamma": (DIM,), f"encoder.blocks.{index}.ls2.gamma": (DIM,)})
    for index in range(DEPTH):
        shapes.update({f"decoder.{index}.{k}": v for k, v in block.items()})
    return shapes


def _official_seg_shapes() -> dict[str, tuple[int, ...]]:
    """Key → shape of ``DecoderReconstructive(base_width=192, out_channels=2)``."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, c_in: int, c_out: int) -> None:
        shapes.update({f"{name}.weight": (c_out, c_in, 3, 3), f"{name}.bias": (c_out,)})

    def bn(name: str, channels: int) -> None:
        for key in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.{key}"] = (channels,)
        shapes[f"{name}.num_batches_tracked"] = ()

    for stage, (c, c_out) in enumerate(
        [(8 * WIDTH, 4 * WIDTH), (4 * WIDTH, 2 * WIDTH), (2 * WIDTH, WIDTH), (WIDTH, 48)]
    ):
        k = stage + 1
        conv(f"up{k}.1", c, c)
        bn(f"up{k}.2", c)
        conv(f"db{k}.0", c, c)
        bn(f"db{k}.1", c)
        conv(f"db{k}.3", c, c_out)
        bn(f"db{k}.4", c_out)
    conv("fin_out.0", 48, 2)
    return shapes


def _random_state(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(8000)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.05
    return state


@pytest.fixture(scope="module")
def official_files(module_tmp_dir: Callable[[str], Path]) -> dict[str, Any]:
    root = module_tmp_dir("official")
    model_state, seg_state = _random_state(_official_model_shapes(), 0), _random_state(_official_seg_shapes(), 1)
    torch.save(model_state, root / "dinov2_vitb14_reg4_pretrain.pth")
    torch.save(seg_state, root / "Seg_model_7999.pth")
    return {
        "model": root / "dinov2_vitb14_reg4_pretrain.pth",
        "seg": root / "Seg_model_7999.pth",
        "model_state": model_state,
        "seg_state": seg_state,
        "root": root,
    }


@pytest.fixture(scope="module")
def loaded(official_files: dict[str, Any]) -> CRR:
    return CRR.from_official_checkpoint(
        official_files["model"],
        official_files["seg"],
        **{**_tiny_kwargs(), **OFFICIAL_LIKE},
    )


def _tiny_kwargs() -> dict[str, Any]:
    from .helpers import TINY_CRR

    kwargs = {k: v for k, v in TINY_CRR.items() if k != "encoder_weights"}  # default "pretrained": never fetched
    kwargs["pre_processor"] = CRR.configure_pre_processor(image_size=(TINY_IMAGE, TINY_IMAGE), crop_size=TINY_CROP)
    return kwargs


def test_values_land_where_the_official_code_reads_them(official_files: dict[str, Any], loaded: CRR) -> None:
    model, official, seg = loaded.model, official_files["model_state"], official_files["seg_state"]
    vit = model.encoder.feature_extractor
    assert torch.equal(model.bottleneck.mlp.fc1.weight, official["bottleneck.0.fc1.weight"])
    assert torch.equal(model.decoder[3].attn.qkv.bias, official["decoder.3.attn.qkv.bias"])
    assert torch.equal(vit.reg_token, official["encoder.register_tokens"])
    assert torch.equal(vit.blocks[2].ls1.gamma, official["encoder.blocks.2.ls1.gamma"])
    assert torch.equal(vit.pos_embed, official["encoder.pos_embed"][:, 1:])  # no class position in timm's DINOv2-R
    assert len(vit.blocks) == 4  # blocks 4..11 of the file are pruned
    head = model.seg_head
    assert torch.equal(head.stages[0].conv[0].weight, seg["up1.1.weight"])
    assert torch.equal(head.stages[4].conv[1].running_var, seg["up3.2.running_var"])
    assert torch.equal(head.stages[3][3].weight, seg["db2.3.weight"])
    assert torch.equal(head.stages[7][4].bias, seg["db4.4.bias"])
    assert torch.equal(head.fin_out.weight, seg["fin_out.0.weight"])
    assert model.seg_head_active  # stage II done: the map fuses the seg head
    assert loaded.unfinished_fit_message() is None


def _to_official(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Our trained network → the official files, by walking the official structure (independent of the loader)."""
    ours = model.state_dict()
    vit = {k.removeprefix("encoder.feature_extractor."): v for k, v in ours.items() if k.startswith("encoder.")}
    official = _random_state(_official_model_shapes(), 2)  # blocks and norm CRR prunes: anything
    for key, value in vit.items():
        name = "register_tokens" if key == "reg_token" else key
        official[f"encoder.{name}"] = value
    official["encoder.pos_embed"] = torch.cat([torch.zeros(1, 1, DIM), vit["pos_embed"]], dim=1)
    for which in ("fc1", "fc2"):
        for param in ("weight", "bias"):
            official[f"bottleneck.0.{which}.{param}"] = ours[f"bottleneck.mlp.{which}.{param}"]
    official.update({k: v for k, v in ours.items() if k.startswith("decoder.")})
    seg: dict[str, torch.Tensor] = {}
    head = model.seg_head
    for k in range(1, 5):
        up, db = head.stages[2 * (k - 1)], head.stages[2 * (k - 1) + 1]
        for official_name, module in [(f"up{k}.1", up.conv[0]), (f"up{k}.2", up.conv[1])] + [
            (f"db{k}.{i}", db[i]) for i in (0, 1, 3, 4)
        ]:
            seg.update({f"{official_name}.{n}": t for n, t in module.state_dict().items()})
    seg.update({f"fin_out.0.{n}": t for n, t in head.fin_out.state_dict().items()})
    return official, seg


def test_round_trip_through_the_official_layout_gives_identical_outputs(tmp_path: Path) -> None:
    source = tiny_crr_model(**OFFICIAL_LIKE)
    for module in source.seg_head.modules():  # a "trained" head: statistics away from the init
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_(0.0, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    source.mark_seg_head_trained()
    official, seg = _to_official(source)
    assert set(official) == set(_official_model_shapes())
    assert set(seg) == set(_official_seg_shapes())
    torch.save(official, tmp_path / "model.pth")
    torch.save(seg, tmp_path / "seg.pth")
    restored = CRR.from_official_checkpoint(
        tmp_path / "model.pth", tmp_path / "seg.pth", **{**_tiny_kwargs(), **OFFICIAL_LIKE}
    )
    images = torch.rand(2, 3, 56, 56)
    source.eval()
    restored.model.eval()
    with torch.no_grad():
        expected, actual = source(images), restored.model(images)
    assert torch.equal(actual.anomaly_map, expected.anomaly_map)
    assert torch.equal(actual.pred_score, expected.pred_score)


def test_a_file_that_does_not_match_is_refused_by_name(
    official_files: dict[str, Any], loaded: CRR, tmp_path: Path
) -> None:
    seg = dict(official_files["seg_state"])
    seg["db2.3.weight"] = torch.zeros(100, 384, 3, 3)
    torch.save(seg, tmp_path / "bad_seg.pth")
    with pytest.raises(ValueError, match=r"bad_seg\.pth.*'db2\.3\.weight' has shape \(100, 384, 3, 3\)"):
        OfficialCheckpoint(official_files["model"], tmp_path / "bad_seg.pth").load_into(loaded.model)

    model_state = dict(official_files["model_state"])
    model_state["bottleneck.0.fc3.weight"] = model_state.pop("bottleneck.0.fc2.weight")
    model_state["encoder.blocks.0.attn.qkv.weight"] = torch.zeros(3 * DIM, DIM + 1)
    torch.save(model_state, tmp_path / "renamed.pth")
    pattern = (
        r"renamed\.pth.*unexpected key 'bottleneck\.0\.fc3\.weight'.*'encoder\.blocks\.0\.attn\.qkv\.weight'.*missing"
    )
    with pytest.raises(ValueError, match=pattern):
        OfficialCheckpoint(tmp_path / "renamed.pth").load_into(loaded.model)

    torch.save({"state_dict": {"x": torch.zeros(1)}, "epoch": 3}, tmp_path / "lightning.ckpt")
    with pytest.raises(ValueError, match=r"lightning\.ckpt"):
        CRR.from_official_checkpoint(tmp_path / "lightning.ckpt", **_tiny_kwargs())
    with pytest.raises(FileNotFoundError, match=r"nope\.pth"):
        CRR.from_official_checkpoint(tmp_path / "nope.pth", **_tiny_kwargs())
    with pytest.raises(ValueError, match=r"official_seg_checkpoint.*needs official_checkpoint"):
        CRR(official_seg_checkpoint=official_files["seg"], **_tiny_kwargs())


def test_init_arguments_are_the_cli_route_and_checkpoints_do_not_reread_the_files(
    official_files: dict[str, Any], loaded: CRR, tmp_path: Path
) -> None:
    """``--model.official_checkpoint``/``--model.official_seg_checkpoint`` are init arguments, so every
    ``anomalib`` subcommand (validate, test, predict, export) builds the released model; a Lightning checkpoint
    of it restores without the official files."""
    assert loaded.hparams["official_checkpoint"] == official_files["model"]
    # "pretrained" would download (tests run with HF_HUB_OFFLINE=1): the encoder came from the file instead
    assert loaded.hparams["encoder_weights"] == "pretrained"
    import lightning.pytorch as pl

    trainer = pl.Trainer(logger=False, enable_checkpointing=False, accelerator="cpu", devices=1)
    trainer.strategy.connect(loaded)
    ckpt = tmp_path / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    moved = official_files["root"] / "moved"
    moved.mkdir()
    for name in ("model", "seg"):
        official_files[name].rename(moved / official_files[name].name)
    try:
        restored = CRR.load_from_checkpoint(ckpt)
    finally:
        for name in ("model", "seg"):
            (moved / official_files[name].name).rename(official_files[name])
    images = torch.rand(1, 3, TINY_CROP, TINY_CROP)
    with torch.no_grad():
        torch.testing.assert_close(restored.model.eval()(images).anomaly_map, loaded.model.eval()(images).anomaly_map)
