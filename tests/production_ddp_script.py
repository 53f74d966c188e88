"""Two-process CPU DDP (gloo) fits and tests of CRR and MFRNet, launched by ``torchrun``; see test_production_ddp.py.

``torchrun --standalone --nproc_per_node 2 -m tests.production_ddp_script <dataset_root> <out_dir>`` starts
both ranks itself (as on a cluster), so Lightning does not relaunch the script and both fits run in one
process group. Every rank seeds alike (as users do with ``seed_everything``) and writes what it drew and saw
to ``<out_dir>/<model>_rank<r>.json``; rank 0 also writes the Engine checkpoint path.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine
from lightning.pytorch import Callback, seed_everything

from tests.helpers import tiny_crr, tiny_mfrnet


def _digest(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().float().cpu().numpy().tobytes()).hexdigest()[:16]


class RecordRandomDraws(Callback):
    """Per step: the model's step counter and a digest of what the model drew at random in that step."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self._draws: list[str] = []

    def on_train_start(self, trainer, pl_module) -> None:
        if getattr(pl_module, "synthesizer", None) is not None:  # CRR: synthetic anomaly masks
            synthesize = pl_module.synthesizer.forward

            def recorded_synthesis(*args: Any, **kwargs: Any) -> Any:
                out = synthesize(*args, **kwargs)
                self._draws.append(_digest(out.mask))
                return out

            pl_module.synthesizer.forward = recorded_synthesis
        else:  # MFRNet: the training masks
            train_masks = pl_module.model.train_masks

            def recorded_masks(*args: Any, **kwargs: Any) -> Any:
                masks = train_masks(*args, **kwargs)
                self._draws.append(_digest(masks))
                return masks

            pl_module.model.train_masks = recorded_masks

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = int(getattr(pl_module, "train_step_count", trainer.global_step))
        self.rows.append({"global_step": trainer.global_step, "model_step": step, "draws": self._draws})
        self._draws = []


def run(name: str, factory: Any, root: str, out: Path, **engine_kwargs: Any) -> None:
    """Fit and test one model with DDP on this rank and write this rank's record."""
    seed_everything(0, verbose=False)
    model = factory()
    recorder = RecordRandomDraws()
    # Evaluation at batch 1: a score computed in a batch of 3 differs from the same image's score in another batch
    # of 3 by float rounding (~1e-6, CPU kernels block by batch size), and the F1 threshold *is* one of the
    # validation scores, so a rounding difference could flip a label. At batch 1 both sides compute bit for bit
    # the same thing and the comparison with a single process can be exact.
    datamodule = MVTecAD(root=root, category="washer", train_batch_size=2, eval_batch_size=1, num_workers=0)
    # One workspace per rank: anomalib's Engine creates ``v0``/``latest`` in ``default_root_dir`` with a plain
    # ``mkdir`` on every rank, so two ranks started together by torchrun race for the same version directory
    # (FileExistsError on one rank). Lightning broadcasts rank 0's checkpoint directory, so the checkpoint
    # still lands in rank 0's workspace and both ranks test the same file.
    workspace = out / name / f"rank{os.environ.get('RANK', '0')}"
    engine = Engine(
        strategy="ddp",
        accelerator="cpu",
        devices=2,
        num_nodes=1,
        default_root_dir=workspace,
        logger=False,
        enable_progress_bar=False,
        callbacks=[recorder],
        **engine_kwargs,
    )
    engine.fit(model=model, datamodule=datamodule)
    checkpoint = engine.best_model_path  # tested from the file, as the single-process comparison is
    metrics = engine.test(model=model, datamodule=datamodule, ckpt_path=checkpoint, verbose=False)[0]
    rank = engine.trainer.global_rank
    record: dict[str, Any] = {
        "rank": rank,
        "world_size": engine.trainer.world_size,
        "global_step": engine.trainer.global_step,
        "rows": recorder.rows,
        "metrics": {k: float(v) for k, v in metrics.items()},
        "checkpoint": str(checkpoint),
    }
    aggregator = getattr(model.model, "aggregator", None)
    if aggregator is not None:
        record["feature_mean"] = aggregator.feature_mean.tolist()
        record["feature_std"] = aggregator.feature_std.tolist()
        record["envelope"] = model.model.normal_envelope.envelope.flatten().tolist()
    (out / f"{name}_rank{rank}.json").write_text(json.dumps(record))


def main(root: str, out_dir: str) -> None:
    """CRR (3 + 3 steps over two epochs of 2 steps per rank) then MFRNet (2 epochs)."""
    torch.set_num_threads(1)
    out = Path(out_dir)
    run("CRR", lambda: tiny_crr(stage1_steps=3, stage2_steps=3), root, out)
    run("MFRNet", tiny_mfrnet, root, out, max_epochs=2)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
