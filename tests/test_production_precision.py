"""Issue 11, item 6: no eps-less division or log of a possibly-zero value under bf16/fp16.

Reviewed: CRR's decoder attention (anomalib's ``LinearAttention``: fixed by ``StableLinearAttention``), CRR's
segmentation input (L2 normalisation: norms now float32), CRR's focal loss (float32, log guarded by
``smooth``), anomalib's ``CosineHardMiningLoss`` (``CosineSimilarity`` eps), MFRNet's hybrid loss (float32 with
autocast off, SSIM constants) and MFRNet's map scale / feature std (clamped). Each is exercised here with
reduced-precision inputs that produce NaN/inf without the guard.
"""

from __future__ import annotations

import pytest
import torch
from anomalib.models.image.dinomaly.components import CosineHardMiningLoss, LinearAttention

from anomalib_crr.models.components.attention import StableLinearAttention
from anomalib_crr.models.crr import CrrModel
from anomalib_crr.models.crr.loss import CrrFocalLoss, CrrReconstructionRepairLoss

from .helpers import TINY_CROP, tiny_crr, tiny_mfrnet


def _pair(q_bias: float, k_bias: float, dim: int = 32, heads: int = 2) -> tuple[LinearAttention, StableLinearAttention]:
    """anomalib's attention and ours with the same weights: constant queries/keys set by the biases."""
    original = LinearAttention(dim, num_heads=heads, qkv_bias=True)
    ours = StableLinearAttention(dim, num_heads=heads, qkv_bias=True)
    with torch.no_grad():
        original.qkv.weight.mul_(0.01)
        original.qkv.bias.zero_()
        original.qkv.bias[:dim] = q_bias
        original.qkv.bias[dim : 2 * dim] = k_bias
        original.qkv.bias[2 * dim :] = 1.0
    ours.load_state_dict(original.state_dict())
    return original.eval(), ours.eval()


def test_stable_attention_is_bit_identical_in_float32() -> None:
    torch.manual_seed(0)
    original, ours = _pair(0.0, 0.0)
    x = torch.randn(2, 50, 32)
    expected, actual = original(x), ours(x)
    assert torch.equal(expected[0], actual[0])
    assert torch.equal(expected[1], actual[1])


def test_bf16_queries_that_round_to_zero_give_nan_in_anomalib_not_here() -> None:
    original, ours = _pair(q_bias=-20.0, k_bias=0.0)  # elu(-20) + 1 == 0 in bf16
    x = torch.randn(2, 50, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not torch.isfinite(original(x)[0]).all()
        out = ours(x)[0]
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()


def test_fp16_normaliser_overflow_is_avoided() -> None:
    original, ours = _pair(q_bias=60.0, k_bias=60.0)  # Σ_k and q·Σ_k exceed fp16's 65504 for 800 tokens
    x = torch.randn(1, 800, 32)
    reference = ours(x)[0]
    with torch.autocast("cpu", dtype=torch.float16):
        broken, fixed = original(x)[0].float(), ours(x)[0].float()
    assert not torch.allclose(broken, reference, rtol=0.05, atol=0.05)
    torch.testing.assert_close(fixed, reference, rtol=0.02, atol=0.02)


def test_segmentation_input_of_zero_features_in_fp16() -> None:
    encoder = torch.randn(1, 8, 4, 4).half()
    decoder = torch.randn(1, 8, 4, 4).half()
    decoder[..., 0, 0] = 0.0  # a decoder vector of zeros
    unguarded = decoder / (decoder.norm(dim=1, keepdim=True) + 1e-12)  # the previous formula: 1e-12 -> 0 in fp16
    assert torch.isnan(unguarded).any()
    products = CrrModel.segmentation_input([encoder], [decoder])
    assert torch.isfinite(products).all()
    assert torch.equal(products[..., 0, 0], torch.zeros_like(products[..., 0, 0]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_losses_stay_finite_with_reduced_precision_inputs(dtype: torch.dtype) -> None:
    logits = torch.tensor([[-80.0, 80.0], [80.0, -80.0]]).view(1, 2, 1, 2).expand(2, 2, 4, 2).contiguous()
    target = torch.zeros(2, 4, 2, dtype=torch.long)  # confidently wrong everywhere: p_t underflows to 0
    assert torch.isfinite(CrrFocalLoss()(logits.to(dtype), target))
    encoder = [torch.randn(2, 8, 4, 4).to(dtype)]
    decoder = [torch.zeros(2, 8, 4, 4, dtype=dtype, requires_grad=True)]  # zero vectors: cosine eps
    if dtype == torch.float16:  # anomalib's loss alone: eps rounds to 0 in fp16
        assert not torch.isfinite(CosineHardMiningLoss()(encoder, decoder, global_step=0))
    assert torch.isfinite(CrrReconstructionRepairLoss()(encoder, decoder, decoder, step=0))
    decoder = [torch.randn(2, 8, 4, 4).to(dtype).requires_grad_()]
    loss = CrrReconstructionRepairLoss()(encoder, decoder, decoder, step=0)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(decoder[0].grad).all()
    mfrnet_loss = tiny_mfrnet().model.loss
    features = torch.randn(2, 8, 8, 8).to(dtype)
    assert torch.isfinite(mfrnet_loss(features, torch.zeros_like(features)))
    assert torch.isfinite(mfrnet_loss(features, features))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_crr_forward_under_autocast_is_finite(dtype: torch.dtype) -> None:
    model = tiny_crr().eval()
    images = torch.rand(2, 3, TINY_CROP, TINY_CROP)
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        encoder_maps, decoder_maps = model.model.extract_features(images)
        logits = model.model.segment(encoder_maps, decoder_maps)
    assert all(torch.isfinite(m).all() for m in decoder_maps)
    assert torch.isfinite(logits).all()
