"""A user's path through ``anomalib-crr``: outputs stay with their run, short errors, failed runs keep ``latest``.

Every command runs the real console script in a fresh process, offline, on the generated tiny dataset (issue 34).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helpers import TINY_IMAGE, TINY_MFRNET, run_offline

SCRIPT = Path(sys.executable).with_name("anomalib-crr")
TINY_CONFIG: dict[str, Any] = {
    "model": {
        "class_path": "anomalib_crr.MFRNet",
        "init_args": {
            **TINY_MFRNET,
            "pre_processor": {
                "class_path": "anomalib.pre_processing.PreProcessor",
                "init_args": {
                    "transform": {
                        "class_path": "torchvision.transforms.v2.Resize",
                        "init_args": {"size": [TINY_IMAGE, TINY_IMAGE]},
                    }
                },
            },
        },
    }
}
DESIGN_TESTS = "test_mfrnet_design.py"  # imports the TestGrid enum
# At most this many lines from the error line on: the message (plus a cut-off note) and the --verbose hint.
MAX_ERROR_LINES = 3


def _cli(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return run_offline([str(SCRIPT), *args], cwd=cwd, **env)


def _data_args(root: Path) -> list[str]:
    return [
        "--data", "anomalib.data.MVTecAD", "--data.root", str(root), "--data.category", "washer",
        "--data.num_workers", "0", "--data.train_batch_size", "4", "--data.eval_batch_size", "4",
    ]  # fmt: skip


def _train_args(config: Path, data_root: Path) -> list[str]:
    return [
        "train", "--config", str(config), *_data_args(data_root), "--trainer.max_epochs", "1",
        "--trainer.logger", "false", "--trainer.accelerator", "cpu", "--default_root_dir", "results",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def run(tiny_dataset: Path, module_tmp_dir: Callable[[str], Path]) -> dict[str, Path]:
    """One tiny MFRNet trained by ``anomalib-crr train``; commands run in ``root`` (so ``results`` lands there)."""
    root = module_tmp_dir("user_flow")
    config = root / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY_CONFIG))
    result = _cli(_train_args(config, tiny_dataset), cwd=root)
    assert result.returncode == 0, result.stderr[-3000:]
    latest = root / "results" / "MFRNet" / "MVTecAD" / "washer" / "latest"
    return {
        "root": root,
        "config": config,
        "latest": latest,
        "run": latest.resolve(),
        "ckpt": latest / "weights" / "lightning" / "model.ckpt",
        "run_config": latest / "config.yaml",
    }


def _assert_short_error(result: subprocess.CompletedProcess[str], *phrases: str) -> list[str]:
    """Exit code 2, no traceback, the error in at most ``MAX_ERROR_LINES`` lines that name ``phrases``."""
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert "Does not validate" not in output, output[-3000:]
    lines = result.stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if ": error: " in line)
    error_lines = lines[start:]
    assert len(error_lines) <= MAX_ERROR_LINES, error_lines
    for phrase in phrases:
        assert phrase in "\n".join(error_lines), error_lines
    return error_lines


def _export_args(run: dict[str, Path], export_type: str = "onnx", size: int = TINY_IMAGE) -> list[str]:
    return [
        "export", "--config", str(run["run_config"]), "--ckpt_path", str(run["ckpt"]),
        "--export_type", export_type, "--input_size", f"[{size},{size}]",
    ]  # fmt: skip


def test_export_goes_into_the_run_and_is_never_overwritten(run: dict[str, Path]) -> None:
    first = _cli(_export_args(run), cwd=run["root"])
    assert first.returncode == 0, first.stderr[-3000:]
    onnx = run["run"] / "weights" / "onnx" / "model.onnx"
    assert onnx.is_file()
    assert not (run["root"] / "results" / "weights").exists()  # anomalib's default: outside every run
    assert "Replaced initializer" not in first.stdout + first.stderr  # the ONNX optimiser's log is quiet
    before = onnx.read_bytes()

    second = _cli(_export_args(run), cwd=run["root"])
    _assert_short_error(second, str(onnx), "--overwrite")
    assert onnx.read_bytes() == before

    forced = _cli([*_export_args(run), "--overwrite"], cwd=run["root"])
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert onnx.is_file()


def test_predict_writes_a_fresh_folder_per_call(run: dict[str, Path], tiny_dataset: Path) -> None:
    args = [
        "predict", "--config", str(run["run_config"]), "--ckpt_path", str(run["ckpt"]),
        "--data", str(tiny_dataset / "washer" / "test" / "stain"),
    ]  # fmt: skip
    for _ in range(2):
        result = _cli(args, cwd=run["root"])
        assert result.returncode == 0, result.stderr[-3000:]
    folders = sorted((run["run"] / "predictions").iterdir())
    assert [folder.name for folder in folders] == ["v0", "v1"]
    for folder in folders:
        assert len((folder / "predictions.csv").read_text().splitlines()) == 3  # header + 2 images
        assert sorted(path.name for path in folder.rglob("images/**/*.png")) == ["000.png", "001.png"]

    chosen = run["root"] / "my_predictions"
    chosen.mkdir()
    shutil.copy(folders[0] / "predictions.csv", chosen)
    kept = (chosen / "predictions.csv").read_bytes()
    refused = _cli([*args, "--default_root_dir", str(chosen)], cwd=run["root"])
    _assert_short_error(refused, str(chosen), "--overwrite")
    assert (chosen / "predictions.csv").read_bytes() == kept
    assert not (chosen / "images").exists()


def test_failed_train_leaves_latest_on_the_last_good_run(run: dict[str, Path], tiny_dataset: Path) -> None:
    """An unusable training image fails the fit after anomalib made ``v1``; ``latest/config.yaml`` still works."""
    bad = run["root"] / "bad_data"
    shutil.copytree(tiny_dataset, bad)
    (bad / "washer" / "train" / "good" / "000.png").write_bytes(b"")
    failed = _cli(_train_args(run["config"], bad), cwd=run["root"])
    _assert_short_error(failed, "file is empty", "000.png")
    assert "points again to" in failed.stderr
    assert run["latest"].resolve() == run["run"]
    assert (run["latest"].parent / "v1").is_dir()  # the failed run's folder is kept for its config and logs
    check = _cli([*_export_args(run, "torch"), "--print_config"], cwd=run["root"])
    assert check.returncode == 0, check.stderr[-3000:]


@pytest.mark.parametrize(
    ("case", "phrases"),
    [
        ("missing_weights", ["Backbone weights file not found", "nope.safetensors"]),
        ("missing_root", ["--data.root", "no_such_folder"]),
        ("unknown_category", ["no category 'bottle'", "washer"]),
        ("export_size", ["--input_size [200,200]", "Nearest sizes it takes"]),
    ],
)
def test_user_errors_are_short_with_exit_code_2(
    case: str, phrases: list[str], run: dict[str, Path], tiny_dataset: Path
) -> None:
    model = ["--model", "MFRNet", "--model.pre_trained", "false", "--trainer.max_epochs", "1"]
    size = ["--export_type", "onnx", "--input_size", "[200,200]"]
    args = {
        "missing_weights": ["train", *model, "--model.weights_path", "nope.safetensors", *_data_args(tiny_dataset)],
        "missing_root": ["train", *model, *_data_args(tiny_dataset)[:2], "--data.root", "no_such_folder"],
        "unknown_category": ["train", *model, *_data_args(tiny_dataset)[:4], "--data.category", "bottle"],
        # without a resizing pre-processor MFRNet needs sides whose stride-8 map tiles into its cells and patches
        "export_size": ["export", *model[:4], "--model.pre_processor", "false", *size],
    }[case]
    result = _cli(args, cwd=run["root"])
    _assert_short_error(result, *phrases)
    assert not (run["root"] / "no_such_folder").exists()  # refused before anything was created or downloaded


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_verbose_shows_the_traceback(how: str, tiny_dataset: Path, tmp_path: Path) -> None:
    args = ["train", "--model", "MFRNet", "--model.pre_trained", "false", *_data_args(tiny_dataset)]
    args[args.index(str(tiny_dataset))] = "no_such_folder"
    result = (
        _cli([*args, "--verbose"], cwd=tmp_path)
        if how == "flag"
        else _cli(args, cwd=tmp_path, ANOMALIB_CRR_VERBOSE="1")
    )
    assert result.returncode not in (0, 2)
    assert "Traceback" in result.stderr, result.stderr[-3000:]
    assert "DataRootError" in result.stderr, result.stderr[-3000:]


def test_help_lists_the_plugin_subcommands(tmp_path: Path) -> None:
    result = _cli(["--help"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    listed = {line.split()[1] for line in result.stdout.splitlines() if len(line.split()) > 2}
    assert {"train", "predict", "export", "demo", "benchmark"} <= listed
    assert "Benchmarking pipeline" not in result.stdout  # anomalib's benchmark is not what anomalib-crr runs
    assert "FutureWarning" not in result.stderr, result.stderr  # anomalib's import-time notices are hidden


def test_pytest_collects_no_enum_as_a_test_class(tmp_path: Path) -> None:
    tests = Path(__file__).resolve().parent
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            str(tests / "test_mfrnet_design.py"),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "PytestCollectionWarning" not in result.stdout, result.stdout[-3000:]


def test_openvino_inferencer_leaves_no_cache_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("openvino")
    import numpy as np

    from anomalib_crr.deploy import OpenVINOInferencer

    from .helpers import tiny_mfrnet

    xml = tiny_mfrnet().eval().to_openvino(tmp_path / "export", input_size=(TINY_IMAGE, TINY_IMAGE))
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    image = np.random.default_rng(0).random((TINY_IMAGE, TINY_IMAGE, 3), dtype=np.float32)
    for cache_dir in ("default", None):
        prediction = OpenVINOInferencer(xml, device="CPU", cache_dir=cache_dir).predict(image)
        assert prediction.pred_score is not None
    assert list(workdir.iterdir()) == []  # anomalib's own class leaves ./openvino_cache here
    assert (tmp_path / "cache" / "anomalib_crr" / "openvino").is_dir()
