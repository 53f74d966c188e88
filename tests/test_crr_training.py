"""CRR through anomalib's Engine: both stages in one fit (acceptance check 1), the repair target, checkpoints."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import Callback

from anomalib_crr import CRR

from .helpers import run_offline, tiny_crr


class StageRecorder(Callback):
    """Snapshots the model's state and the stage-II modes after every optimizer step."""

    def __init__(self) -> None:
        self.snapshots: list[dict[str, torch.Tensor]] = []
        self.reconstruction_training: list[bool] = []
        self.validation_runs = 0
        self.loss_inputs: list[dict[str, Any]] = []
        self.batches: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches.append(batch.image.detach().clone())  # after the pre-processor
        self.snapshots.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})
        self.reconstruction_training.append(
            pl_module.model.bottleneck.training or any(m.training for m in pl_module.model.decoder.modules())
        )

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.validation_runs += 1


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], prefix: str) -> list[str]:
    return [k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])]


def _keys(state: dict[str, torch.Tensor], prefix: str) -> list[str]:
    return [k for k in state if k.startswith(prefix)]


@pytest.fixture(scope="module")
def fitted(tiny_dataset: Path, module_tmp_dir: Callable[[str], Path]) -> dict[str, Any]:
    torch.manual_seed(0)
    model = tiny_crr(stage1_steps=2, stage2_steps=2)
    recorder = StageRecorder()
    original_loss = model.loss.forward

    def capture(**kwargs: Any) -> torch.Tensor:
        recorder.loss_inputs.append(
            {k: [t.detach().clone() for t in v] if isinstance(v, list) else v for k, v in kwargs.items()}
        )
        return original_loss(**kwargs)

    model.loss.forward = capture  # type: ignore[method-assign]
    initial = {k: v.detach().clone() for k, v in model.model.state_dict().items()}
    datamodule = MVTecAD(root=tiny_dataset, category="washer", train_batch_size=4, eval_batch_size=4, num_workers=0)
    root = module_tmp_dir("engine")
    engine = Engine(default_root_dir=root, logger=False, accelerator="cpu", devices=1, callbacks=[recorder])
    engine.fit(model=model, datamodule=datamodule)
    model.loss.forward = original_loss  # type: ignore[method-assign]
    metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    return {
        "model": model,
        "initial": initial,
        "recorder": recorder,
        "engine": engine,
        "metrics": metrics,
        "dm": datamodule,
    }


def test_one_fit_runs_both_stages_with_the_right_modules_changing(fitted: dict[str, Any]) -> None:
    model, initial, recorder = fitted["model"], fitted["initial"], fitted["recorder"]
    assert fitted["engine"].trainer.global_step == 4
    assert int(model.train_step_count) == 4
    assert len(recorder.snapshots) == 4
    end_of_stage1, end_of_stage2 = recorder.snapshots[1], recorder.snapshots[3]

    # stage I: only bottleneck and decoder change
    assert _changed(initial, end_of_stage1, "bottleneck.")
    assert _changed(initial, end_of_stage1, "decoder.")
    assert not _changed(initial, end_of_stage1, "seg_head.")
    assert not _changed(initial, end_of_stage1, "encoder.")
    # stage II: only the seg head changes; bottleneck/decoder bit-identical and in eval mode
    assert _changed(end_of_stage1, end_of_stage2, "seg_head.")
    assert not _changed(end_of_stage1, end_of_stage2, "bottleneck.")
    assert not _changed(end_of_stage1, end_of_stage2, "decoder.")
    assert not _changed(initial, end_of_stage2, "encoder.")
    assert recorder.reconstruction_training == [True, True, False, False]
    assert _keys(initial, "encoder.")
    assert all(p.grad is None and not p.requires_grad for p in model.model.encoder.parameters())
    assert bool(model.model.seg_head_trained)
    assert recorder.validation_runs == 1  # validated once, after the last step


def test_repair_target_is_the_clean_images_encoder_features(fitted: dict[str, Any]) -> None:
    model, recorder = fitted["model"], fitted["recorder"]
    assert len(recorder.loss_inputs) == 2  # stage I steps only
    inputs, images = recorder.loss_inputs[0], recorder.batches[0]
    with torch.no_grad():
        tokens = model.model.encode(images)
        grid = (images.shape[-2] // 14, images.shape[-1] // 14)
        clean_encoder = model.model._groups(tokens, model.model.fuse_layer_encoder, grid)
    for captured, expected in zip(inputs["clean_encoder"], clean_encoder, strict=True):
        torch.testing.assert_close(captured, expected, rtol=1e-4, atol=1e-5)
    assert inputs["step"] == 0
    assert recorder.loss_inputs[1]["step"] == 1
    assert inputs["repaired_decoder"][0].shape == inputs["clean_decoder"][0].shape
    assert not torch.allclose(inputs["repaired_decoder"][0], inputs["clean_decoder"][0])


def test_test_metrics_are_reported(fitted: dict[str, Any]) -> None:
    metrics = fitted["metrics"]
    for key in ("image_AUROC", "pixel_AUROC"):
        assert 0.0 <= metrics[key] <= 1.0


def test_load_from_checkpoint_rebuilds_from_hparams_with_identical_scores(
    fitted: dict[str, Any], tmp_path: Path
) -> None:
    model, engine = fitted["model"], fitted["engine"]
    checkpoint = tmp_path / "crr.ckpt"
    engine.trainer.save_checkpoint(checkpoint)
    reloaded = CRR.load_from_checkpoint(checkpoint)
    assert reloaded.hparams["target_layers"] == [0, 1]
    assert reloaded.model.seg_head_trained
    assert reloaded.model.seg_head_active
    assert int(reloaded.train_step_count) == 4
    images = torch.rand(3, 3, 64, 64)
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        expected, actual = model(images), reloaded(images)
    assert torch.equal(expected.pred_score, actual.pred_score)
    assert torch.equal(expected.anomaly_map, actual.anomaly_map)


def test_two_process_ddp_keeps_ranks_in_sync(tiny_dataset: Path, tmp_path: Path) -> None:
    """``strategy="ddp"`` with the default ``find_unused_parameters=False`` trains both stages on 2 CPU ranks."""
    import sys

    repo = Path(__file__).resolve().parents[1]
    command = [sys.executable, "-m", "tests.ddp_fit_script", str(tiny_dataset), str(tmp_path)]
    result = run_offline(command, cwd=repo, timeout=600, OMP_NUM_THREADS="1")
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (torch.load(tmp_path / f"state_rank{r}.pt", weights_only=False) for r in (0, 1))
    assert rank0["steps"] == rank1["steps"] == 4
    assert rank0["seg_changed"]
    assert rank1["seg_changed"]
    assert any(k.startswith("seg_head.") for k in rank0["state"])
    assert any(k.startswith("decoder.") for k in rank0["state"])
    for key, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][key]), key


def test_bf16_mixed_precision_fit_and_test(tiny_dataset: Path, tmp_path: Path) -> None:
    model = tiny_crr(stage1_steps=1, stage2_steps=1)
    datamodule = MVTecAD(root=tiny_dataset, category="washer", train_batch_size=4, eval_batch_size=4, num_workers=0)
    engine = Engine(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1, precision="bf16-mixed")
    engine.fit(model=model, datamodule=datamodule)
    metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    assert int(model.train_step_count) == 2
    assert all(torch.isfinite(p).all() for p in model.model.decoder.parameters())
    assert 0.0 <= metrics["image_AUROC"] <= 1.0
