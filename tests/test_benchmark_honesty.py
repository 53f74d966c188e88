"""``anomalib-crr benchmark`` reports what was measured: spread over seeds, the whole test set, honest offline runs.

One small run (PaDiM, a ``Folder`` dataset twice: anomalib's default split and an explicit ``from_test``, two
seeds; about a minute on 2 CPU cores) serves the end-to-end checks; the report and picture checks use
hand-written results, so each number they assert is known exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from anomalib_crr.benchmark import ConfigError, run
from anomalib_crr.benchmark.config import apply_defaults, expand_jobs, load_config, validate_classes
from anomalib_crr.benchmark.metrics import MAD, METRICS
from anomalib_crr.benchmark.report import COST_COLUMNS, SETTING_COLUMNS, per_category_tables, result_rows, write_outputs

from .helpers import PADIM_ENTRY, small_benchmark_config

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# PaDiM as anomalib builds it by default: pre_trained=True, i.e. a download of ImageNet weights.
PADIM_DOWNLOADS = {**PADIM_ENTRY, "init_args": {"backbone": "resnet18", "layers": ["layer1", "layer2"]}}


def _folder(name: str, washer: Path, **extra: Any) -> dict[str, Any]:
    """A ``Folder`` dataset over the tiny ``washer`` category (good + scratch test images, with masks)."""
    return {
        "name": name,
        "class_path": "Folder",
        "init_args": {
            "name": "washer",
            "root": str(washer),
            "normal_dir": "train/good",
            "abnormal_dir": "test/scratch",
            "normal_test_dir": "test/good",
            "mask_dir": "ground_truth/scratch",
            "train_batch_size": 4,
            "eval_batch_size": 4,
            "num_workers": 0,
            **extra,
        },
        "categories": ["washer"],
        "mode": "per_category",
    }


def _test_images(washer: Path) -> int:
    return len(list((washer / "test" / "good").glob("*.png"))) + len(list((washer / "test" / "scratch").glob("*.png")))


@pytest.fixture(scope="module")
def folder_run(tiny_dataset: Path, module_tmp_dir: Callable[[str], Path]) -> dict[str, Any]:
    """PaDiM on Folder 'whole' (anomalib's default split) and 'cut' (val_split_mode=from_test), seeds 0 and 1."""
    washer = tiny_dataset / "washer"
    config = {
        "name": "honesty",
        "accelerator": "cpu",
        "threads": 2,
        "offline": True,
        "seeds": [0, 1],
        "datasets": [_folder("whole", washer), _folder("cut", washer, val_split_mode="from_test")],
        "models": [PADIM_DOWNLOADS],
    }
    folder = module_tmp_dir("honesty")
    path = folder / "honesty.yaml"
    path.write_text(yaml.safe_dump(config))
    lines: list[str] = []
    summary = run(path, output=folder / "run", echo=lines.append)
    return {"output": folder / "run", "summary": summary, "lines": lines, "washer": washer, "config": path}


def test_default_folder_split_keeps_the_whole_test_set(folder_run: dict[str, Any]) -> None:
    """anomalib's Folder default (from_test) would halve the test set; the benchmark evaluates on all of it."""
    assert not folder_run["summary"].failed, folder_run["lines"]
    frame = pd.read_csv(folder_run["output"] / "results.csv")
    whole = frame[(frame["dataset"] == "whole") & (frame["category"] == "washer")]
    assert len(whole) == 2  # one row per seed
    assert (whole["test_images"] == _test_images(folder_run["washer"])).all()
    assert (whole["test_images_moved"] == 0).all()
    assert (whole["val_split_mode"] == "same_as_test").all()
    assert any("dataset 'whole': val_split_mode=same_as_test" in line for line in folder_run["lines"])


def test_a_config_that_moves_test_images_is_told_with_the_count(folder_run: dict[str, Any]) -> None:
    total = _test_images(folder_run["washer"])
    frame = pd.read_csv(folder_run["output"] / "results.csv")
    cut = frame[(frame["dataset"] == "cut") & (frame["category"] == "washer")]
    assert (cut["val_split_mode"] == "from_test").all()
    assert (cut["test_images_moved"] > 0).all()
    assert (cut["test_images"] + cut["test_images_moved"] == total).all()
    lines = folder_run["lines"]
    assert any("WARNING: dataset 'cut'" in line and "from_test" in line for line in lines)
    moved = int(cut["test_images_moved"].iloc[0])
    assert any(f"moved {moved} of {total} test images" in line for line in lines), lines
    report = (folder_run["output"] / "report.md").read_text()
    tests = report.split("## Test sets")[1].split("\n## ")[0]
    assert f"moved {moved} of {total} test images to validation" in tests
    assert "cut / washer" in tests
    assert "whole / washer: 4 test images, the same test images in every job" in tests
    log = (folder_run["output"] / "jobs" / "Padim__cut__per_category__washer__seed0" / "log.txt").read_text()
    assert "test images to validation" in log


def test_report_gives_mean_std_and_n_over_two_seeds(folder_run: dict[str, Any]) -> None:
    frame = pd.read_csv(folder_run["output"] / "results.csv")
    mean_rows = frame[(frame["dataset"] == "whole") & (frame["category"] == "mean")]
    values = mean_rows["image_AUROC"].to_numpy(float)
    report = (folder_run["output"] / "report.md").read_text()
    table = report.split("## Mean over categories (sorted by mAD)")[1].split("\n## ")[0]
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    row = next(line for line in table.splitlines() if line.startswith("| Padim | whole"))
    cells = dict(zip(_cells(header), _cells(row), strict=True))
    assert cells["n"] == "2"
    assert cells["I-AUROC"] == f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"
    assert "## Image AUROC: 95 % bootstrap interval" in report


def test_grid_header_names_the_seed_it_shows(folder_run: dict[str, Any]) -> None:
    from anomalib_crr.benchmark.pictures import _header, picture_columns
    from anomalib_crr.benchmark.runner import read_result

    output = folder_run["output"]
    config = load_config(folder_run["config"], output=output)
    validate_classes(config)
    apply_defaults(config)
    jobs = expand_jobs(config)
    results = {j.job_id: read_result(output / "jobs" / j.job_id) for j in jobs}
    (column,) = picture_columns("whole", "washer", jobs, results)
    assert column["seed"] == 0
    header = _header(column)
    assert "seed 0" in header
    seed0 = results["Padim__whole__per_category__washer__seed0"]["categories"]["washer"]["image_AUROC"]
    assert f"I-AUROC {seed0:.3f}" in header
    assert (output / "grid_whole_washer.png").read_bytes().startswith(PNG_MAGIC)


def test_offline_true_random_initialises_a_model_that_would_download(folder_run: dict[str, Any]) -> None:
    """``offline: true`` runs (no download, no LocalEntryNotFoundError) and says the weights are random."""
    frame = pd.read_csv(folder_run["output"] / "results.csv")
    assert (frame["weights"] == "random init").all()
    assert any("model 'Padim'" in line and "random-initialised" in line for line in folder_run["lines"])


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


# ---- configuration checks (no job runs) --------------------------------------------------------------------


def _config(tiny_dataset: Path, tmp_path: Path, **changes: Any) -> Path:
    config = {**small_benchmark_config(tiny_dataset, [dict(PADIM_DOWNLOADS)]), **changes}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_top_level_offline_mapping_is_every_models_default(tiny_dataset: Path, tmp_path: Path) -> None:
    config = load_config(_config(tiny_dataset, tmp_path, offline={"random_init": True}), output=tmp_path / "run")
    assert config.offline is True
    validate_classes(config)
    apply_defaults(config)
    assert [job.model.offline for job in expand_jobs(config)] == [{"random_init": True}]


def test_top_level_offline_true_turns_downloads_into_random_init(tiny_dataset: Path, tmp_path: Path) -> None:
    config = load_config(_config(tiny_dataset, tmp_path, offline=True), output=tmp_path / "run")
    validate_classes(config)
    lines = apply_defaults(config)
    assert config.models[0].offline == {"random_init": True}
    assert any("random-initialised" in line for line in lines)
    online = load_config(_config(tiny_dataset, tmp_path, offline=False), output=tmp_path / "run")
    validate_classes(online)
    apply_defaults(online)
    assert online.models[0].offline == {}  # online, the model downloads its weights as usual


def test_top_level_offline_rejects_other_values(tiny_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="offline: expected true, false or a mapping"):
        load_config(_config(tiny_dataset, tmp_path, offline="yes"), output=tmp_path / "run")
    with pytest.raises(ConfigError, match=r"unknown key \['random'\]"):
        load_config(_config(tiny_dataset, tmp_path, offline={"random": True}), output=tmp_path / "run")


@pytest.mark.parametrize(
    ("change", "missing"),
    [
        ({"root": "/no/such/washer"}, "/no/such/washer"),
        ({"normal_dir": "train/goood"}, "train/goood"),
        ({"abnormal_dir": ["test/scratch", "test/scrach"]}, "test/scrach"),
    ],
)
def test_a_missing_data_path_fails_once_before_any_job_even_online(
    tiny_dataset: Path, tmp_path: Path, change: dict[str, Any], missing: str
) -> None:
    dataset = _folder("folder", tiny_dataset / "washer")
    dataset["init_args"].update(change)
    config = {**small_benchmark_config(tiny_dataset, [dict(PADIM_ENTRY)]), "datasets": [dataset], "offline": False}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ConfigError, match="not found") as info:
        run(path, output=tmp_path / "run", echo=lambda _: None)
    assert missing in str(info.value)
    assert not (tmp_path / "run" / "jobs").exists()


# ---- report and pictures from hand-written results ---------------------------------------------------------


def _result(job_dir: Path, seed: int, auroc: float, model: str = "Padim") -> dict[str, Any]:
    """A finished job's result with every metric = ``auroc``."""
    metrics = dict.fromkeys((*METRICS, MAD), auroc)
    return {
        "status": "ok",
        "job_id": job_dir.name,
        "model": model,
        "dataset": "tiny",
        "mode": "per_category",
        "seed": seed,
        "categories": {"washer": metrics},
        "test_set": {"images": {"washer": 6}, "moved_to_val": {}, "val_images": 6, "val_split_mode": "same_as_test"},
        "cost": {**dict.fromkeys(COST_COLUMNS, 1.0), "epochs": 1, "eval_batch_size": 4, "metrics_compute_s": 0.1},
        "settings": {
            **dict.fromkeys(SETTING_COLUMNS, "x"),
            "input_size": [64, 64],
            "raw_image_size": [64, 64],
            "class_path": "Padim",
            "init_args": {},
            "trainer": {},
            "datamodule_overrides": {},
        },
        "notes": [],
        "log": str(job_dir / "log.txt"),
    }


def test_mean_std_and_n_are_exact_for_known_seed_values(tmp_path: Path) -> None:
    rows = result_rows([_result(tmp_path / "a", 0, 0.7), _result(tmp_path / "b", 1, 0.9)])
    table = "\n".join(per_category_tables(rows))
    assert "| Padim | per_category | 2 | 0.800 ± 0.141 | 0.800 ± 0.141 |" in table
    assert sorted(r["seed"] for r in rows if r["category"] == "washer") == [0, 1]  # per-seed rows stay


def _save_maps(job_dir: Path, paths: list[Path]) -> None:
    """A job's ``maps.npz`` for ``paths`` (what :class:`SampleRecorder` writes), all maps 0.5."""
    job_dir.mkdir(parents=True, exist_ok=True)
    count = len(paths)
    np.savez_compressed(
        job_dir / "maps.npz",
        anomaly_map=np.full((count, 16, 16), 0.5, np.float16),
        pred_mask=np.zeros((count, 16, 16), bool),
        view=np.zeros((count, 16, 16, 3), np.uint8),
        image_path=np.array([str(p) for p in paths]),
        mask_path=np.array([""] * count),
        category=np.array(["washer"] * count),
        gt_label=np.array([int("good" not in str(p)) for p in paths]),
        normalisation=np.array("anomalib normalised: 0.5 = the model's threshold (image and pixel)"),
        downsample=np.array(1),
    )


def _two_model_run(tiny_dataset: Path, tmp_path: Path) -> tuple[Any, list[Any], list[dict[str, Any]]]:
    """Two models whose jobs saw different test images (as anomalib's from_test split does per job)."""
    entries = [PADIM_ENTRY, {**PADIM_ENTRY, "name": "Padim2"}]
    config = load_config(small_benchmark_config(tiny_dataset, entries), output=tmp_path / "run")
    jobs = expand_jobs(config)
    images = sorted((tiny_dataset / "washer" / "test").rglob("*.png"))
    results = []
    for index, job in enumerate(jobs):
        job_dir = tmp_path / "run" / "jobs" / job.job_id
        _save_maps(job_dir, images[index::2])  # disjoint halves of the test set
        results.append(_result(job_dir, 0, 0.8, model=job.model.name))
    return config, jobs, results


def test_grid_with_an_image_missing_from_a_jobs_test_set_does_not_crash(tiny_dataset: Path, tmp_path: Path) -> None:
    """The first column's rows are not all in the second job's maps: a grey cell, not ``ValueError``."""
    from anomalib_crr.benchmark.pictures import write_grid

    _, jobs, results = _two_model_run(tiny_dataset, tmp_path)
    pngs = write_grid(tmp_path, "tiny", "washer", jobs, {r["job_id"]: r for r in results})
    assert pngs
    assert pngs[0].read_bytes().startswith(PNG_MAGIC)


def test_a_failure_while_drawing_pictures_keeps_the_report_and_says_so(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anomalib_crr.benchmark import pictures

    def broken(*args: Any) -> None:
        del args
        raise RuntimeError("injected picture failure")

    monkeypatch.setattr(pictures, "write_pictures", broken)
    config, jobs, results = _two_model_run(tiny_dataset, tmp_path)
    write_outputs(config, jobs, results)
    report = (config.output / "report.md").read_text()
    assert "**Pictures failed**: RuntimeError: injected picture failure" in report
    frame = pd.read_csv(config.output / "results.csv")
    for model in ("Padim", "Padim2"):
        assert f"| {model} | tiny | per_category |" in report
        assert set(frame[frame["model"] == model]["category"]) == {"washer", "mean"}


def test_equal_counts_of_different_test_images_are_told_apart(tmp_path: Path) -> None:
    from anomalib_crr.benchmark.report import evaluated_images_lines

    rows = result_rows([_result(tmp_path / "a", 0, 0.7), _result(tmp_path / "b", 1, 0.9)])
    same = {("a", "washer"): frozenset({"x", "y"}), ("b", "washer"): frozenset({"x", "y"})}
    assert evaluated_images_lines(rows, same) == ["- tiny / washer: 6 test images, the same test images in every job"]
    different = {**same, ("b", "washer"): frozenset({"x", "z"})}
    assert "DIFFERENT test images between jobs" in evaluated_images_lines(rows, different)[0]
