"""A fit that ends before its configured steps still validates once and leaves a usable checkpoint.

Mirrors anomalib's own model integration test (``tests/integration/model/test_models.py``): fit with
``Engine(max_epochs=1)``, then test, validate, predict, train and export from
``<root>/<Model>/MVTecAD/<category>/v0/weights/lightning/model.ckpt``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.deploy import ExportType
from anomalib.engine import Engine
from lightning.pytorch import Callback

from .helpers import tiny_crr, tiny_mfrnet

CATEGORY = "washer"


def _datamodule(root: Path) -> MVTecAD:
    # 8 training images in batches of 2: one epoch is 4 optimizer steps.
    return MVTecAD(root=root, category=CATEGORY, train_batch_size=2, eval_batch_size=4, num_workers=0)


def _engine(root: Path, **kwargs: Any) -> Engine:
    return Engine(default_root_dir=root, logger=False, accelerator="cpu", devices=1, **kwargs)


def _checkpoint(root: Path, model_name: str) -> Path:
    return root / model_name / "MVTecAD" / CATEGORY / "v0" / "weights" / "lightning" / "model.ckpt"


def _saved_image_threshold(checkpoint: Path) -> float:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    return float(state["post_processor._image_threshold"])


class CountValidations(Callback):
    def __init__(self) -> None:
        self.runs = 0

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.runs += 1


class InterruptAtStep(Callback):
    """Raise ``KeyboardInterrupt`` (what Ctrl-C does) after the given optimizer step."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise KeyboardInterrupt


MODELS = {
    # 5 + 5 configured steps, but max_epochs=1 ends the fit after 4, in stage I.
    "CRR": lambda: tiny_crr(stage1_steps=5, stage2_steps=5),
    "MFRNet": tiny_mfrnet,
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def fitted_one_epoch(request: pytest.FixtureRequest, tiny_dataset: Path, module_tmp_dir: Callable[[str], Path]):
    """Fit each model with ``Engine(max_epochs=1)``, as anomalib's integration test does."""
    name = request.param
    root = module_tmp_dir(f"fit_end_{name}")
    torch.manual_seed(0)
    model = MODELS[name]()
    counter = CountValidations()
    engine = _engine(root, max_epochs=1, callbacks=[counter])
    engine.fit(model=model, datamodule=_datamodule(tiny_dataset))
    return {"name": name, "root": root, "model": model, "validations": counter.runs}


def test_cut_short_fit_validates_once_and_saves_a_thresholded_checkpoint(fitted_one_epoch: dict[str, Any]) -> None:
    checkpoint = _checkpoint(fitted_one_epoch["root"], fitted_one_epoch["name"])
    assert checkpoint.is_file()
    assert fitted_one_epoch["validations"] == 1
    assert math.isfinite(_saved_image_threshold(checkpoint))
    assert math.isfinite(float(fitted_one_epoch["model"].post_processor.image_threshold))


def test_crr_cut_short_fit_warns_with_steps_and_stage(
    tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = tiny_crr(stage1_steps=5, stage2_steps=5)
    with caplog.at_level("WARNING"):
        _engine(tmp_path, max_epochs=1).fit(model=model, datamodule=_datamodule(tiny_dataset))
    assert int(model.train_step_count) == 4
    assert "training stopped after 4 of 10 configured optimizer steps" in caplog.text
    assert "stage II (segmentation head) never ran" in caplog.text
    assert "validating once now" in caplog.text
    assert not model.model.seg_head_active  # the map is the reconstruction map, as the warning says


def test_crr_cut_short_in_stage_two_says_the_head_is_partly_trained(
    tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = tiny_crr(stage1_steps=2, stage2_steps=5)
    with caplog.at_level("WARNING"):
        _engine(tmp_path, max_epochs=1).fit(model=model, datamodule=_datamodule(tiny_dataset))
    assert "stage II (segmentation head) reached step 2 of 5" in caplog.text
    assert model.model.seg_head_active
    assert _checkpoint(tmp_path, "CRR").is_file()


def test_a_fit_that_reaches_its_steps_validates_only_on_schedule(
    tiny_dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    counter = CountValidations()
    with caplog.at_level("WARNING"):
        _engine(tmp_path, callbacks=[counter]).fit(
            model=tiny_crr(stage1_steps=2, stage2_steps=1), datamodule=_datamodule(tiny_dataset)
        )
    assert counter.runs == 1
    assert "validating once now" not in caplog.text
    assert "training stopped" not in caplog.text
    assert _checkpoint(tmp_path, "CRR").is_file()


@pytest.mark.parametrize("step", ["test", "validate", "predict", "train"])
def test_engine_entry_points_run_from_the_cut_short_checkpoint(
    fitted_one_epoch: dict[str, Any], tiny_dataset: Path, step: str
) -> None:
    name, root = fitted_one_epoch["name"], fitted_one_epoch["root"]
    model = MODELS[name]()
    engine = _engine(root, max_epochs=1)
    results = getattr(engine, step)(
        model=model, datamodule=_datamodule(tiny_dataset), ckpt_path=_checkpoint(root, name)
    )
    if step == "test":
        assert 0.0 <= results[0]["image_AUROC"] <= 1.0
    if step == "predict":
        assert len(results) > 0
        assert torch.isfinite(results[0].pred_score).all()


@pytest.mark.parametrize("export_type", list(ExportType))
def test_export_runs_from_the_cut_short_checkpoint(
    fitted_one_epoch: dict[str, Any], tmp_path: Path, export_type: ExportType
) -> None:
    name, root = fitted_one_epoch["name"], fitted_one_epoch["root"]
    engine = _engine(tmp_path)
    exported = engine.export(
        model=MODELS[name](),
        export_type=export_type,
        export_root=tmp_path,
        ckpt_path=_checkpoint(root, name),
        input_size=(64, 64),
    )
    assert exported is not None
    assert Path(exported).is_file()


def test_crr_interrupted_mid_stage_one_leaves_a_checkpoint_engine_test_accepts(
    tiny_dataset: Path, tmp_path: Path
) -> None:
    model = tiny_crr(stage1_steps=5, stage2_steps=5)
    engine = _engine(tmp_path, callbacks=[InterruptAtStep(2)])
    with pytest.raises(SystemExit):  # Lightning ends an interrupted fit with exit code 1
        engine.fit(model=model, datamodule=_datamodule(tiny_dataset))
    checkpoint = _checkpoint(tmp_path, "CRR")
    assert checkpoint.is_file()
    assert math.isfinite(_saved_image_threshold(checkpoint))
    results = _engine(tmp_path).test(
        model=tiny_crr(stage1_steps=5, stage2_steps=5), datamodule=_datamodule(tiny_dataset), ckpt_path=checkpoint
    )
    assert 0.0 <= results[0]["image_AUROC"] <= 1.0


def test_mfrnet_max_steps_shorter_than_an_epoch_still_validates(tiny_dataset: Path, tmp_path: Path) -> None:
    counter = CountValidations()
    _engine(tmp_path, max_steps=3, callbacks=[counter]).fit(model=tiny_mfrnet(), datamodule=_datamodule(tiny_dataset))
    checkpoint = _checkpoint(tmp_path, "MFRNet")
    assert counter.runs == 1
    assert checkpoint.is_file()
    assert math.isfinite(_saved_image_threshold(checkpoint))


def test_mfrnet_interrupted_mid_epoch_leaves_a_checkpoint(tiny_dataset: Path, tmp_path: Path) -> None:
    engine = _engine(tmp_path, max_epochs=3, callbacks=[InterruptAtStep(2)])
    with pytest.raises(SystemExit):
        engine.fit(model=tiny_mfrnet(), datamodule=_datamodule(tiny_dataset))
    checkpoint = _checkpoint(tmp_path, "MFRNet")
    assert checkpoint.is_file()
    assert math.isfinite(_saved_image_threshold(checkpoint))
