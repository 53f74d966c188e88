"""Two-process CPU DDP fit of a tiny CRR, run by ``test_crr_training.py`` as ``python -m tests.ddp_fit_script``.

Lightning's ``ddp`` strategy relaunches this module for rank 1, so it must be a script, not a test body.
Each rank saves its trainable state so the test can check that the ranks stayed in sync.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from tests.helpers import tiny_crr


def main(root: str, out: str) -> None:
    """Fit 2 + 2 steps with ``strategy="ddp"`` on 2 CPU processes and save each rank's state."""
    torch.manual_seed(0)
    model = tiny_crr(stage1_steps=2, stage2_steps=2)
    initial_seg = {k: v.clone() for k, v in model.model.seg_head.state_dict().items()}
    datamodule = MVTecAD(root=root, category="washer", train_batch_size=2, eval_batch_size=2, num_workers=0)
    engine = Engine(strategy="ddp", accelerator="cpu", devices=2, default_root_dir=out, logger=False)
    engine.fit(model=model, datamodule=datamodule)
    # Parameters only: BatchNorm running statistics are per rank unless sync_batchnorm=True (standard DDP).
    state = {k: v.detach().clone() for k, v in model.model.named_parameters() if not k.startswith("encoder.")}
    seg_changed = any(not torch.equal(v, model.model.seg_head.state_dict()[k]) for k, v in initial_seg.items())
    torch.save(
        {"state": state, "steps": int(model.train_step_count), "seg_changed": seg_changed},
        Path(out) / f"state_rank{engine.trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
