"""Wall time of a benchmark config run sequentially (`local`) vs on `pool`, and how far their metrics differ.

Each executor runs the config into a fresh folder (nothing skipped), in the order given, `--repeats` times
(round-robin), through the same code path as `anomalib-crr benchmark`. Reports the median wall time per
executor, the speed-up of each over the first, and the largest metric difference to the first executor's run.

    python benchmarks/executor_speedup.py --config configs/benchmark/smoke.yaml --workers 2 --repeats 1
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd

from anomalib_crr.benchmark import run
from anomalib_crr.benchmark.metrics import MAD, METRICS
from benchmarks.common import write_table


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main() -> None:
    """Run, time, compare, write CSV and markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/benchmark/smoke.yaml")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()

    pool = {"name": "pool", "workers": args.workers}
    executors = [
        ("local", {"name": "local"}),
        (f"pool x{args.workers}", pool),
        (f"pool x{args.workers}, shared timing", {**pool, "exclusive_timing": False}),
    ]
    walls: dict[str, list[float]] = {name: [] for name, _ in executors}
    frames: dict[str, pd.DataFrame] = {}
    scratch = Path(tempfile.mkdtemp(prefix="executor_speedup_"))
    for repeat in range(args.repeats):
        for name, options in executors:
            folder = scratch / f"{name.replace(' ', '_')}_{repeat}"
            start = time.perf_counter()
            summary = run(args.config, output=folder, executor=options, echo=lambda _: None)
            walls[name].append(time.perf_counter() - start)
            if summary.failed:
                msg = f"{name}: jobs failed: {summary.failed} (see {folder})"
                raise SystemExit(msg)
            frames[name] = pd.read_csv(folder / "results.csv").set_index(["model", "category"])
            print(f"{name} repeat {repeat}: {walls[name][-1]:.1f} s", flush=True)
    reference_name = executors[0][0]
    reference = frames[reference_name]
    rows = []
    for name, _ in executors:
        frame = frames[name].loc[reference.index]
        diff = max(float((frame[m] - reference[m]).abs().max()) for m in (*METRICS, MAD))
        wall = statistics.median(walls[name])
        rows.append(
            {
                "executor": name,
                "jobs": len({i[0] for i in reference.index}),
                "wall_s": round(wall, 1),
                "speedup_vs_local": round(statistics.median(walls[reference_name]) / wall, 3),
                "max_metric_diff_vs_local": diff,
                "repeats": args.repeats,
                "cpu": _cpu(),
                "cores": len(os.sched_getaffinity(0)),
            }
        )
    notes = (
        "`pool` includes re-timing every job's inference alone at the end (--exclusive-timing, the default);\n"
        "`shared timing` skips it (--no-exclusive-timing). Wall time = the whole invocation, start-up included."
    )
    title = f"`{args.config}`: sequential (`local`) vs `pool`, wall time of a fresh run (median of {args.repeats})"
    stem = args.output / f"executor_speedup_{Path(args.config).stem}"
    write_table(rows, stem, title, notes, float_format="")
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
