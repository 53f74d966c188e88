"""Issue 11, item 5: two-process CPU DDP (gloo, launched by torchrun) of CRR and MFRNet.

* each rank draws its own synthetic anomalies (CRR) and masks (MFRNet), although all ranks were seeded alike;
* step counts and CRR's stage boundary are those of the configuration, on both ranks;
* MFRNet's feature statistics are reduced across ranks: both ranks hold the same statistics of the whole
  training set although each saw half of it;
* the DDP test metrics of CRR and MFRNet equal a single-process test of the same checkpoint.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_crr import CRR, MFRNet

from .helpers import run_offline

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_runs(tiny_dataset: Path, module_tmp_dir: Callable[[str], Path]) -> dict[str, list[dict[str, Any]]]:
    out = module_tmp_dir("ddp")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "tests.production_ddp_script", str(tiny_dataset), str(out),
    ]  # fmt: skip
    result = run_offline(command, cwd=REPO, timeout=1800, OMP_NUM_THREADS="1")
    # Each rank's own traceback (the first rank to fail is the cause; the others report a closed connection).
    failures = [line for line in result.stderr.splitlines() if line.startswith(("[rank0]", "[rank1]"))]
    assert result.returncode == 0, "\n".join(failures[-80:]) or result.stderr[-4000:]
    return {
        name: [json.loads((out / f"{name}_rank{rank}.json").read_text()) for rank in (0, 1)]
        for name in ("CRR", "MFRNet")
    }


@pytest.mark.parametrize("name", ["CRR", "MFRNet"])
def test_ranks_draw_different_random_anomalies_and_masks(name: str, ddp_runs: dict[str, Any]) -> None:
    rank0, rank1 = ddp_runs[name]
    assert rank0["world_size"] == rank1["world_size"] == 2
    draws0 = [draw for row in rank0["rows"] for draw in row["draws"]]
    draws1 = [draw for row in rank1["rows"] for draw in row["draws"]]
    assert draws0
    assert len(draws0) == len(draws1)
    assert not set(draws0) & set(draws1)  # no synthetic mask / training mask repeated on the other rank


def test_crr_steps_and_stage_boundary(ddp_runs: dict[str, Any]) -> None:
    for record in ddp_runs["CRR"]:
        assert record["global_step"] == 6
        assert [row["model_step"] for row in record["rows"]] == [1, 2, 3, 4, 5, 6]
        # Stage I (3 steps) synthesises once per step; stage II too (for the seg head's target).
        assert [len(row["draws"]) for row in record["rows"]] == [1] * 6


def test_mfrnet_statistics_are_reduced_across_ranks(ddp_runs: dict[str, Any]) -> None:
    """Each rank sees 4 of the 8 training images; all-reduced sums give both ranks the same statistics."""
    rank0, rank1 = ddp_runs["MFRNet"]
    assert rank0["global_step"] == rank1["global_step"] == 4  # 2 epochs of 8 images / 2 ranks / batch 2
    assert rank0["feature_mean"] == rank1["feature_mean"]
    assert rank0["feature_std"] == rank1["feature_std"]
    assert len(set(rank0["feature_mean"])) > 1  # real statistics, not the untouched defaults
    # The image score's envelope is the maximum over both ranks' images (max-reduced), so the ranks agree.
    assert rank0["envelope"] == rank1["envelope"]
    assert len(rank0["envelope"]) == 64  # fitted on the 8 x 8 feature grid, not left empty


@pytest.mark.parametrize("name", ["CRR", "MFRNet"])
def test_ddp_test_metrics_equal_a_single_process_test(
    name: str, ddp_runs: dict[str, Any], tiny_dataset: Path, tmp_path: Path
) -> None:
    rank0, rank1 = ddp_runs[name]
    assert rank0["metrics"] == rank1["metrics"]
    model = {"CRR": CRR, "MFRNet": MFRNet}[name].load_from_checkpoint(rank0["checkpoint"])
    datamodule = MVTecAD(root=tiny_dataset, category="washer", eval_batch_size=1, num_workers=0)  # as the script
    engine = Engine(default_root_dir=tmp_path, logger=False, accelerator="cpu", devices=1, enable_progress_bar=False)
    # One thread, as each rank of the script: another thread count splits the CPU reductions differently, and a
    # score ~1e-6 off the F1 threshold (which is one of the validation scores) would flip that image's label.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        single = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    finally:
        torch.set_num_threads(threads)
    assert set(single) == set(rank0["metrics"])
    for key, value in single.items():
        assert float(value) == pytest.approx(rank0["metrics"][key], abs=1e-6), key
