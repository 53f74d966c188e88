"""DINOv2 encoders resize their position table as Meta's code does (offset 0.1, bicubic, no antialias)."""

from __future__ import annotations

import pickle

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from anomalib_crr.models.crr.components import build_encoder
from anomalib_crr.models.crr.components.pos_embed import (
    OfficialPosEmbedVisionTransformer,
    official_patch_pos_embed,
    official_patch_pos_embed_traceable,
)


def meta_interpolate_pos_encoding(patch_pos_embed: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``DinoVisionTransformer.interpolate_pos_encoding`` written out (patch part, offset 0.1, no antialias)."""
    n = patch_pos_embed.shape[1]
    side = int(n**0.5)
    if height // 14 == side and width // 14 == side:
        return patch_pos_embed
    h0, w0 = height // 14 + 0.1, width // 14 + 0.1
    out = F.interpolate(
        patch_pos_embed.reshape(1, side, side, -1).permute(0, 3, 1, 2),
        scale_factor=(h0 / side, w0 / side),
        mode="bicubic",
        antialias=False,
    )
    assert out.shape[-2:] == (int(h0), int(w0))
    return out.permute(0, 2, 3, 1).reshape(1, -1, patch_pos_embed.shape[-1])


@pytest.fixture(scope="module")
def vit() -> OfficialPosEmbedVisionTransformer:
    torch.manual_seed(0)
    encoder = build_encoder("vit_small_patch14_reg4_dinov2", None, [0, 1])
    with torch.no_grad():  # a table far from smooth, so that any other resize shows
        encoder.feature_extractor.pos_embed.normal_()
    return encoder.feature_extractor


@pytest.mark.parametrize(("height", "width"), [(392, 392), (448, 448), (280, 434), (518, 518)])
def test_resized_table_equals_metas_formula(vit: OfficialPosEmbedVisionTransformer, height: int, width: int) -> None:
    assert isinstance(vit, OfficialPosEmbedVisionTransformer)
    expected = meta_interpolate_pos_encoding(vit.pos_embed.detach(), height, width)
    ours = vit.resized_pos_embed((height // 14, width // 14))
    torch.testing.assert_close(ours, expected, rtol=0, atol=0)
    # ... and it is not timm's resize (exact size, antialiased), which the encoder used before
    if (height, width) != (518, 518):
        timm_resize = (
            F.interpolate(
                vit.pos_embed.detach().reshape(1, 37, 37, -1).permute(0, 3, 1, 2),
                size=(height // 14, width // 14),
                mode="bicubic",
                antialias=True,
            )
            .permute(0, 2, 3, 1)
            .reshape(1, -1, vit.pos_embed.shape[-1])
        )
        assert (ours - timm_resize).abs().max() > 1e-2


@pytest.mark.parametrize("grid", [(28, 28), (32, 32), (20, 31)])
def test_export_path_equals_the_eager_resize_within_float_rounding(
    vit: OfficialPosEmbedVisionTransformer, grid: tuple[int, int]
) -> None:
    table = vit.pos_embed.detach()
    eager = official_patch_pos_embed(table, grid, 0.1)
    traced = official_patch_pos_embed_traceable(table, grid, 0.1)
    torch.testing.assert_close(traced, eager, rtol=0, atol=1e-5 * table.abs().max().item())


def test_encoder_tokens_use_the_table_and_the_cache_follows_new_weights(
    vit: OfficialPosEmbedVisionTransformer,
) -> None:
    images = torch.randn(2, 3, 56, 70)
    patches = vit.patch_embed(images)  # (B, 4, 5, C)
    tokens = vit._pos_embed(patches)
    expected = patches.reshape(2, 20, -1) + meta_interpolate_pos_encoding(vit.pos_embed.detach(), 56, 70)
    torch.testing.assert_close(tokens[:, vit.num_prefix_tokens :], expected, rtol=0, atol=0)
    assert tokens.shape[1] == 20 + vit.num_prefix_tokens
    before = vit.resized_pos_embed((4, 5)).clone()
    with torch.no_grad():
        vit.pos_embed.mul_(2.0)
    torch.testing.assert_close(vit.resized_pos_embed((4, 5)), 2 * before, rtol=1e-6, atol=1e-6)
    with torch.no_grad():
        vit.pos_embed.div_(2.0)


def test_pickle_drops_the_cache(vit: OfficialPosEmbedVisionTransformer) -> None:
    vit.resized_pos_embed((28, 28))
    assert vit.__dict__["_pos_embed_cache"]
    restored = pickle.loads(pickle.dumps(vit))
    assert not restored.__dict__.get("_pos_embed_cache")
    torch.testing.assert_close(restored.resized_pos_embed((28, 28)), vit.resized_pos_embed((28, 28)))


def test_dinov3_keeps_timms_rope_encoder() -> None:
    encoder = build_encoder("vit_small_patch16_dinov3", None, [0, 1])
    assert not isinstance(encoder.feature_extractor, OfficialPosEmbedVisionTransformer)
