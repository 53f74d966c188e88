"""Stage II feeds the seg head the bottleneck input that inference uses (``mask_at_inference``), as documented."""

from __future__ import annotations

import pytest
import torch

from .helpers import TINY_CROP, tiny_crr


def _stage2_bottleneck_input(mask_at_inference: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused tokens and the bottleneck MLP's input on the stage-II feature path."""
    torch.manual_seed(0)
    module = tiny_crr(mask_at_inference=mask_at_inference)
    module.model.bottleneck.train()  # as stage I leaves it
    module.freeze_reconstruction()  # what _stage2_step does before its forward
    captured: dict[str, torch.Tensor] = {}
    module.model.bottleneck.mlp.register_forward_pre_hook(lambda _m, args: captured.__setitem__("input", args[0]))
    images = torch.rand(2, 3, TINY_CROP, TINY_CROP)
    with torch.no_grad():
        fused = torch.stack(module.model.encode(images), dim=1).mean(dim=1)
        torch.manual_seed(seed)
        module.model.extract_features(images)
    return fused, captured["input"]


def test_expectation_mode_trains_the_seg_head_on_the_expected_mask() -> None:
    fused, bottleneck_input = _stage2_bottleneck_input("expectation", seed=1)
    torch.testing.assert_close(bottleneck_input, fused * 0.6, rtol=0, atol=0)


def test_random_mode_draws_the_official_mask_in_stage_two() -> None:
    fused, first = _stage2_bottleneck_input("random", seed=1)
    torch.manual_seed(1)
    keep = (torch.rand(fused.shape) <= 0.6).to(fused.dtype)  # official: where(rand > 1 - 0.4, 0, 1)
    torch.testing.assert_close(first, fused * keep, rtol=0, atol=0)
    assert 0.3 < (first == 0).float().mean().item() < 0.5
    _, other_seed = _stage2_bottleneck_input("random", seed=2)
    assert not torch.equal(first, other_seed)


@pytest.mark.parametrize("value", [0.5, 0.49])
def test_synthetic_mask_is_binarised_like_the_official_code(value: float) -> None:
    """Official: ``where(mask < 0.5, 0, 1)``, so a pixel at exactly 0.5 is anomalous."""
    module = tiny_crr()
    mask = torch.full((1, 1, 8, 8), value)
    target = module.stage2_target(mask, (8, 8))
    assert bool(target.all()) is (value >= 0.5)
