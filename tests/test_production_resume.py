"""Issue 11, item 1: a fit killed with SIGKILL resumes from its periodic checkpoint and ends as if never killed.

One subprocess (``tests/production_kill_script.py``) runs three fits that SIGKILL themselves: CRR in stage I,
CRR in stage II, MFRNet mid-training. Each is resumed here with ``Engine.fit(ckpt_path=<last.ckpt>)`` and
compared with an uninterrupted fit of the same seed: the per-step record (global step, CRR's own step
counter, which drives the stage and the hard-mining schedule, learning rates, data order) and every weight
and buffer of the final model must be equal, and so must the test predictions.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_crr.models.components import PeriodicCheckpoint, RandomStateCheckpoint

from .helpers import run_offline, tiny_crr
from .production_kill_script import CHECKPOINT_EVERY, SCENARIOS, RecordSteps, build

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = {"crr_stage1": "CRR", "crr_stage2": "CRR", "mfrnet": "MFRNet"}


def _run_dir(out: Path, scenario: str, version: str) -> Path:
    return out / MODEL_DIR[scenario] / "MVTecAD" / "washer" / version


@pytest.fixture(scope="module")
def killed(tiny_dataset: Path, module_tmp_dir: Callable[[str], Path]) -> Path:
    """All three killed fits, in one subprocess (one anomalib import)."""
    out = module_tmp_dir("killed")
    command = [sys.executable, "-m", "tests.production_kill_script", str(tiny_dataset), str(out), *SCENARIOS]
    result = run_offline(command, cwd=REPO, timeout=1800, OMP_NUM_THREADS=str(torch.get_num_threads()))
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for scenario in SCENARIOS:
        assert summary[scenario]["signal"] == signal.SIGKILL, (scenario, summary, result.stderr[-3000:])
    return out


def _predictions(model: Any, datamodule: MVTecAD) -> dict[str, torch.Tensor]:
    datamodule.setup()
    batch = next(iter(datamodule.test_dataloader()))
    model.eval()
    with torch.no_grad():
        out = model(batch.image)
    return {"pred_score": out.pred_score, "anomaly_map": out.anomaly_map}


def _fit(scenario: str, root: Path, out: Path, ckpt_path: Path | None = None) -> dict[str, Any]:
    recorder = RecordSteps()
    model, datamodule, engine = build(scenario, str(root), out, [recorder])
    stats_calls = []
    if hasattr(model, "compute_feature_statistics"):
        original = model.compute_feature_statistics
        model.compute_feature_statistics = lambda loader: (stats_calls.append(1), original(loader))[1]
    engine.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path)
    return {
        "model": model,
        "engine": engine,
        "rows": recorder.rows,
        "stats_calls": len(stats_calls),
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "predictions": _predictions(model, datamodule),
    }


@pytest.fixture(scope="module")
def reference(tiny_dataset: Path, module_tmp_dir: Callable[[str], Path]) -> dict[str, dict[str, Any]]:
    """Uninterrupted fits (CRR once for both CRR scenarios)."""
    crr = _fit("crr_stage1", tiny_dataset, module_tmp_dir("reference_crr"))
    mfrnet = _fit("mfrnet", tiny_dataset, module_tmp_dir("reference_mfrnet"))
    return {"crr_stage1": crr, "crr_stage2": crr, "mfrnet": mfrnet}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_killed_fit_resumes_to_the_uninterrupted_result(
    scenario: str, killed: Path, reference: dict[str, dict[str, Any]], tiny_dataset: Path
) -> None:
    kill_step = SCENARIOS[scenario][2]
    out = killed / scenario
    checkpoint = _run_dir(out, scenario, "v0") / "weights" / "lightning" / "last.ckpt"
    resume_step = (kill_step // CHECKPOINT_EVERY) * CHECKPOINT_EVERY
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    assert saved["global_step"] == resume_step
    assert not list(checkpoint.parent.glob("*.partial"))

    killed_rows = json.loads((out / "steps.json").read_text())
    assert killed_rows[-1]["global_step"] == kill_step - 1  # the killed fit did run past its checkpoint

    resumed = _fit(scenario, tiny_dataset, out, ckpt_path=checkpoint)
    expected = reference[scenario]

    # Same schedule: steps, CRR's step counter (stage and hard-mining position), learning rates, data order.
    assert resumed["rows"] == expected["rows"][resume_step:]
    assert resumed["engine"].trainer.global_step == expected["engine"].trainer.global_step
    if scenario.startswith("crr"):
        model = resumed["model"]
        assert int(model.train_step_count) == model.total_steps == 16
        assert [row["model_step"] for row in resumed["rows"]] == list(range(resume_step, 16))
        assert model.model.seg_head_active
    else:
        assert resumed["stats_calls"] == 0  # MFRNet's feature statistics come from the checkpoint
        assert expected["stats_calls"] == 1
        names = ("aggregator.feature_mean", "aggregator.feature_std", "aggregator.stats_ready")
        stats = {k: v for k, v in saved["state_dict"].items() if k.endswith(names)}
        assert stats
        for key, value in stats.items():
            assert torch.equal(resumed["state"][key], value), key

    # Every weight and buffer, and the predictions, are bit-identical to the uninterrupted fit.
    assert resumed["state"].keys() == expected["state"].keys()
    different = [k for k, v in expected["state"].items() if not torch.equal(v, resumed["state"][k])]
    assert not different
    for name, value in expected["predictions"].items():
        assert torch.equal(value, resumed["predictions"][name]), name

    # The resumed fit wrote a new version folder; the killed run's files are untouched.
    assert _run_dir(out, scenario, "v1").is_dir()
    assert torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"] == resume_step


def test_default_resume_callbacks_keep_anomalibs_checkpoint(tiny_dataset: Path, tmp_path: Path) -> None:
    """The models add a periodic checkpoint (500 steps) without replacing the Engine's ``model.ckpt`` callback."""
    from anomalib.callbacks.checkpoint import ModelCheckpoint as AnomalibCheckpoint

    model = tiny_crr(stage1_steps=1, stage2_steps=1)
    datamodule = MVTecAD(root=tiny_dataset, category="washer", train_batch_size=4, eval_batch_size=4, num_workers=0)
    engine = Engine(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1)
    engine.fit(model=model, datamodule=datamodule)
    callbacks = engine.trainer.callbacks
    periodic = [c for c in callbacks if isinstance(c, PeriodicCheckpoint)]
    assert len(periodic) == 1
    assert periodic[0].every_n_steps == 500
    assert any(isinstance(c, RandomStateCheckpoint) for c in callbacks)
    assert isinstance(engine.trainer.checkpoint_callback, AnomalibCheckpoint)
    weights = tmp_path / "CRR" / "MVTecAD" / "washer" / "v0" / "weights" / "lightning"
    assert (weights / "model.ckpt").is_file()
    assert not (weights / "last.ckpt").exists()  # 2 steps: shorter than one period
    saved_callbacks = torch.load(weights / "model.ckpt", weights_only=False)["callbacks"]
    assert "rng_states" in saved_callbacks["RandomStateCheckpoint"]


def test_user_periodic_checkpoint_replaces_the_default(tiny_dataset: Path, tmp_path: Path) -> None:
    """``Engine(callbacks=[PeriodicCheckpoint(every_n_steps=2)])`` wins over the model's default."""
    model = tiny_crr(stage1_steps=2, stage2_steps=2)
    datamodule = MVTecAD(root=tiny_dataset, category="washer", train_batch_size=2, eval_batch_size=4, num_workers=0)
    mine = PeriodicCheckpoint(every_n_steps=2)
    engine = Engine(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1, callbacks=[mine])
    engine.fit(model=model, datamodule=datamodule)
    assert [c for c in engine.trainer.callbacks if isinstance(c, PeriodicCheckpoint)] == [mine]
    assert mine.last_saved_step == 4  # one epoch is 4 steps here: saved at its end
    with pytest.raises(ValueError, match="every_n_steps"):
        PeriodicCheckpoint(every_n_steps=-1)
