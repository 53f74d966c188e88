"""Fits that SIGKILL themselves mid-training, run by ``test_production_resume.py`` as one subprocess.

``python -m tests.production_kill_script <dataset_root> <out_dir> <scenario>...`` imports anomalib once, then
forks one child per scenario (before any torch computation in the parent, so the fork is safe). Each child
fits with a :class:`PeriodicCheckpoint` every 4 steps (one epoch: 8 images in batches of 2) and sends
itself ``SIGKILL`` after the configured step: no Python cleanup, no Lightning exception handler, exactly a
crash. The parent records each child's exit signal in ``<out_dir>/summary.json``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, seed_everything

from tests.helpers import tiny_crr, tiny_mfrnet

SEED = 0
CHECKPOINT_EVERY = 4  # optimizer steps; = one epoch of the tiny dataset
# scenario -> (model factory, Engine kwargs, step after which the process is killed)
SCENARIOS: dict[str, tuple[Any, dict[str, Any], int]] = {
    # 8 + 8 steps; killed at step 6 (stage I, last checkpoint at 4) or 14 (stage II, last checkpoint at 12).
    "crr_stage1": (lambda: tiny_crr(stage1_steps=8, stage2_steps=8), {}, 6),
    "crr_stage2": (lambda: tiny_crr(stage1_steps=8, stage2_steps=8), {}, 14),
    # 4 epochs = 16 steps; killed at step 10 (epoch 3), last checkpoint at 8.
    "mfrnet": (tiny_mfrnet, {"max_epochs": 4}, 10),
}


class RecordSteps(Callback):
    """Per optimizer step: global step, the model's own step counter (CRR: stage and hard-mining position), LRs."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        row = {
            "global_step": trainer.global_step,
            "model_step": int(getattr(pl_module, "_step", trainer.global_step)),
            "lrs": [group["lr"] for optimizer in trainer.optimizers for group in optimizer.param_groups],
            "first_image": str(batch.image_path[0]),
        }
        self.rows.append(row)
        if self.path is not None:  # flushed every step: the process may die at any moment
            self.path.write_text(json.dumps(self.rows))


class KillAtStep(Callback):
    """``SIGKILL`` this process once ``trainer.global_step`` reaches ``step``."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def build(scenario: str, root: str, out: Path, extra_callbacks: list[Callback]) -> tuple[Any, Any, Any]:
    """Seed, then the model, datamodule and Engine of ``scenario`` (the same for killed, resumed and reference fits)."""
    from anomalib.data import MVTecAD
    from anomalib.engine import Engine

    from anomalib_crr.models.components import PeriodicCheckpoint

    factory, engine_kwargs, _ = SCENARIOS[scenario]
    seed_everything(SEED, verbose=False)
    model = factory()
    datamodule = MVTecAD(root=root, category="washer", train_batch_size=2, eval_batch_size=4, num_workers=0)
    engine = Engine(
        default_root_dir=out,
        logger=False,
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        callbacks=[PeriodicCheckpoint(every_n_steps=CHECKPOINT_EVERY), *extra_callbacks],
        **engine_kwargs,
    )
    return model, datamodule, engine


def killed_fit(scenario: str, root: str, out: Path) -> None:
    """Fit until the kill step; never returns."""
    model, datamodule, engine = build(
        scenario, root, out, [RecordSteps(out / "steps.json"), KillAtStep(SCENARIOS[scenario][2])]
    )
    engine.fit(model=model, datamodule=datamodule)
    os._exit(3)  # reaching here means the kill did not happen


def main(root: str, out_dir: str, scenarios: list[str]) -> None:
    """Fork one killed fit per scenario and record how each child ended."""
    summary: dict[str, Any] = {}
    for scenario in scenarios:
        out = Path(out_dir) / scenario
        out.mkdir(parents=True, exist_ok=True)
        pid = os.fork()
        if pid == 0:
            try:
                killed_fit(scenario, root, out)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(4)
        _, status = os.waitpid(pid, 0)
        summary[scenario] = {
            "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "exit_code": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        }
    (Path(out_dir) / "summary.json").write_text(json.dumps(summary))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
