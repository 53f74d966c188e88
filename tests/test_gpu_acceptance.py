"""``benchmarks/gpu_acceptance.py`` on CPU (tiny sizes), and INP-Former as a benchmark job.

Why here: a GPU is lent to the project rarely and briefly, so the acceptance script must already work when one
arrives. Running its CPU mode in the suite keeps every part's code path alive (imports, model builds, the
smoke benchmark invocation, the report), even though the numbers mean nothing on a CPU.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from anomalib_crr.benchmark import run

from .helpers import TINY_CROP, TINY_IMAGE, small_benchmark_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_acceptance.py"


@functools.cache
def _load_script() -> ModuleType:
    """The script as a module (registered in ``sys.modules``, which its dataclasses need)."""
    spec = importlib.util.spec_from_file_location("gpu_acceptance", SCRIPT)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _rows(output: Path) -> list[dict[str, str]]:
    with (output / "gpu_acceptance.csv").open() as handle:
        return list(csv.DictReader(handle))


def _has_number_or_reason(line: dict[str, str]) -> bool:
    try:
        number = float(line["value"])
    except ValueError:
        number = math.nan
    return math.isfinite(number) or bool(line["note"].strip())


def test_cpu_mode_writes_a_report_with_every_part(tmp_path: Path) -> None:
    """The whole script in its tiny CPU mode: every part in order, each row a number or a stated reason."""
    output = tmp_path / "acceptance"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--output", str(output), "--device", "cpu", "--tiny"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=420,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    module = _load_script()
    rows = _rows(output)
    parts = [line for line in rows if line["item"] == "part"]
    assert [line["part"] for line in parts] == list(module.PARTS)
    assert all(line["status"] in {"ok", "partial"} for line in parts), parts
    assert all(_has_number_or_reason(line) for line in rows), [line for line in rows if not _has_number_or_reason(line)]
    for name in module.PARTS:  # every part measured something (a row of its own besides its summary)
        assert any(line["part"] == name and line["item"] != "part" for line in rows), name
    by_metric = {(line["part"], line["metric"]): line for line in rows}
    assert by_metric[("smoke", "jobs_finished")]["status"] == "ok"
    assert float(by_metric[("smoke", "jobs_finished")]["value"]) == 2  # Padim in 32-true and bf16-mixed
    fidelity = {(line["item"], line["metric"]): line for line in rows if line["part"] == "fidelity"}
    assert float(fidelity[("fp32", "max_abs_map_diff")]["value"]) == 0.0  # fp32 on CPU vs CPU: identical
    assert math.isfinite(float(fidelity[("bf16-mixed (bf16 autocast)", "max_abs_map_diff")]["value"]))
    report = (output / "gpu_acceptance.md").read_text()
    assert "gpu: none" in report
    assert "driver: none" in report
    for name in module.PARTS:
        assert f"\n## {name}\n" in report


def test_a_failing_part_is_recorded_and_the_later_parts_still_run(tmp_path: Path) -> None:
    """A smoke config that does not exist makes the smoke part raise; the estimate after it still runs."""
    module = _load_script()
    output = tmp_path / "acceptance"
    missing = tmp_path / "no_such_smoke.yaml"
    argv = ["--output", str(output), "--device", "cpu", "--tiny", "--parts", "environment,smoke,estimate"]
    assert module.main([*argv, "--smoke-config", str(missing)]) == 1
    parts = {line["part"]: line for line in _rows(output) if line["item"] == "part"}
    assert list(parts) == ["environment", "smoke", "estimate"]
    assert parts["smoke"]["status"] == "failed"
    assert "FileNotFoundError" in parts["smoke"]["note"]
    assert "no_such_smoke.yaml" in parts["smoke"]["note"]
    assert parts["environment"]["status"] == "ok"
    assert parts["estimate"]["status"] == "ok"
    assert "| smoke | failed |" in (output / "gpu_acceptance.md").read_text()


def test_unknown_part_is_refused(tmp_path: Path) -> None:
    assert _load_script().main(["--output", str(tmp_path), "--device", "cpu", "--parts", "environment,nope"]) == 2


def test_smoke_config_runs_every_model_in_each_precision() -> None:
    """One benchmark invocation covers both precisions: each model once per precision, its trainer's wins."""
    base = yaml.safe_load((ROOT / "configs" / "benchmark" / "smoke.yaml").read_text())
    config = _load_script().smoke_config(base, cuda=True, precisions=("32-true", "16-mixed"))
    assert config["accelerator"] == "gpu"
    names = [model["name"] for model in base["models"]]
    assert [m["name"] for m in config["models"]] == [f"{n}_{p}" for p in ("32-true", "16-mixed") for n in names]
    assert {m["trainer"]["precision"] for m in config["models"][len(names) :]} == {"16-mixed"}
    assert "precision" not in base["models"][0]["trainer"]  # the loaded config is left as it was


def test_lpt_makespan_spreads_jobs_over_gpus() -> None:
    makespan = _load_script()._lpt_makespan
    assert makespan([5, 4, 3, 3, 1], 1) == 16
    assert makespan([5, 4, 3, 3, 1], 2) == 8  # 5 + 3 | 4 + 3 + 1
    assert makespan([10, 1, 1], 8) == 10


INP_FORMER_ENTRY = {
    "name": "InpFormer",
    "class_path": "anomalib.models.InpFormer",
    "trainer": {"max_epochs": 1},
    "init_args": {
        "encoder_name": "vit_small_patch14_reg4_dinov2",
        "target_layers": [0, 1],
        "fuse_layer_encoder": [[0], [1]],
        "fuse_layer_decoder": [[0], [1]],
        "pre_processor": {
            "class_path": "anomalib.pre_processing.PreProcessor",
            "init_args": {
                "transform": {
                    "class_path": "torchvision.transforms.v2.Compose",
                    "init_args": {
                        "transforms": [
                            {"class_path": "torchvision.transforms.v2.Resize", "init_args": {"size": [TINY_IMAGE] * 2}},
                            {
                                "class_path": "torchvision.transforms.v2.CenterCrop",
                                "init_args": {"size": [TINY_CROP] * 2},
                            },
                            {
                                "class_path": "torchvision.transforms.v2.Normalize",
                                "init_args": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
                            },
                        ]
                    },
                }
            },
        },
    },
}


@pytest.mark.parametrize("config_name", ["mvtec_gpu", "visa_gpu"])
def test_gpu_configs_carry_inp_former_with_its_recipe(config_name: str) -> None:
    models = {
        m["name"]: m
        for m in yaml.safe_load((ROOT / "configs" / "benchmark" / f"{config_name}.yaml").read_text())["models"]
    }
    entry = models["InpFormer"]
    assert entry["class_path"] == "anomalib.models.InpFormer"
    assert entry["trainer"] == {"max_epochs": 200}
    assert entry["init_args"] == {"encoder_name": "vit_base_patch14_reg4_dinov2", "inp_num": 6}


def test_inp_former_runs_as_a_benchmark_job(tiny_dataset: Path, tmp_path: Path) -> None:
    """anomalib's InpFormer, tiny and random-init (offline default), trains and tests as one job; its row is there."""
    config = tmp_path / "inp.yaml"
    body = small_benchmark_config(tiny_dataset, [INP_FORMER_ENTRY])
    body["threads"] = 1  # on a loaded 2-core machine one thread is several times faster than two
    config.write_text(yaml.safe_dump(body))
    output = tmp_path / "run"
    summary = run(config, output=output, echo=lambda _line: None)
    assert not summary.failed, (output / "jobs").glob("*/log.txt")
    with (output / "results.csv").open() as handle:
        rows = [line for line in csv.DictReader(handle) if line["model"] == "InpFormer"]
    assert sorted(line["category"] for line in rows) == ["mean", "washer"]
    mean = next(line for line in rows if line["category"] == "mean")
    assert 0.0 <= float(mean["image_AUROC"]) <= 1.0
    assert 0.0 <= float(mean["pixel_AUROC"]) <= 1.0
    assert mean["weights"] == "random init"
    assert float(mean["latency_ms"]) > 0
