"""Small benchmark fixes: no runpy warning at the top of job and re-timing logs, readable latency ticks.

The two subprocess checks each start one Python that imports the package and fails at once (about 5-10 s each
on 2 CPU cores); the plot check is in-process.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from anomalib_crr.benchmark.executors.base import job_command
from anomalib_crr.benchmark.plots import latency_figure, log_ticks
from anomalib_crr.benchmark.retime import retime_alone

RUNPY_WARNING = "found in sys.modules"


def test_job_process_starts_without_the_runpy_warning(tmp_path: Path) -> None:
    """The command every executor launches must not re-execute a module the package already imported."""
    command = job_command(tmp_path / "missing" / "job.json")
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0
    assert "FileNotFoundError" in done.stderr  # it did reach the job's main
    assert RUNPY_WARNING not in done.stderr


def test_retime_process_starts_without_the_runpy_warning(tmp_path: Path) -> None:
    """The re-timing process logs to ``retime_log.txt``; a failed re-timing is still marked, without the warning."""
    job_dir = tmp_path / "jobs" / "job-a"
    job_dir.mkdir(parents=True)
    (job_dir / "timing_model.pt").write_bytes(b"not a model")
    (job_dir / "result.json").write_text(json.dumps({"status": "ok", "cost": {}}))
    retime_alone([job_dir], offline=True, echo=lambda _: None)
    log = (tmp_path / "retime_log.txt").read_text()
    assert "re-timing failed" in log  # the process ran
    assert RUNPY_WARNING not in log
    assert json.loads((job_dir / "result.json").read_text())["cost"]["latency_measured"] == "retime-failed"


def _labels(rows: list[dict]) -> list[str]:
    fig = latency_figure(rows)
    fig.canvas.draw()
    ax = fig.axes[0]
    low, high = ax.get_xlim()
    labelled = [
        t.label1.get_text()
        for t in ax.xaxis.get_major_ticks()
        if t.label1.get_visible() and t.label1.get_text() and low <= t.get_loc() <= high
    ]
    import matplotlib.pyplot as plt

    plt.close(fig)
    return labelled


def _row(model: str, latency: float, mad: float) -> dict:
    return {
        "category": "mean",
        "dataset": "tire",
        "mode": "per_category",
        "model": model,
        "latency_ms": latency,
        "mAD": mad,
    }


def test_log_latency_axis_has_at_least_three_labelled_ticks() -> None:
    """Wide (9 and 400 ms) and narrow (8.4 and 10.5 ms) latency ranges both get >= 3 numbers on the axis."""
    wide = _labels([_row("PaDiM", 9.0, 0.8), _row("RD", 400.0, 0.9)])
    assert len(wide) >= 3, wide
    narrow = _labels([_row("PaDiM", 8.4, 0.8), _row("RD", 10.5, 0.9)])
    assert len(narrow) >= 3, narrow
    assert all(float(label) > 0 for label in narrow)


def test_log_ticks_stay_inside_the_range_and_prefer_decades() -> None:
    assert log_ticks(1.0, 1000.0) == [1.0, 10.0, 100.0, 1000.0]
    ticks = log_ticks(4.0, 23.0)
    assert len(ticks) >= 3
    assert all(4.0 <= t <= 23.0 for t in ticks)
