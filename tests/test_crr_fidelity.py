"""CRR training as the official recipe: foreground mask folder, stage-II batch, train mode, clipping under 16-mixed."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.plugins.precision import MixedPrecision

from .helpers import TINY_CROP, TINY_IMAGE, tiny_crr

STAGE2_BATCH = 3
CROP_OFFSET = (TINY_IMAGE - TINY_CROP) // 2


class Recorder(Callback):
    """Spies on the synthesiser, the seg loss and the train/eval mode of bottleneck and decoder."""

    def __init__(self) -> None:
        self.synthesis: list[dict[str, Any]] = []
        self.seg_loss: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.modes: list[bool] = []
        self.batches: list[torch.Tensor] = []

    def on_train_start(self, trainer, pl_module) -> None:
        synthesize, seg_loss = pl_module.synthesizer.forward, pl_module.seg_loss.forward

        def spy_synthesis(images, foreground=None):
            result = synthesize(images, foreground)
            self.synthesis.append({"images": images.clone(), "foreground": foreground, "mask": result.mask.clone()})
            return result

        def spy_seg_loss(logits, target):
            self.seg_loss.append((logits.detach().clone(), target.clone()))
            return seg_loss(logits, target)

        def record_mode(module, args) -> None:
            model = pl_module.model
            self.modes.append(all(m.training for m in [*model.bottleneck.modules(), *model.decoder.modules()]))

        pl_module.synthesizer.forward = spy_synthesis
        pl_module.seg_loss.forward = spy_seg_loss
        pl_module.model.bottleneck.register_forward_pre_hook(record_mode)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches.append(batch.image.detach().clone())


@pytest.fixture(scope="module")
def fit(tiny_dataset: Path, module_tmp_dir: Callable[[str], Path]) -> dict[str, Any]:
    """A fit from a module left in eval mode, with a mask folder (left half of every image) and stage-II batch 3."""
    from PIL import Image

    masks = module_tmp_dir("masks")
    for image in (tiny_dataset / "washer" / "train" / "good").glob("*.png"):
        target = masks / "washer" / "train" / "good" / image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        mask = torch.zeros(TINY_IMAGE, TINY_IMAGE, dtype=torch.uint8)
        mask[:, : TINY_IMAGE // 2] = 255
        Image.fromarray(mask.numpy()).save(target)
    torch.manual_seed(0)
    model = tiny_crr(stage1_steps=2, stage2_steps=1, foreground=masks, stage2_batch_size=STAGE2_BATCH)
    model.eval()  # e.g. after a validation or a test run in the same session
    recorder = Recorder()
    datamodule = MVTecAD(root=tiny_dataset, category="washer", train_batch_size=4, eval_batch_size=4, num_workers=0)
    engine = Engine(
        default_root_dir=module_tmp_dir("fit"),
        logger=False,
        accelerator="cpu",
        devices=1,
        callbacks=[recorder],
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        engine.fit(model=model, datamodule=datamodule)
    return {"model": model, "recorder": recorder, "warnings": [str(w.message) for w in caught]}


def test_mask_folder_keeps_every_anomaly_inside_the_given_mask(fit: dict[str, Any]) -> None:
    recorder = fit["recorder"]
    assert len(recorder.synthesis) == 3
    boundary = TINY_IMAGE // 2 - CROP_OFFSET  # the mask's left half, after the centre crop
    for call in recorder.synthesis:
        foreground, mask = call["foreground"], call["mask"]
        assert foreground is not None
        assert foreground[..., :boundary].all()
        assert not foreground[..., boundary:].any()
        assert all(m.sum() > 0 for m in mask)
        assert float((mask * (1 - foreground)).sum()) == 0.0


def test_stage_two_trains_on_exactly_stage2_batch_size_images(fit: dict[str, Any]) -> None:
    recorder = fit["recorder"]
    stage2_synthesis = recorder.synthesis[2]
    assert stage2_synthesis["images"].shape[0] == STAGE2_BATCH
    torch.testing.assert_close(stage2_synthesis["images"], recorder.batches[2][:STAGE2_BATCH])
    assert recorder.synthesis[0]["images"].shape[0] == 4  # stage I uses the whole batch
    assert len(recorder.seg_loss) == 1
    logits, target = recorder.seg_loss[0]
    assert logits.shape[0] == STAGE2_BATCH
    expected = F.interpolate(stage2_synthesis["mask"], size=logits.shape[-2:], mode="bilinear") >= 0.5
    assert torch.equal(target, expected)


def test_fit_started_in_eval_mode_still_masks_and_drops_out_in_stage_one(fit: dict[str, Any]) -> None:
    modes = fit["recorder"].modes
    assert modes[:2] == [True, True]  # stage I: bottleneck (mask, dropout) and decoder in train mode
    assert modes[2] is False  # stage II: frozen, eval
    assert not fit["model"].model.encoder.training


def test_frozen_encoder_raises_no_eval_mode_warning(fit: dict[str, Any]) -> None:
    assert not [message for message in fit["warnings"] if "in eval mode at the start of training" in message]


def test_stage2_batch_size_none_takes_the_whole_batch_and_bad_values_are_rejected() -> None:
    import inspect

    from anomalib_crr import CRR

    assert inspect.signature(CRR).parameters["stage2_batch_size"].default == 8  # as the official stage II
    images = torch.rand(5, 3, TINY_CROP, TINY_CROP)
    model = tiny_crr(stage2_batch_size=None)
    assert model.stage2_images(images).shape[0] == 5
    model.stage2_batch_size = 8
    assert model.stage2_images(images).shape[0] == 5  # a batch smaller than stage2_batch_size: all of it
    for bad in (0, -2, True):
        with pytest.raises(ValueError, match="stage2_batch_size"):
            tiny_crr(stage2_batch_size=bad)


def test_16_mixed_clips_the_unscaled_gradient() -> None:
    """With a GradScaler at scale 4096, the optimizer must see the true gradient clipped to ``grad_clip`` (0.1).

    Clipping before ``optimizer.step()`` clips the *scaled* gradient, which the scaler then divides by 4096:
    the update would shrink to ~0.1/4096.
    """
    torch.manual_seed(0)
    model = tiny_crr(stage1_steps=5)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        max_steps=5,
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
    )
    model.trainer = trainer
    trainer.strategy.connect(model)
    trainer.strategy.setup_optimizers(trainer)
    model.on_fit_start()
    optimizer = model.optimizers()[0].optimizer
    params = [p for group in optimizer.param_groups for p in group["params"]]
    norms: list[float] = []

    def record_norm(*_: Any) -> None:
        norms.append(
            float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))
        )

    optimizer.register_step_pre_hook(record_norm)
    images = torch.rand(4, 3, TINY_CROP, TINY_CROP)
    for step in range(2):
        model._stage1_step(images, step)
    assert scaler.get_scale() == 2.0**12  # no overflow: both steps were taken
    assert len(norms) == 2
    for norm in norms:  # the tiny model's true gradient norm is above 0.1, so it is clipped to exactly 0.1
        assert norm == pytest.approx(model.grad_clip, rel=1e-3)
