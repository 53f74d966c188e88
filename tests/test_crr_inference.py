"""CRR inference speed-ups that must not change the output: BatchNorm folding, low-resolution upsampling
convolutions, channels-last, the opt-in bf16 path, ONNX parity, and the head's MAC count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from anomalib_crr.models.crr.components.seg_head import CrrSegHead, seg_head_macs, upsample_conv3x3

from .helpers import TINY_IMAGE, onnx_outputs, tiny_crr, tiny_crr_model


def _randomise_batchnorm(module: nn.Module) -> None:
    """Running statistics and affine parameters far from the identity, so folding has something to fold."""
    for bn in module.modules():
        if isinstance(bn, nn.BatchNorm2d):
            bn.running_mean.normal_(0.0, 0.5)
            bn.running_var.uniform_(0.2, 3.0)
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.normal_(0.0, 0.3)


def _head() -> CrrSegHead:
    head = CrrSegHead(in_channels=64, base_width=16, output_size=40)
    _randomise_batchnorm(head)
    return head


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("low_res_conv", [False, True])
def test_folded_head_equals_the_unfolded_head(channels_last: bool, low_res_conv: bool) -> None:
    head = _head().eval()
    head.channels_last, head.low_res_conv = channels_last, low_res_conv
    seg_input = torch.randn(2, 64, 5, 6)
    with torch.no_grad():
        reference = head.forward_unfolded(seg_input)  # conv → BatchNorm(running stats) → ReLU, module by module
        folded = head(seg_input)
    assert folded.shape == (2, 2, 40, 40)
    torch.testing.assert_close(folded, reference, rtol=0, atol=1e-5)


def test_upsampling_convolution_at_low_resolution_is_exact() -> None:
    x, weight, bias = torch.randn(2, 12, 5, 7), torch.randn(6, 12, 3, 3), torch.randn(6)
    for size in [(10, 14), (16, 9), (5, 7)]:
        expected = F.conv2d(F.interpolate(x, size=size, mode="bilinear", align_corners=True), weight, bias, padding=1)
        torch.testing.assert_close(upsample_conv3x3(x, weight, bias, size), expected, rtol=0, atol=1e-4)


def test_fold_is_redone_after_training_loading_and_mode_switches() -> None:
    head = _head()
    seg_input = torch.randn(1, 64, 4, 4)
    head.eval()
    with torch.no_grad():
        head(seg_input)
    assert head.folded_weight_0 is not None
    unfolded_keys = set(head.state_dict())
    assert not any(key.startswith("folded_") for key in unfolded_keys)  # the checkpoint keeps the unfolded parameters

    head.train()  # training uses conv + BatchNorm; the cache is gone
    assert head.folded_weight_0 is None
    optimizer = torch.optim.SGD(head.parameters(), lr=0.5)
    head(torch.randn(2, 64, 4, 4)).square().mean().backward()  # also updates the running statistics
    optimizer.step()
    head.eval()
    with torch.no_grad():
        torch.testing.assert_close(head(seg_input), head.forward_unfolded(seg_input), rtol=0, atol=1e-5)

    other = _head()
    head.load_state_dict(other.state_dict())  # loaded while in eval: refolded from the new tensors
    with torch.no_grad():
        torch.testing.assert_close(head(seg_input), other.eval().forward_unfolded(seg_input), rtol=0, atol=1e-5)
    with torch.no_grad():  # an in-place change in eval mode (e.g. a stage-II step without train()) is seen too
        head.stages[0].conv[1].running_mean.add_(1.0)
        torch.testing.assert_close(head(seg_input), head.forward_unfolded(seg_input), rtol=0, atol=1e-5)
    assert set(head.state_dict()) == unfolded_keys


def test_fused_map_equals_the_unfolded_path_within_1e_4() -> None:
    model = tiny_crr_model(seg_base_width=16).eval()
    _randomise_batchnorm(model.seg_head)
    model.mark_seg_head_trained()
    images = torch.rand(2, 3, 56, 56)
    with torch.no_grad():
        fast = model(images)
        model.seg_head.forward_folded = model.seg_head.forward_unfolded  # type: ignore[method-assign]
        reference = model(images)
    torch.testing.assert_close(fast.anomaly_map, reference.anomaly_map, rtol=0, atol=1e-4)
    torch.testing.assert_close(fast.pred_score, reference.pred_score, rtol=0, atol=1e-4)


def test_bf16_inference_is_opt_in_close_and_float32_out() -> None:
    model = tiny_crr_model(seg_base_width=16).eval()
    model.mark_seg_head_trained()
    images = torch.rand(2, 3, 56, 56)
    with torch.no_grad():
        full = model(images)
        model.inference_dtype = torch.bfloat16
        half = model(images)
    assert half.anomaly_map.dtype == half.pred_score.dtype == torch.float32
    assert not torch.equal(half.anomaly_map, full.anomaly_map)  # the encoder/decoder/head really ran in bf16
    torch.testing.assert_close(half.anomaly_map, full.anomaly_map, rtol=0, atol=5e-2)
    with pytest.raises(ValueError, match="inference_dtype"):
        tiny_crr_model(inference_dtype="int8")


def test_onnx_export_of_the_folded_head_matches_torch(tmp_path: Path) -> None:
    model = tiny_crr(seg_base_width=16).eval()
    _randomise_batchnorm(model.model.seg_head)
    model.model.mark_seg_head_trained()
    images = torch.rand(2, 3, TINY_IMAGE, TINY_IMAGE)
    with torch.no_grad():
        expected = model(images)
    outputs = onnx_outputs(model.to_onnx(tmp_path, input_size=(TINY_IMAGE, TINY_IMAGE)), images)
    np.testing.assert_allclose(outputs["anomaly_map"], expected.anomaly_map.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        outputs["pred_score"].reshape(-1), expected.pred_score.numpy().reshape(-1), rtol=1e-4, atol=1e-5
    )
    assert not any(key.startswith("model.seg_head.folded_") for key in model.state_dict())


def test_head_macs_at_the_paper_width_and_lighter_widths() -> None:
    macs = {width: seg_head_macs(1536, width, (28, 28)) for width in (192, 96, 64)}
    # 3x3 convs as trained: 9 * sum(C_in * C_out * H * W) over the head of spec §3.5 = 548.39 GMACs.
    assert macs[192]["train"] == 548_394_762_240
    assert macs[192]["eval"] < 0.75 * macs[192]["train"]  # upsampling convs at the low resolution
    assert macs[64]["eval"] < macs[96]["eval"] < macs[192]["eval"]


def test_pickled_eval_head_drops_the_cache_and_refolds() -> None:
    """anomalib's torch export pickles the module: the folded copy is not stored, and is rebuilt on load."""
    import pickle

    head = _head().eval()
    seg_input = torch.randn(1, 64, 4, 4)
    with torch.no_grad():
        expected = head(seg_input)
    restored = pickle.loads(pickle.dumps(head))
    assert restored.folded_weight_0 is None
    assert head.folded_weight_0 is not None  # the original keeps its cache
    with torch.no_grad():
        torch.testing.assert_close(restored(seg_input), expected, rtol=0, atol=0)
