"""``anomalib-crr benchmark``: smoke config end to end, failures, resumption, per-category metrics, bad configs.

The smoke config runs once per module (about 2 minutes on 2 CPU cores); the other tests read its run folder.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
import yaml

from anomalib_crr.benchmark import ConfigError, run
from anomalib_crr.benchmark.metrics import MAD, METRICS, build_metrics
from anomalib_crr.benchmark.report import COST_COLUMNS
from anomalib_crr.cli import run_benchmark_cli

from .helpers import PADIM_ENTRY, small_benchmark_config

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "configs" / "benchmark" / "smoke.yaml"
SMOKE_MODEL_ORDER = ["CRR", "MFRNet", "Patchcore", "Padim", "ReverseDistillation"]  # as in the config
SMOKE_MODELS = set(SMOKE_MODEL_ORDER)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def smoke_run(module_tmp_dir: Callable[[str], Path]) -> dict:
    """Run the shipped smoke config through the CLI entry point (in-process) into a fresh folder."""
    output = module_tmp_dir("smoke") / "run"
    start = time.perf_counter()
    code = run_benchmark_cli(["--config", str(SMOKE), "--output", str(output)])
    return {"output": output, "code": code, "wall_s": time.perf_counter() - start}


def _csv(output: Path) -> pd.DataFrame:
    return pd.read_csv(output / "results.csv")


def test_smoke_config_end_to_end(smoke_run: dict) -> None:
    assert smoke_run["code"] == 0
    output = smoke_run["output"]
    frame = _csv(output)
    assert set(frame["model"]) == SMOKE_MODELS
    for model in SMOKE_MODELS:
        rows = frame[frame["model"] == model]
        assert sorted(rows["category"]) == ["mean", "washer", "weave"], model
    for column in (*METRICS, MAD, *COST_COLUMNS):
        values = pd.to_numeric(frame[column], errors="coerce")
        assert values.notna().all(), f"{column} has missing values: {frame[['model', column]]}"
        assert all(math.isfinite(v) for v in values), column
    for column in METRICS:
        assert frame[column].between(0, 1).all(), column
    assert (frame["latency_ms"] > 0).all()
    assert (frame["throughput_img_s"] > 0).all()
    assert (frame["params_M"] > 0).all()
    assert (frame["macs_G"] > 0).all()
    assert (frame["peak_mem_infer_mb"] > 100).all()  # RSS of a process with torch loaded
    memory_bank = frame[frame["model"].isin(["Padim", "Patchcore"])]
    assert (memory_bank["optimizer_steps"] == 0).all()
    assert (memory_bank["trainable_params_M"] == 0).all()
    trained = frame[frame["model"].isin(["CRR", "ReverseDistillation"])]
    assert (trained["optimizer_steps"] > 0).all()
    assert (trained["trainable_params_M"] > 0).all()
    assert (frame[frame["model"] == "CRR"]["optimizer_steps"] == 6).all()
    assert frame["weights"].str.contains("random").all()

    report = (output / "report.md").read_text()
    assert "## Mean over categories (sorted by mAD)" in report
    assert "#### synthetic: image_AUROC" in report
    assert "#### synthetic: pixel_AUPRO" in report
    assert "## Settings of every job" in report
    assert "## Failed jobs\n\nnone" in report
    summary = report.split("## Mean over categories (sorted by mAD)")[1].split("##")[0]
    mads = [float(line.split("|")[11]) for line in summary.splitlines() if line.startswith("| ") and "mAD" not in line]
    assert len(mads) == 5
    assert mads == sorted(mads, reverse=True)
    for name in ("accuracy_vs_latency.png", "image_auroc_per_category.png"):
        data = (output / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 10_000, name
    results = yaml.safe_load((output / "results.json").read_text())
    assert len(results["jobs"]) == 5
    assert not results["failed"]


def _category_of(path: str) -> str:
    parts = Path(path).parts
    return parts[parts.index("test") - 1]


def test_per_category_rows_equal_metrics_on_that_category_alone(smoke_run: dict) -> None:
    """Recompute the seven metrics from each job's saved predictions, one category at a time."""
    output = smoke_run["output"]
    frame = _csv(output)
    for job_dir in sorted((output / "jobs").iterdir()):
        predictions = torch.load(job_dir / "predictions.pt", weights_only=False)
        categories = [_category_of(p) for p in predictions["image_path"]]
        model = job_dir.name.split("__")[0]
        for category in ("weave", "washer"):
            index = torch.tensor([i for i, c in enumerate(categories) if c == category])
            batch = SimpleNamespace(
                **{k: predictions[k][index] for k in ("pred_score", "gt_label", "anomaly_map", "gt_mask")}
            )
            row = frame[(frame["model"] == model) & (frame["category"] == category)].iloc[0]
            for metric in build_metrics():
                metric.update(batch)
                expected = float(metric.compute())
                assert row[metric.name] == pytest.approx(expected, abs=1e-5), (model, category, metric.name)
    for _, row in frame.iterrows():
        assert row[MAD] == pytest.approx(sum(row[m] for m in METRICS) / 7, abs=1e-9)
    for model in SMOKE_MODELS:
        rows = frame[frame["model"] == model].set_index("category")
        for metric in (*METRICS, MAD):
            mean = (rows.loc["weave", metric] + rows.loc["washer", metric]) / 2
            assert rows.loc["mean", metric] == pytest.approx(mean, abs=1e-9)


def test_second_run_skips_finished_jobs_and_rerun_redoes_them(smoke_run: dict) -> None:
    output = smoke_run["output"]
    results = {d.name: d / "result.json" for d in (output / "jobs").iterdir()}
    before = {name: path.stat().st_mtime_ns for name, path in results.items()}
    lines: list[str] = []
    summary = run(SMOKE, output=output, echo=lines.append)
    assert sorted(summary.skipped) == sorted(results)
    assert not summary.ran
    assert {name: path.stat().st_mtime_ns for name, path in results.items()} == before
    assert sum("skipped (finished" in line for line in lines) == 5
    assert summary.wall_s < smoke_run["wall_s"] / 2

    summary = run(SMOKE, output=output, only="Padim", rerun=True, echo=lines.append)
    padim = next(name for name in results if name.startswith("Padim__"))
    assert summary.ran == [padim]
    assert not summary.failed
    after = {name: path.stat().st_mtime_ns for name, path in results.items()}
    assert after[padim] != before[padim]
    assert all(after[name] == before[name] for name in results if name != padim)
    assert any(line.startswith("[1/1] Padim__") and "started" in line for line in lines)
    assert len(_csv(output)) == 15  # the report still covers every job of the config

    changed = yaml.safe_load(SMOKE.read_text())
    next(m for m in changed["models"] if m["name"] == "Padim")["init_args"]["layers"] = ["layer1", "layer2"]
    changed_path = output.parent / "changed.yaml"
    changed_path.write_text(yaml.safe_dump(changed))
    with pytest.raises(ConfigError, match=r"changed since their results were written.*Padim__"):
        run(changed_path, output=output, echo=lines.append)
    assert results[padim].stat().st_mtime_ns == after[padim]


def test_failing_job_is_reported_and_others_finish(tiny_dataset: Path, tmp_path: Path) -> None:
    broken = {
        **PADIM_ENTRY,
        "name": "PadimBroken",
        "init_args": {**PADIM_ENTRY["init_args"], "backbone": "no_such_backbone"},
    }
    config = tmp_path / "small.yaml"
    config.write_text(yaml.safe_dump(small_benchmark_config(tiny_dataset, [broken, PADIM_ENTRY])))
    output = tmp_path / "run"
    assert run_benchmark_cli(["--config", str(config), "--output", str(output)]) == 1
    frame = _csv(output)
    assert set(frame["model"]) == {"Padim"}
    assert sorted(frame["category"]) == ["mean", "washer"]
    report = (output / "report.md").read_text()
    failed = report.split("## Failed jobs")[1].split("##")[0]
    assert "PadimBroken__tiny__per_category__washer__seed0" in failed
    assert "no_such_backbone" in failed
    assert str(output / "jobs" / "PadimBroken__tiny__per_category__washer__seed0" / "log.txt") in failed


def _write(tmp_path: Path, config: dict) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda c: c["models"][0].update(class_path="NoSuchModel"), "unknown class_path 'NoSuchModel'"),
        (lambda c: c["models"][0].update(class_path="anomalib.data.MVTecAD"), "is not an AnomalibModule subclass"),
        (lambda c: c["datasets"][0].update(class_path="NoSuchDataModule"), "unknown class_path 'NoSuchDataModule'"),
        (lambda c: c["datasets"][0]["init_args"].update(root="/no/such/root"), "data root not found: /no/such/root"),
        (lambda c: c["models"][0].update(learning_rate=0.1), "unknown key ['learning_rate']"),
        (lambda c: c.update(epochs=3), "unknown key ['epochs']"),
        (lambda c: c["models"][0]["init_args"].update(bogus=1), "Padim has no argument ['bogus']"),
        (lambda c: c["models"][0].update(trainer={}), "set trainer.max_epochs or trainer.max_steps"),
    ],
)
def test_bad_config_is_rejected_before_any_job(tiny_dataset: Path, tmp_path: Path, change, expected: str) -> None:
    config = small_benchmark_config(tiny_dataset, [dict(PADIM_ENTRY, init_args=dict(PADIM_ENTRY["init_args"]))])
    change(config)
    path = _write(tmp_path, config)
    with pytest.raises(ConfigError) as info:
        run(path, output=tmp_path / "run", echo=lambda _: None)
    assert expected in str(info.value)
    assert str(path) in str(info.value) or "data root" in str(info.value)
    assert not (tmp_path / "run" / "jobs").exists()


def test_bad_config_cli_exit_code(tiny_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = small_benchmark_config(tiny_dataset, [dict(PADIM_ENTRY, class_path="anomalib.models.NoSuchModel")])
    assert run_benchmark_cli(["--config", str(_write(tmp_path, config)), "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "anomalib-crr benchmark: error:" in err
    assert "has no class 'NoSuchModel'" in err
    assert "Traceback" not in err


def test_shipped_configs_validate() -> None:
    """Every shipped config parses, names importable classes with valid init args, and all nine models run somewhere."""
    from anomalib_crr.benchmark.config import expand_jobs, load_config, validate_classes

    models: set[str] = set()
    for name, expected_jobs in (("smoke", 5), ("real_cpu", 17), ("mvtec_gpu", 10 * 16), ("visa_gpu", 10 * 13)):
        config = load_config(ROOT / "configs" / "benchmark" / f"{name}.yaml", output="/nonexistent/run")
        validate_classes(config)
        jobs = expand_jobs(config)
        assert len(jobs) == expected_jobs, name
        models |= {job.model.name for job in jobs}
    nine = {"CRR", "MFRNet", "Patchcore", "Padim", "ReverseDistillation", "Dinomaly", "EfficientAd", "Draem"}
    assert models >= {*nine, "Supersimplenet"}
    real = load_config(ROOT / "configs" / "benchmark" / "real_cpu.yaml", output="/nonexistent/run")
    by_name = {m.name: m for m in real.models}
    for name in ("MFRNet", "Patchcore", "Padim", "Supersimplenet", "CRR_lite0"):
        weights = (
            by_name[name].offline.get("backbone_weights")
            or by_name[name].init_args.get("weights_path")
            or by_name[name].init_args.get("encoder_weights")
        )
        assert str(weights).endswith("tf_efficientnet_lite0.in1k.safetensors"), name
    assert by_name["CRR"].init_args["encoder_name"] == by_name["Dinomaly"].init_args["encoder_name"]
    assert by_name["CRR"].init_args["encoder_weights"] is None
    assert by_name["Dinomaly"].offline == {"random_init": True}


def test_location_only_aupro_scores_the_good_images_mean_map_for_every_image() -> None:
    """It equals plain AUPRO on the good images' mean map, ignores each image's own map, and needs a good image."""
    from anomalib.data import ImageBatch
    from anomalib.metrics import AUPRO

    from anomalib_crr.benchmark.metrics import LocationOnlyAUPRO

    generator = torch.Generator().manual_seed(0)
    masks = torch.zeros(4, 32, 32, dtype=torch.bool)
    masks[2, 4:10, 4:10] = True  # the two defects lie in different places
    masks[3, 20:28, 18:26] = True
    maps = masks.float() + 0.1 * torch.rand(4, 32, 32, generator=generator)  # each map finds its own defect
    batch = ImageBatch(
        image=torch.zeros(4, 3, 32, 32), gt_label=masks.flatten(1).any(1), gt_mask=masks, anomaly_map=maps
    )
    location_only = LocationOnlyAUPRO(fields=["anomaly_map", "gt_mask"], fpr_limit=0.3)
    location_only.update(batch)
    reference = AUPRO(fields=["anomaly_map", "gt_mask"], fpr_limit=0.3)
    reference.update(batch.update(in_place=False, anomaly_map=maps[:2].mean(0, keepdim=True).expand_as(maps)))
    own_maps = AUPRO(fields=["anomaly_map", "gt_mask"], fpr_limit=0.3)
    own_maps.update(batch)

    assert float(own_maps.compute()) > 0.99
    assert float(location_only.compute()) == pytest.approx(float(reference.compute()), abs=1e-6)
    assert float(location_only.compute()) < 0.5
    assert torch.equal(torch.cat(location_only.preds), maps)  # the stored maps are left as they were

    defective_only = LocationOnlyAUPRO(fields=["anomaly_map", "gt_mask"], fpr_limit=0.3)
    defective_only.update(batch.update(in_place=False, gt_mask=masks | True))
    with pytest.raises(ValueError, match="at least one good test image"):
        defective_only.compute()


# --- pool executor: the smoke config on 2 CPU workers, against the sequential smoke run above -----------------

POOL_TOLERANCE = 1e-4  # 1 torch thread per job in the pool, 2 in the sequential run: float sums may reorder


@pytest.fixture(scope="module")
def smoke_pool_run(smoke_run: dict, module_tmp_dir: Callable[[str], Path]) -> dict:
    """The smoke config plus a job made to fail, on `pool` with 2 workers, through the CLI entry point."""
    config = yaml.safe_load(SMOKE.read_text())
    broken = {**next(m for m in config["models"] if m["name"] == "Padim")}
    broken.update(name="PadimBroken", init_args={**broken["init_args"], "backbone": "no_such_backbone"})
    config["models"].append(broken)
    folder = module_tmp_dir("smoke_pool")
    path = folder / "smoke_pool.yaml"
    path.write_text(yaml.safe_dump(config))
    start = time.perf_counter()
    code = run_benchmark_cli(
        ["--config", str(path), "--output", str(folder / "run"), "--executor", "pool", "--workers", "2"]
    )
    return {"output": folder / "run", "code": code, "wall_s": time.perf_counter() - start}


def _results(output: Path) -> dict[str, dict]:
    return {d.name: json.loads((d / "result.json").read_text()) for d in (output / "jobs").iterdir()}


def test_pool_jobs_overlap_in_time_and_never_exceed_the_workers(smoke_pool_run: dict) -> None:
    spans = sorted(
        (r["execution"]["started_at"], r["execution"]["ended_at"]) for r in _results(smoke_pool_run["output"]).values()
    )
    assert len(spans) == 6
    overlapping = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1 :] if b[0] < a[1]]
    assert overlapping, f"no two jobs ran at the same time: {spans}"
    for moment in (s for s, _ in spans):  # at no start were more than 2 jobs running
        assert sum(s <= moment < e for s, e in spans) <= 2
    for result in _results(smoke_pool_run["output"]).values():
        assert result["execution"]["executor"] == "pool"
        assert result["execution"]["threads"] == 1  # 2 cores // 2 workers


def test_pool_metrics_equal_the_sequential_run(smoke_run: dict, smoke_pool_run: dict) -> None:
    sequential = _csv(smoke_run["output"]).set_index(["model", "category"])
    pooled = _csv(smoke_pool_run["output"]).set_index(["model", "category"])
    assert set(pooled.index) == set(sequential.index)
    for key in sequential.index:
        for metric in (*METRICS, MAD):
            assert pooled.loc[key, metric] == pytest.approx(sequential.loc[key, metric], abs=POOL_TOLERANCE), (
                key,
                metric,
            )


def test_pool_failed_job_does_not_stop_the_others(smoke_pool_run: dict) -> None:
    assert smoke_pool_run["code"] == 1
    results = _results(smoke_pool_run["output"])
    failed = [r for r in results.values() if r["status"] != "ok"]
    assert [r["model"] for r in failed] == ["PadimBroken"]
    assert "no_such_backbone" in failed[0]["error"]
    assert sum(r["status"] == "ok" for r in results.values()) == 5
    report = (smoke_pool_run["output"] / "report.md").read_text()
    assert "PadimBroken__synthetic__multiclass__all__seed0" in report.split("## Failed jobs")[1]


def test_pool_re_times_inference_alone_and_says_so(smoke_pool_run: dict) -> None:
    output = smoke_pool_run["output"]
    for result in _results(output).values():
        if result["status"] != "ok":
            continue
        cost = result["cost"]
        assert cost["timing"].startswith("exclusive: re-timed alone"), cost["timing"]
        assert cost["latency_ms_shared"] > 0
        assert cost["retimed_threads"] == 2  # the config's threads, as a job alone would have
        assert cost["latency_ms"] > 0
        assert cost["latency_ms"] != cost["latency_ms_shared"]
        # labelled by what happened: re-timed alone, or re-timed while the load said other work wanted the cores
        assert cost["latency_measured"] in {"exclusive", "retime-busy"}
        if cost["latency_measured"] == "retime-busy":
            from anomalib_crr.benchmark.retime import busy_limit

            limit = busy_limit(cost["retimed_threads"], os.cpu_count() or 1)
            assert max(cost["load_before"], cost["load_after"]) > limit  # the check saw real load
        assert cost["latency_iqr_ms"] >= 0
        assert cost["latency_iqr_ms_shared"] >= 0
    assert not list(output.glob("jobs/*/timing_model.pt"))  # kept models are deleted after re-timing
    frame = _csv(output)
    assert frame["timing"].str.startswith("exclusive: re-timed alone").all()
    assert frame["latency_measured"].isin(["exclusive", "retime-busy"]).all()
    assert "Latency and throughput timing: exclusive: re-timed alone" in (output / "report.md").read_text()


def test_assign_gpus_gives_each_job_disjoint_devices() -> None:
    from anomalib_crr.benchmark.executors import assign_gpus

    eight = [str(i) for i in range(8)]
    groups = assign_gpus(eight, 1)
    assert groups == [[g] for g in eight]
    pairs = assign_gpus(eight, 2)
    assert pairs == [["0", "1"], ["2", "3"], ["4", "5"], ["6", "7"]]
    odd = assign_gpus(["3", "5", "7"], 2)  # CUDA_VISIBLE_DEVICES ids are kept; the odd one out is not shared
    assert odd == [["3", "5"]]
    assert assign_gpus(eight, 1, workers=3) == [["0"], ["1"], ["2"]]
    for grouping in (groups, pairs, odd):
        flat = [d for group in grouping for d in group]
        assert len(flat) == len(set(flat))
    with pytest.raises(ValueError, match="needs that many visible GPUs"):
        assign_gpus(["0"], 2)


def test_pool_slots_on_gpus_set_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    """With GPUs visible, each pool slot is one disjoint CUDA_VISIBLE_DEVICES (the job processes' own)."""
    from anomalib_crr.benchmark.executors.process import make_process_executor

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    pool = make_process_executor("pool", None, 2, "gpu", offline=True, exclusive_timing=True)
    assert [slot["CUDA_VISIBLE_DEVICES"] for slot in pool.slots] == ["0,1", "2,3"]
    assert "exclusive GPU" in pool.timing_note()
    cpu_pool = make_process_executor("pool", 2, 1, "cpu", offline=True, exclusive_timing=False)
    assert all("CUDA_VISIBLE_DEVICES" not in slot for slot in cpu_pool.slots)
    assert cpu_pool.timing_note().startswith("shared")


# --- pictures: comparison grids, score distributions, stored maps, report.html in a real browser ---------------


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def test_smoke_writes_a_grid_and_score_plot_per_category_with_a_column_per_finished_model(smoke_run: dict) -> None:
    from anomalib_crr.benchmark.config import expand_jobs, load_config
    from anomalib_crr.benchmark.pictures import picture_columns

    output = smoke_run["output"]
    config = load_config(SMOKE, output=output)
    results = {d.name: json.loads((d / "result.json").read_text()) for d in (output / "jobs").iterdir()}
    for category in ("weave", "washer"):
        for name in (f"grid_synthetic_{category}.png", f"scores_synthetic_{category}.png"):
            data = (output / name).read_bytes()
            assert data.startswith(PNG_MAGIC), name
        assert (output / f"grid_synthetic_{category}.pdf").read_bytes().startswith(b"%PDF")
        columns = picture_columns("synthetic", category, expand_jobs(config), results)
        assert [(c["label"], c["status"]) for c in columns] == [(m, "ok") for m in SMOKE_MODEL_ORDER]
        width, height = _png_size(output / f"grid_synthetic_{category}.png")
        assert width > 7 * 100
        assert height > 8 * 100
    report = (output / "report.md").read_text()
    assert "![grid synthetic weave](grid_synthetic_weave.png)" in report
    assert "![scores synthetic washer](scores_synthetic_washer.png)" in report


def test_a_failed_model_gets_a_failed_column(smoke_pool_run: dict) -> None:
    from anomalib_crr.benchmark.config import expand_jobs, load_config
    from anomalib_crr.benchmark.pictures import picture_columns

    output = smoke_pool_run["output"]
    config = load_config(output.parent / "smoke_pool.yaml", output=output)
    results = {d.name: json.loads((d / "result.json").read_text()) for d in (output / "jobs").iterdir()}
    columns = picture_columns("synthetic", "weave", expand_jobs(config), results)
    assert [(c["label"], c["status"]) for c in columns] == [
        *((m, "ok") for m in SMOKE_MODEL_ORDER),
        ("PadimBroken", "failed"),
    ]
    assert (output / "grid_synthetic_weave.png").is_file()


def test_stored_maps_reload_equal_to_the_computed_maps_and_rows_match_across_jobs(smoke_run: dict) -> None:
    from anomalib_crr.benchmark.samples import MAX_MAPS_BYTES, load_maps, select_samples

    output = smoke_run["output"]
    rows = None
    for job_dir in sorted((output / "jobs").iterdir()):
        assert (job_dir / "maps.npz").stat().st_size <= MAX_MAPS_BYTES
        maps = load_maps(job_dir)
        predictions = torch.load(job_dir / "predictions.pt", weights_only=False)
        index = {p: i for i, p in enumerate(predictions["image_path"])}
        for i, path in enumerate(maps["image_path"]):
            computed = predictions["anomaly_map"][index[str(path)]].squeeze().numpy()
            stored = maps["anomaly_map"][i].astype("float32")
            assert stored.shape == computed.shape
            assert abs(stored - computed).max() <= 1e-3 * max(1.0, abs(computed).max()), job_dir.name
            assert maps["view"][i].shape == (*computed.shape, 3)
        paths = [str(p) for p in maps["image_path"]]
        rows = rows or paths
        assert paths == rows, f"{job_dir.name} shows other images"
        scores = pd.read_csv(job_dir / "scores.csv")
        assert len(scores) == len(predictions["image_path"])
    categories = [_category_of(p) for p in predictions["image_path"]]
    expected = select_samples(predictions["image_path"], predictions["gt_label"].int().tolist(), categories)
    assert sorted(expected) == rows
    for category in ("weave", "washer"):
        chosen = [p for p in rows if _category_of(p) == category]
        assert len(chosen) == 8  # 3 scratch + 3 stain in the test set: 6 defective, spread over both types
        assert {Path(p).parent.name for p in chosen} == {"good", "scratch", "stain"}


def test_select_samples_is_deterministic_and_spreads_over_defect_types() -> None:
    import random

    from anomalib_crr.benchmark.samples import select_samples

    paths = [f"/d/cat/test/crack/{i}.png" for i in range(5)] + ["/d/cat/test/hole/0.png"]
    paths += [f"/d/cat/test/cut/{i}.png" for i in range(3)] + [f"/d/cat/test/good/{i}.png" for i in range(9)]
    labels = [0 if "/good/" in p else 1 for p in paths]
    chosen = select_samples(paths, labels, ["cat"] * len(paths))
    kinds = [Path(p).parent.name for p in chosen]
    assert kinds[:6] == ["crack", "cut", "hole", "crack", "cut", "crack"]  # round-robin over the sorted types
    assert kinds[6:] == ["good", "good"]
    assert len(chosen) == 8
    shuffled = list(zip(paths, labels, strict=True))
    random.Random(3).shuffle(shuffled)
    again = select_samples([p for p, _ in shuffled], [label for _, label in shuffled], ["cat"] * len(paths))
    assert again == chosen


def test_maps_file_is_capped(tmp_path: Path) -> None:
    """Twenty 1024² maps (about 40 MB as float16) are halved in resolution until the file fits the cap."""
    from anomalib_crr.benchmark.samples import MAX_MAPS_BYTES, SampleRecorder, load_maps

    recorder = SampleRecorder(["cat"])
    for i in range(20):
        recorder.maps[f"/d/cat/test/crack/{i}.png"] = {
            "anomaly_map": torch.rand(1024, 1024).numpy(),
            "view": torch.zeros(1024, 1024, 3, dtype=torch.uint8).numpy(),
            "pred_mask": torch.zeros(1024, 1024, dtype=torch.bool).numpy(),
            "mask_path": "",
            "category": "cat",
            "gt_label": 1,
        }
    info = recorder.save(tmp_path)
    maps = load_maps(tmp_path)
    assert info["map_downsample"] > 1
    assert int(maps["downsample"]) == info["map_downsample"]
    assert maps["anomaly_map"].nbytes + maps["view"].nbytes + maps["pred_mask"].nbytes <= MAX_MAPS_BYTES
    assert (tmp_path / "maps.npz").stat().st_size <= MAX_MAPS_BYTES


def _browser():
    """Headless Debian chromium through its chromedriver (no download), or skip/fail when absent."""
    import os
    import shutil

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        if os.environ.get("ANOMALIB_CRR_REQUIRE_BROWSER"):
            pytest.fail("chromium/chromedriver missing, but .ci/run installs them")
        pytest.skip("no chromium + chromedriver here (.ci/run installs Debian's)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.add_argument("--window-size=1400,1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=options)


def test_report_html_in_a_real_headless_browser(smoke_pool_run: dict, tmp_path: Path) -> None:
    import base64
    import io

    from PIL import Image, ImageStat
    from selenium.webdriver.common.by import By

    page = smoke_pool_run["output"] / "report.html"
    text = page.read_text()
    assert "http://" not in text
    assert "https://" not in text
    browser = _browser()
    try:
        browser.get(page.as_uri())
        errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors
        images = browser.find_elements(By.TAG_NAME, "img")
        assert len(images) >= 6  # two plots + a grid and a score plot per category
        widths = [
            browser.execute_script("return arguments[0].complete && arguments[0].naturalWidth", i) for i in images
        ]
        assert all(width and width > 0 for width in widths), widths
        table = browser.find_element(By.ID, "mean-table")
        headers = table.find_elements(By.TAG_NAME, "th")
        column = [h.text for h in headers].index("mAD")

        def values() -> list[float]:
            rows = table.find_elements(By.CSS_SELECTOR, "tbody tr")
            return [float(r.find_elements(By.TAG_NAME, "td")[column].text) for r in rows]

        assert values() == sorted(values(), reverse=True)  # as written: sorted by mAD, best first
        headers[column].click()
        assert values() == sorted(values())
        headers[column].click()
        assert values() == sorted(values(), reverse=True)
        names = [h.text for h in headers].index("model")
        headers[names].click()
        models = [
            r.find_elements(By.TAG_NAME, "td")[names].text for r in table.find_elements(By.CSS_SELECTOR, "tbody tr")
        ]
        assert models == sorted(models, key=str.lower)
        size = browser.execute_script(
            "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
        )
        shot = browser.execute_cdp_cmd(
            "Page.captureScreenshot",
            {"captureBeyondViewport": True, "clip": {"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1}},
        )
    finally:
        browser.quit()
    image = Image.open(io.BytesIO(base64.b64decode(shot["data"]))).convert("L")
    (tmp_path / "report.png").write_bytes(base64.b64decode(shot["data"]))
    assert image.size[1] > 3000  # the whole page, not the 1000 px viewport
    assert ImageStat.Stat(image).stddev[0] > 20  # not blank
