"""``anomalib-crr benchmark``: reports written as one unit, training logs per job, latency labels with their IQR.

The report checks use hand-written results (no training, about a second each). Two tiny PaDiM runs (one job
each, about 30 s on 2 CPU cores) check the logs and the latency columns end to end.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from anomalib_crr.benchmark import ConfigError, atomic, run
from anomalib_crr.benchmark.config import expand_jobs, load_config, validate_classes
from anomalib_crr.benchmark.cost import iqr, latency_measured
from anomalib_crr.benchmark.logs import tensorboard_available
from anomalib_crr.benchmark.report import result_rows, summary_rows, summary_table, write_outputs

from .helpers import PADIM_ENTRY, small_benchmark_config
from .test_benchmark_honesty import _two_model_run

JOB = "Padim__tiny__per_category__washer__seed0"


def _report_files(out: Path) -> dict[str, str]:
    """Every report file now in the run folder with its sha256 (job folders and runs.jsonl are not the report)."""
    return {p.name: atomic.sha256(p) for p in out.iterdir() if p.is_file() and p.name != "runs.jsonl"}


def _assert_one_set(out: Path) -> dict[str, Any]:
    """The folder holds exactly the files its manifest lists, each with the listed sha256, and no leftovers."""
    manifest = atomic.read_manifest(out)
    assert manifest is not None
    listed = {name: entry["sha256"] for name, entry in manifest["files"].items()}
    files = _report_files(out)
    files.pop(atomic.MANIFEST)
    assert files == listed
    assert not (out / atomic.STAGING).exists()
    assert not (out / atomic.READY).exists()
    return manifest


def _with_value(results: list[dict[str, Any]], value: float) -> list[dict[str, Any]]:
    """The same results with every metric set to ``value`` (a 'newer run' whose numbers differ)."""
    changed = json.loads(json.dumps(results))
    for result in changed:
        for metrics in result["categories"].values():
            metrics.update(dict.fromkeys(metrics, value))
    return changed


def test_every_file_carries_the_report_time_stamp(tiny_dataset: Path, tmp_path: Path) -> None:
    config, jobs, results = _two_model_run(tiny_dataset, tmp_path)
    write_outputs(config, jobs, results)
    out = config.output
    manifest = _assert_one_set(out)
    written = manifest["written"]
    assert {"results.csv", "results.json", "report.md", "report.html", "report.tex", "results_wide.csv"} <= set(
        manifest["files"]
    )
    assert any(name.startswith("grid_") for name in manifest["files"])  # pictures are part of the unit
    assert json.loads((out / "results.json").read_text())["written"] == written
    assert (out / "report.md").read_text().startswith(f"<!-- written {written};")
    assert f"<!-- written {written};" in (out / "report.html").read_text()
    assert f"at {written}" in (out / "report.tex").read_text()
    assert manifest["failed"] == {}


def test_a_failure_while_writing_leaves_the_previous_report_whole(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """report.html fails after results.csv, report.md and the pictures of the new run were written: none shows."""
    from anomalib_crr.benchmark import html_report

    config, jobs, results = _two_model_run(tiny_dataset, tmp_path)
    write_outputs(config, jobs, results)
    before = _report_files(config.output)

    def broken(*args: Any) -> None:
        del args
        raise OSError("disk full (injected)")

    monkeypatch.setattr(html_report, "write_html", broken)
    with pytest.raises(OSError, match="injected"):
        write_outputs(config, jobs, _with_value(results, 0.3))
    assert _report_files(config.output) == before  # the previous set, byte for byte
    _assert_one_set(config.output)
    assert set(pd.read_csv(config.output / "results.csv")["image_AUROC"]) == {0.8}


def test_a_stop_while_moving_files_into_place_is_completed_to_the_new_set(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed after the commit point with two files moved: the next report (or run) finishes the move."""
    config, jobs, results = _two_model_run(tiny_dataset, tmp_path)
    write_outputs(config, jobs, results)
    (config.output / "grid_gone_washer.png").write_bytes(b"a picture of a category the new run no longer has")
    real_replace, calls = os.replace, []

    def stops(source: Any, target: Any) -> None:
        if atomic.READY in f"{source} {target}":  # the commit rename and the moves out of .report-ready
            calls.append(source)
        if len(calls) == 4:  # the commit rename, then two files, then the stop
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(atomic.os, "replace", stops)
    with pytest.raises(KeyboardInterrupt):
        write_outputs(config, jobs, _with_value(results, 0.3))
    monkeypatch.setattr(atomic.os, "replace", real_replace)
    assert (config.output / atomic.READY).is_dir()  # committed, not yet all in place
    assert atomic.finish_pending(config.output)
    manifest = _assert_one_set(config.output)
    assert set(pd.read_csv(config.output / "results.csv")["image_AUROC"]) == {0.3}
    assert "0.300" in (config.output / "report.md").read_text()
    assert not (config.output / "grid_gone_washer.png").exists()  # stale pictures of an older report are removed
    assert manifest["failed"] == {}


def test_a_picture_failure_keeps_tables_that_match_results_csv_and_is_recorded(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anomalib_crr.benchmark import pictures

    config, jobs, results = _two_model_run(tiny_dataset, tmp_path)
    write_outputs(config, jobs, results)
    assert list(config.output.glob("grid_*.png"))
    real = pictures.write_pictures

    def half_then_broken(out: Path, *args: Any) -> None:
        real(out, *args)  # some pictures exist when it fails
        raise RuntimeError("injected picture failure")

    monkeypatch.setattr(pictures, "write_pictures", half_then_broken)
    write_outputs(config, jobs, _with_value(results, 0.3))
    out = config.output
    manifest = _assert_one_set(out)
    assert manifest["failed"] == {"pictures": "RuntimeError: injected picture failure"}
    report = (out / "report.md").read_text()
    assert "**Pictures failed**: RuntimeError: injected picture failure" in report
    assert not list(out.glob("grid_*"))  # neither the old pictures nor the half-drawn new ones
    assert not list(out.glob("scores_*"))
    frame = pd.read_csv(out / "results.csv")
    for model in ("Padim", "Padim2"):
        value = float(frame[(frame["model"] == model) & (frame["category"] == "mean")]["image_AUROC"].iloc[0])
        assert f"| {model} | tiny | per_category | {value:.3f} |" in report


def test_latency_label_says_what_happened_not_what_was_planned() -> None:
    planned = "exclusive: re-timed alone after the run (2 jobs shared 2 cores while training)"
    assert latency_measured({"timing": "exclusive: one job at a time on this machine"}) == "exclusive"
    assert latency_measured({}) == "exclusive"  # results written before executors existed ran alone
    assert latency_measured({"timing": "exclusive GPU: each job owns its GPU(s); CPU shared"}) == "exclusive"
    assert latency_measured({"timing": planned}) == "shared"  # stopped before re-timing
    assert latency_measured({"timing": planned, "retimed_threads": 2}) == "exclusive"
    assert latency_measured({"timing": "shared: measured while up to 2 jobs shared 2 cores"}) == "shared"
    assert latency_measured({"timing": "shared: re-timing failed", "latency_measured": "retime-failed"}) == (
        "retime-failed"
    )
    assert iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2.0)
    assert iqr([7.0]) == 0.0


def test_summary_shows_median_iqr_and_label_of_every_latency(tmp_path: Path) -> None:
    from .test_benchmark_honesty import _result

    results = [_result(tmp_path / "a", 0, 0.7), _result(tmp_path / "b", 1, 0.9)]
    results[0]["cost"].update(latency_ms=10.0, latency_iqr_ms=1.0, latency_measured="exclusive")
    results[1]["cost"].update(latency_ms=20.0, latency_iqr_ms=3.0, latency_measured="retime-failed")
    rows = result_rows(results)
    assert {r["latency_measured"] for r in rows if r["category"] == "washer"} == {"exclusive", "retime-failed"}
    table = "\n".join(summary_table(summary_rows(rows)))
    assert "| 15.0 (IQR 2.000, exclusive+retime-failed) |" in table


def test_logger_key_is_checked_up_front_and_not_part_of_the_spec_hash(tiny_dataset: Path) -> None:
    base = small_benchmark_config(tiny_dataset, [PADIM_ENTRY])
    default = load_config(base)
    assert default.logger == {"kind": "auto"}
    csv_logger = {"class_path": "CSVLogger", "init_args": {"flush_logs_every_n_steps": 5}}
    custom = load_config({**base, "logger": csv_logger})
    validate_classes(custom)  # a short name is found in lightning.pytorch.loggers
    assert expand_jobs(custom)[0].spec_hash == expand_jobs(default)[0].spec_hash  # logs change no number
    assert load_config({**base, "logger": False}).logger == {"kind": "none"}
    with pytest.raises(ConfigError, match="logger"):
        load_config({**base, "logger": "stdout"})
    with pytest.raises(ConfigError, match="no argument"):
        validate_classes(load_config({**base, "logger": {"class_path": "CSVLogger", "init_args": {"colour": 1}}}))
    if not tensorboard_available():
        with pytest.raises(ConfigError, match="pip install tensorboard"):
            load_config({**base, "logger": "tensorboard"})


@pytest.fixture(scope="module")
def logged_run(tiny_dataset: Path, module_tmp_dir: Callable[[str], Path]) -> Path:
    """One PaDiM job with the default logger."""
    output = module_tmp_dir("logged") / "run"
    run(small_benchmark_config(tiny_dataset, [PADIM_ENTRY]), output=output, echo=lambda line: None)
    return output


def test_a_job_writes_training_logs_in_its_folder(logged_run: Path) -> None:
    logs = logged_run / "jobs" / JOB / "logs"
    if tensorboard_available():
        assert list(logs.glob("events.out.tfevents.*"))
    else:  # CSV, as the run log says
        frame = pd.read_csv(logs / "metrics.csv")
        assert "image_AUROC" in frame.columns
    result = json.loads((logged_run / "jobs" / JOB / "result.json").read_text())
    assert result["status"] == "ok"


def test_every_latency_row_has_its_label_and_iqr_and_the_report_shows_them(logged_run: Path) -> None:
    frame = pd.read_csv(logged_run / "results.csv")
    assert set(frame["latency_measured"]) == {"exclusive"}  # local: one job at a time
    assert all(math.isfinite(v) and v >= 0 for v in frame["latency_iqr_ms"])
    report = (logged_run / "report.md").read_text()
    assert "(IQR " in report.split("## Mean over categories")[1].split("\n\n")[1]
    assert "latency measured: exclusive, median" in report


def test_logger_none_writes_no_logs(tiny_dataset: Path, tmp_path: Path) -> None:
    config = {**small_benchmark_config(tiny_dataset, [PADIM_ENTRY]), "logger": "none"}
    summary = run(config, output=tmp_path / "run", echo=lambda line: None)
    assert not summary.failed
    assert (tmp_path / "run" / "jobs" / JOB / "result.json").is_file()
    assert not (tmp_path / "run" / "jobs" / JOB / "logs").exists()
