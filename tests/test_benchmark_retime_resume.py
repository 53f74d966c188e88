"""Latency you can trust across Ctrl-C and resume, and a re-timing that checks the machine was quiet.

A ``pool`` run on CPU times each job while other jobs share the cores and re-times it alone after the last job.
These tests check that a run stopped before that re-timing does not leave shared figures behind for good (the
next run re-times them, whichever invocation ran the job) and that "alone" is checked against the machine's load
instead of assumed.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from anomalib_crr.benchmark import run
from anomalib_crr.benchmark.cost import latency_measured
from anomalib_crr.benchmark.retime import BUSY_LABEL, machine_busy, retime, time_when_quiet

from .helpers import PADIM_ENTRY, as_in_a_terminal, small_benchmark_config, wait_for

QUIET_LABELS = {"exclusive", BUSY_LABEL}  # re-timed alone; the second when the machine's load showed other work


def _ok_results(output: Path) -> list[Path]:
    found = []
    for path in output.glob("jobs/*/result.json"):
        try:
            if json.loads(path.read_text())["status"] == "ok":
                found.append(path.parent)
        except (json.JSONDecodeError, KeyError):  # written atomically, but be safe against a partial read
            continue
    return found


def test_a_pool_run_stopped_before_retiming_is_retimed_on_resume(tiny_dataset: Path, tmp_path: Path) -> None:
    """Ctrl-C once a ``pool`` job finished, then a resume: every finished job is re-timed, none keeps its model.

    The first run is a real one, stopped with SIGINT (what Ctrl-C sends) as soon as a first job finished, while a
    third job (two workers) is starting or queued, so the runner never reaches its re-timing: the finished jobs
    keep ``timing_model.pt`` and figures measured on shared cores, labelled ``shared``. The resume skips them as
    done and runs the rest; before, only the jobs it ran were re-timed, so the skipped ones stayed shared.
    """
    models = [PADIM_ENTRY, {**PADIM_ENTRY, "name": "PadimB"}, {**PADIM_ENTRY, "name": "PadimC"}]
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(small_benchmark_config(tiny_dataset, models)))
    output = tmp_path / "run"
    command = [sys.executable, "-m", "anomalib_crr", "benchmark", "--config", str(config), "--output", str(output)]
    runner = subprocess.Popen(
        [*command, "--executor", "pool", "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ},
        preexec_fn=as_in_a_terminal,  # noqa: PLW1509 - only restores SIGINT's default before exec
    )
    try:
        wait_for(lambda: _ok_results(output), 300, "a first finished pool job")
        runner.send_signal(signal.SIGINT)
        out, _ = runner.communicate(timeout=120)
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate()
    assert runner.returncode == 130, out
    assert "re-timing the inference" not in out, "the interrupted run re-timed; the test proves nothing"
    done = sorted(d.name for d in _ok_results(output))
    assert 1 <= len(done) < 3, f"Ctrl-C came after every job had finished; the test proves nothing: {done}"
    shared = {}
    for name in done:
        job_dir = output / "jobs" / name
        assert (job_dir / "timing_model.pt").is_file(), "an interrupted run must leave the model for the next run"
        shared[name] = json.loads((job_dir / "result.json").read_text())["cost"]
        assert shared[name]["latency_measured"] == "shared"  # an interrupted run never calls pool figures exclusive
    assert set(pd.read_csv(output / "results.csv")["latency_measured"]) == {"shared"}
    # A job of an earlier config, killed after keeping its model but before writing its result.
    orphan = output / "jobs" / "Gone__tiny__per_category__washer__seed0"
    orphan.mkdir()
    (orphan / "timing_model.pt").write_bytes(b"left by a killed job")

    lines: list[str] = []
    summary = run(config, output=output, executor={"name": "pool", "workers": 2}, echo=lines.append)
    assert sorted(summary.skipped) == done
    assert not summary.failed
    assert not list(output.glob("jobs/*/timing_model.pt")), "a timing model was left over after the resume"
    for name, before in shared.items():
        figures = json.loads((output / "jobs" / name / "result.json").read_text())["cost"]
        assert figures["latency_measured"] in QUIET_LABELS
        assert figures["retimed_threads"] == 2  # the config's threads, as the job alone would have
        assert figures["latency_ms_shared"] == before["latency_ms"]  # the shared figure is kept beside the new one
        assert 1 <= figures["retime_tries"] <= 2
    frame = pd.read_csv(output / "results.csv")
    assert set(frame["model"]) == {"Padim", "PadimB", "PadimC"}
    assert set(frame["latency_measured"]) <= QUIET_LABELS, frame["latency_measured"].tolist()
    assert all(math.isfinite(v) and v >= 0 for v in [*frame["load_before"], *frame["load_after"]])
    report = (output / "report.md").read_text()
    assert "`retime-busy`" in report  # the legend explains every label
    counts = frame[frame["category"] != "mean"]["latency_measured"].value_counts()
    summary = ", ".join(f"{label} {count}" for label, count in sorted(counts.items()))
    assert f"- How the latencies were measured (jobs): {summary}" in report  # what happened, not only what was meant


# --- the load check, with injected load readings -----------------------------------------------------------------


def _readings(*values: float) -> Callable[[], float]:
    """A load reader that returns ``values`` in order (the machine's load at each reading)."""
    feed: Iterator[float] = iter(values)
    return lambda: next(feed)


def test_busy_means_load_beyond_every_core_or_the_timing_threads() -> None:
    # 2 cores, 2 threads: the pool's lagging load (up to 2) and the timing's own threads are this run alone.
    assert not machine_busy(2.0, 2.4, threads=2, cpu_count=2)
    assert machine_busy(2.6, 1.0, threads=2, cpu_count=2)  # before the timing
    assert machine_busy(0.1, 3.0, threads=2, cpu_count=2)  # after it
    # 16 cores, 2 threads: another 10 cores' work leaves the timing's cores free; 17 does not.
    assert not machine_busy(10.0, 12.0, threads=2, cpu_count=16)
    assert machine_busy(17.0, 12.0, threads=2, cpu_count=16)
    # More threads than cores: the timing alone reaches its threads.
    assert not machine_busy(0.0, 8.0, threads=8, cpu_count=4)
    # No load average on this platform (NaN) proves nothing either way.
    assert not machine_busy(math.nan, math.nan, threads=2, cpu_count=2)


def test_a_busy_timing_is_repeated_and_a_quiet_one_is_not() -> None:
    timings: list[int] = []

    def measure() -> int:
        timings.append(len(timings) + 1)
        return timings[-1]

    figure, check = time_when_quiet(measure, threads=2, cpu_count=2, read_load=_readings(0.3, 1.9))
    assert (figure, check.tries, check.busy) == (1, 1, False)
    assert (check.load_before, check.load_after) == (0.3, 1.9)

    timings.clear()
    figure, check = time_when_quiet(measure, threads=2, cpu_count=2, read_load=_readings(3.5, 3.1, 0.4, 2.2))
    assert (figure, check.tries, check.busy) == (2, 2, False)  # the quiet second timing is kept
    assert (check.load_before, check.load_after) == (0.4, 2.2)

    timings.clear()
    figure, check = time_when_quiet(measure, threads=2, cpu_count=2, read_load=_readings(4.0, 3.0, 2.0, 2.9))
    assert (figure, check.tries, check.busy) == (2, 2, True)  # busy twice: the least busy timing is kept
    assert (check.load_before, check.load_after) == (2.0, 2.9)


def _kept_job(job_dir: Path) -> None:
    """A finished job folder as a ``pool`` job on CPU leaves it: job.json, result.json and timing_model.pt."""
    job_dir.mkdir()
    job = {"threads": 1, "precision": "32-true", "timing": {"runs": 3, "warmup": 1}}
    (job_dir / "job.json").write_text(json.dumps(job))
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    kept = {"model": model, "single": torch.rand(1, 3, 16, 16), "eval_batch": torch.rand(4, 3, 16, 16)}
    torch.save(kept, job_dir / "timing_model.pt")
    result = {
        "status": "ok",
        "job_id": job_dir.name,
        "model": "Tiny",
        "dataset": "tiny",
        "mode": "per_category",
        "seed": 0,
        "categories": {"washer": {}},
        "settings": {},
        "notes": [],
        "cost": {
            "latency_ms": 5.0,
            "throughput_img_s": 100.0,
            "latency_iqr_ms": 1.0,
            "timing": "exclusive: re-timed alone after the run (2 jobs shared 2 cores while training)",
            "latency_measured": "shared",
        },
    }
    (job_dir / "result.json").write_text(json.dumps(result))


@pytest.mark.parametrize(("load", "label", "tries"), [(0.2, "exclusive", 1), (9.0, BUSY_LABEL, 2)])
def test_retime_labels_a_busy_machine_and_records_its_load(tmp_path: Path, load: float, label: str, tries: int) -> None:
    """The real re-timing of a kept model, with the load reader injected: quiet is exclusive, busy is not."""
    job_dir = tmp_path / "job"
    _kept_job(job_dir)
    retime(job_dir, read_load=lambda: load, cpu_count=2)
    result = json.loads((job_dir / "result.json").read_text())
    figures = result["cost"]
    assert not (job_dir / "timing_model.pt").exists()
    assert figures["latency_measured"] == label
    assert latency_measured(figures) == label  # the label stands even though the job was re-timed
    assert (figures["load_before"], figures["load_after"], figures["retime_tries"]) == (load, load, tries)
    assert figures["latency_ms_shared"] == 5.0
    assert any(BUSY_LABEL in note for note in result["notes"]) == (label == BUSY_LABEL)
