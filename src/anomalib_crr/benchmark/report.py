# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Tables from job results: ``results.csv``, ``results.json`` and ``report.md`` (plots: :mod:`.plots`).

Over 400 lines on purpose: the markdown, HTML and LaTeX renderings of the same tables, kept together so they cannot
disagree.

Rows are one per job and category, plus one ``mean`` row per (model, dataset, mode, seed): the mean over
categories of each metric (the multi-class convention; mAD of the mean row is the mean of the seven means).
For per-category jobs each category has its own cost; the mean row's cost columns are the mean over those
jobs. ``results.csv`` keeps one row per seed; the report's tables average over seeds and give every metric as
mean ± standard deviation over seeds with n, the seed count (see :mod:`.stats`), so seed noise is never
hidden in a single number. Each row also records how many test images its metrics are on, and how its latency
was measured with the spread of the timed passes (``latency_measured``, ``latency_iqr_ms``). Numbers are
written from the result files only, and every file of a report is written as one unit (see :mod:`.atomic`).
"""

from __future__ import annotations

import datetime as dt
import json
import math
import shutil
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .atomic import MANIFEST
from .config import BenchmarkConfig, JobSpec
from .cost import latency_measured
from .defects import DEFECTS_CSV, defect_type_lines, defect_type_rows, write_defect_csv
from .metrics import MAD, METRICS, mean_rows
from .paper import TEX, TEX_HEADER, WIDE_CSV, write_paper_outputs
from .stats import BOOTSTRAP_SAMPLES, bootstrap_image_auroc, format_mean_std, seed_stats

COST_COLUMNS = (
    "params_M",
    "trainable_params_M",
    "macs_G",
    "fit_s",
    "optimizer_steps",
    "test_s",
    "aupro_compute_s",
    "latency_ms",
    "throughput_img_s",
    "peak_mem_train_mb",
    "peak_mem_infer_mb",
)
# How each latency was measured (``exclusive``, ``shared``, ``retime-busy``, ``retime-failed``; see
# :func:`.cost.latency_measured`), its spread (the interquartile range of the timed passes whose median is
# ``latency_ms``) and the machine's 1-minute load before and after a re-timing (empty when not re-timed).
LATENCY_COLUMNS = ("latency_iqr_ms", "latency_measured", "load_before", "load_after")
SETTING_COLUMNS = ("weights", "device", "precision", "threads", "torch", "anomalib", "input_size", "executor", "timing")
# Results written before the executors existed ran one job at a time.
DEFAULT_TIMING = "exclusive: one job at a time on this machine"
KEY_COLUMNS = ("model", "dataset", "mode", "seed", "category")
# How many test images a row's metrics are on, how many validation took from the test set, and the split.
TEST_SET_COLUMNS = ("test_images", "test_images_moved", "val_split_mode")
MEAN = "mean"


def result_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per finished job and category, then one mean row per (model, dataset, mode, seed)."""
    rows: list[dict[str, Any]] = []
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        if result.get("status") != "ok":
            continue
        settings = result["settings"]
        for category, metrics in result["categories"].items():
            row = {
                "model": result["model"],
                "dataset": result["dataset"],
                "mode": result["mode"],
                "seed": result["seed"],
                "category": category,
                **{name: metrics[name] for name in (*METRICS, MAD)},
                **{name: result["cost"][name] for name in COST_COLUMNS},
                **{name: settings.get(name) for name in SETTING_COLUMNS},
                "job_id": result["job_id"],
            }
            row["input_size"] = "x".join(str(s) for s in settings.get("input_size") or [])
            row["executor"] = (result.get("execution") or {}).get("executor", "local")
            row["timing"] = result["cost"].get("timing", DEFAULT_TIMING)
            row.update(_latency_cells(result["cost"]))
            row.update(_test_set_cells(result, category))
            rows.append(row)
            groups[(result["model"], result["dataset"], result["mode"], result["seed"])].append(row)
    for (model, dataset, mode, seed), members in groups.items():
        mean = mean_rows(members)
        costs = {name: _mean([m[name] for m in members]) for name in COST_COLUMNS}
        first = members[0]
        rows.append(
            {
                "model": model,
                "dataset": dataset,
                "mode": mode,
                "seed": seed,
                "category": MEAN,
                **mean,
                **costs,
                "latency_iqr_ms": _mean([m["latency_iqr_ms"] for m in members]),
                "latency_measured": _labels(m["latency_measured"] for m in members),
                "load_before": _max_or_none([m["load_before"] for m in members]),
                "load_after": _max_or_none([m["load_after"] for m in members]),
                **{name: first[name] for name in SETTING_COLUMNS},
                "job_id": ";".join(dict.fromkeys(m["job_id"] for m in members)),
                "test_images": _sum_or_none([m["test_images"] for m in members]),
                "test_images_moved": _sum_or_none([m["test_images_moved"] for m in members]),
                "val_split_mode": first["val_split_mode"],
            }
        )
    return rows


def _latency_cells(cost: dict[str, Any]) -> dict[str, Any]:
    """How a job's latency was measured, its IQR and the machine's load around its re-timing.

    The IQR is NaN for results written before it was recorded; the loads are ``None`` for a job not re-timed.
    """
    iqr = cost.get("latency_iqr_ms")
    return {
        "latency_iqr_ms": math.nan if iqr is None else float(iqr),
        "latency_measured": cost.get("latency_measured") or latency_measured(cost),
        "load_before": cost.get("load_before"),
        "load_after": cost.get("load_after"),
    }


def _max_or_none(values: Sequence[Any]) -> float | None:
    """The highest load of a mean row's jobs: the busiest re-timing is the one that limits trust in the row."""
    numbers = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return max(numbers) if numbers else None


def _row_label(row: dict[str, Any]) -> str:
    """A row's latency label; one from before the column existed is derived from its ``timing`` note."""
    return str(row.get("latency_measured") or latency_measured({"timing": row.get("timing")}))


def _labels(values: Any) -> str:
    """Distinct labels in first-seen order, joined with ``+`` (``shared+exclusive`` when jobs differ)."""
    return "+".join(dict.fromkeys(str(v) for v in values))


def _test_set_cells(result: dict[str, Any], category: str) -> dict[str, Any]:
    """The test-set columns of one job's category (empty for results written before they were recorded)."""
    test_set = result.get("test_set") or {}
    images = (test_set.get("images") or {}).get(category)
    return {
        "test_images": images,
        "test_images_moved": (test_set.get("moved_to_val") or {}).get(category, 0) if test_set else None,
        "val_split_mode": test_set.get("val_split_mode"),
    }


def _sum_or_none(values: Sequence[Any]) -> int | None:
    return None if any(v is None for v in values) else int(sum(values))


def _mean(values: Sequence[Any]) -> float:
    numbers = [float(v) for v in values if v is not None]
    return sum(numbers) / len(numbers) if numbers else math.nan


def summary_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean rows averaged over seeds, one per (model, dataset, mode), sorted by mAD (best first)."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        if row["category"] == MEAN:
            groups[(row["model"], row["dataset"], row["mode"])].append(row)
    out = []
    for (model, dataset, mode), members in groups.items():
        entry = {"model": model, "dataset": dataset, "mode": mode, "seeds": len(members)}
        for name in (*METRICS, MAD):
            entry[name], entry[f"{name}_std"], _ = seed_stats([m[name] for m in members])
        for name in COST_COLUMNS:
            entry[name] = _mean([m[name] for m in members])
        # .get: rows of a results.json written before the latency columns existed (see publish.py) have neither.
        entry["latency_iqr_ms"] = _mean([m.get("latency_iqr_ms") for m in members])
        entry["latency_measured"] = _labels(label for m in members for label in _row_label(m).split("+"))
        entry.update({name: members[0][name] for name in SETTING_COLUMNS})
        out.append(entry)
    return sorted(out, key=lambda r: (-_sortable(r[MAD]), r["model"]))


def _sortable(value: float) -> float:
    return -1.0 if value is None or math.isnan(value) else value


def _fmt(value: Any, digits: int = 3) -> str:  # noqa: PLR0911
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.{digits}f}"
    return str(value)


def _table(header: Sequence[str], body: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in body]
    return lines


SUMMARY_HEADER = {
    **TEX_HEADER,
    "params_M": "params M",
    "trainable_params_M": "trainable M",
    "macs_G": "GMACs/img",
    "latency_ms": "latency ms (b=1; IQR, how measured)",
    "throughput_img_s": "img/s (eval batch)",
    "peak_mem_train_mb": "peak mem train MiB",
    "peak_mem_infer_mb": "peak mem infer MiB",
    "fit_s": "fit s",
    "optimizer_steps": "steps",
}


def _int_if(key: str, value: Any) -> Any:
    """Step counts print as integers."""
    if key == "optimizer_steps" and isinstance(value, float) and not math.isnan(value):
        return round(value)
    return value


def _cell(row: dict[str, Any], key: str) -> Any:
    """A metric as ``mean ± std`` over seeds (the mean alone for one seed); a cost column as its mean."""
    if f"{key}_std" in row:
        return format_mean_std(row[key], row[f"{key}_std"])
    if key == "latency_ms":
        return latency_cell(row)
    return _int_if(key, row[key])


def latency_cell(row: dict[str, Any]) -> str:
    """The median latency with its spread, e.g. ``9.30 (IQR 0.41, exclusive)``.

    Why: a median alone hides a machine that was busy while timing; the interquartile range of the timed passes
    and how they were measured (``exclusive``, ``shared``, ``retime-busy``, ``retime-failed``) say how far to
    trust it. The text starts with the median, so the HTML table still sorts the column by it.
    """
    median = _fmt(row.get("latency_ms"))
    iqr = row.get("latency_iqr_ms")
    spread = "IQR n/a" if iqr is None or math.isnan(iqr) else f"IQR {_fmt(float(iqr))}"
    return f"{median} ({spread}, {row.get('latency_measured') or 'unknown'})"


def summary_table(summary: Sequence[dict[str, Any]]) -> list[str]:
    """The mean-over-categories table (markdown lines), sorted by mAD; n is the number of seeds."""
    keys = list(SUMMARY_HEADER)
    at = keys.index(MAD) + 1
    header = ["model", "dataset", "mode", *(SUMMARY_HEADER[k] for k in keys[:at]), "n"]
    header += [*(SUMMARY_HEADER[k] for k in keys[at:]), "weights"]
    body = [
        [
            *(r["model"], r["dataset"], r["mode"]),
            *(_cell(r, k) for k in keys[:at]),
            r["seeds"],
            *(_cell(r, k) for k in keys[at:]),
            r["weights"],
        ]
        for r in summary
    ]
    return _table(header, body)


def per_category_tables(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One table per dataset and metric: (model, mode) rows × category columns, mean ± std over seeds, with n."""
    lines: list[str] = []
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    for dataset in datasets:
        subset = [r for r in rows if r["dataset"] == dataset]
        categories = [c for c in dict.fromkeys(r["category"] for r in subset) if c != MEAN] + [MEAN]
        settings = list(dict.fromkeys((r["model"], r["mode"]) for r in subset))
        for metric in (*METRICS, MAD):
            lines += ["", f"#### {dataset}: {metric}", ""]
            body = []
            for model, mode in settings:
                values = []
                mine = [r for r in subset if r["model"] == model and r["mode"] == mode]
                for category in categories:
                    cell = [r[metric] for r in mine if r["category"] == category]
                    values.append(format_mean_std(*seed_stats(cell)[:2]) if cell else None)
                seeds = len({r["seed"] for r in mine if r["category"] == MEAN})
                body.append([model, mode, seeds, *values])
            lines += _table(["model", "mode", "n", *categories], body)
    return lines


def evaluated_image_sets(results: Sequence[dict[str, Any]]) -> dict[tuple[str, str], frozenset[str]]:
    """``{(job id, category): the test image paths its metrics are on}``, from each job's ``scores.csv``."""
    import pandas as pd

    from .samples import SCORES

    sets: dict[tuple[str, str], frozenset[str]] = {}
    for result in results:
        path = Path(str(result.get("log", ""))).parent / SCORES
        if result.get("status") == "ok" and path.is_file():
            frame = pd.read_csv(path)
            for category, part in frame.groupby(frame["category"].astype(str)):
                sets[(result["job_id"], str(category))] = frozenset(part["image_path"].astype(str))
    return sets


def evaluated_images_lines(
    rows: Sequence[dict[str, Any]], image_sets: dict[tuple[str, str], frozenset[str]] | None = None
) -> list[str]:
    """How many test images each (dataset, category) was evaluated on, and every job whose test set was cut.

    Why: a mean over jobs whose test sets differ is not one experiment; a reader must see it. With
    ``image_sets`` (see :func:`evaluated_image_sets`) equal counts of different images are told apart too.
    """
    lines: list[str] = []
    image_sets = image_sets or {}
    per_category = [r for r in rows if r["category"] != MEAN]
    for dataset, category in dict.fromkeys((r["dataset"], r["category"]) for r in per_category):
        members = [r for r in per_category if r["dataset"] == dataset and r["category"] == category]
        counts = sorted({r.get("test_images") for r in members}, key=str)
        text = ", ".join("not recorded" if c is None else str(c) for c in counts)
        known = {image_sets[key] for r in members if (key := (r["job_id"], category)) in image_sets}
        if len(counts) > 1 or len(known) > 1:
            same = "DIFFERENT test images between jobs (their numbers are not one experiment)"
        else:
            same = "the same test images in every job" if known else "in every job"
        lines.append(f"- {dataset} / {category}: {text} test images, {same}")
        for row in members:
            if row.get("test_images_moved"):
                lines.append(
                    f"- WARNING: {row['job_id']}: val_split_mode={row['val_split_mode']} moved "
                    f"{row['test_images_moved']} of {row['test_images_moved'] + row['test_images']} test images "
                    f"to validation; its metrics are on the other {row['test_images']}"
                )
    return lines


def bootstrap_lines(results: Sequence[dict[str, Any]]) -> list[str]:
    """A table of image AUROC with its 95 % bootstrap interval over test images and seeds (from scores.csv)."""
    import numpy as np
    import pandas as pd

    from .samples import SCORES

    groups: dict[tuple[str, str, str], dict[Any, dict[str, tuple[Any, Any]]]] = defaultdict(dict)
    for result in results:
        path = Path(str(result.get("log", ""))).parent / SCORES
        if result.get("status") != "ok" or not path.is_file():
            continue
        frame = pd.read_csv(path)
        per_category = {
            str(c): (part["pred_score"].to_numpy(float), part["gt_label"].to_numpy(int))
            for c, part in frame.groupby(frame["category"].astype(str))
            if np.isfinite(part["pred_score"].to_numpy(float)).all()
        }
        groups[(result["model"], result["dataset"], result["mode"])].setdefault(result["seed"], {}).update(per_category)
    body = []
    for (model, dataset, mode), per_seed in groups.items():
        estimate, low, high = bootstrap_image_auroc(per_seed)
        interval = "n/a" if math.isnan(low) else f"[{low:.3f}, {high:.3f}]"
        body.append([model, dataset, mode, len(per_seed), estimate, interval])
    if not body:
        return []
    return [
        "",
        "## Image AUROC: 95 % bootstrap interval",
        "",
        f"Percentile interval of {BOOTSTRAP_SAMPLES} bootstrap samples that redraw the seeds and, within each seed "
        "and category, the good and the defective test images (from each job's `scores.csv`); the statistic is "
        "the image AUROC averaged over categories and seeds, as in the mean table.",
        "",
        *_table(["model", "dataset", "mode", "n", "I-AUROC", "95 % interval"], body),
    ]


def write_outputs(config: BenchmarkConfig, jobs: Sequence[JobSpec], results: Sequence[dict[str, Any]]) -> list[str]:
    """Write results.csv/.json, report.md/.html, the paper outputs and the pictures as one unit; returns the lines.

    Why one unit: a reader of the run folder must never find this run's ``results.csv`` next to the last run's
    ``report.md``. Every file is written into a staging folder first and moved into the run folder only once all
    exist (see :mod:`.atomic`); an error before that leaves the previous report as it was. Pictures are the one
    optional part: if drawing them fails, the report says so in their section, ``manifest.json`` records the
    error under ``failed``, and the previous pictures are removed rather than left beside newer tables.
    """
    from . import atomic

    out = config.output
    stage = atomic.start(out)
    try:
        written = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        lines, failed = _write_all(config, jobs, results, stage, written)
        atomic.commit(out, written, failed)
    except BaseException:
        atomic.discard(out)
        raise
    return lines


def _write_all(
    config: BenchmarkConfig, jobs: Sequence[JobSpec], results: Sequence[dict[str, Any]], stage: Path, written: str
) -> tuple[list[str], dict[str, str]]:
    """Write every report file into ``stage``; returns the markdown lines and the sections that failed."""
    import pandas as pd

    from .html_report import write_html
    from .plots import write_plots

    out = config.output
    rows = result_rows(results)
    columns = [
        *KEY_COLUMNS,
        *METRICS,
        MAD,
        *TEST_SET_COLUMNS,
        *COST_COLUMNS,
        *LATENCY_COLUMNS,
        *SETTING_COLUMNS,
        "job_id",
    ]
    pd.DataFrame(rows, columns=columns).to_csv(stage / "results.csv", index=False)
    failed = [r for r in results if r.get("status") != "ok"]
    skipped = [{"model": m.name, "reason": m.skip} for m in config.models if m.skip]
    missing = sorted({j.job_id for j in jobs} - {r["job_id"] for r in results})
    write_defect_csv(defect_type_rows(results, out), stage / DEFECTS_CSV)
    write_paper_outputs(summary_rows(rows), rows, stage, config.name, written)
    payload = {
        "config": config.name,
        "written": written,
        "rows": rows,
        "jobs": list(results),
        "failed": failed,
        "skipped_models": skipped,
        "not_run": missing,
        "runs": _runs(out),
    }
    (stage / "results.json").write_text(json.dumps(payload, indent=2, default=str))
    plots = write_plots(rows, stage)
    pictures, picture_error = _staged_pictures(stage, jobs, results)
    lines = report_lines(config, rows, results, skipped, missing, plots, written)
    lines = _with_pictures(lines, pictures, picture_error)
    stamp = f"written {written}; files of this report: {MANIFEST}"
    (stage / "report.md").write_text(f"<!-- {stamp} -->\n" + "\n".join(lines) + "\n")
    write_html(lines, stage, f"Benchmark {config.name}", stamp)
    return lines, ({"pictures": picture_error} if picture_error else {})


def _staged_pictures(
    stage: Path, jobs: Sequence[JobSpec], results: Sequence[dict[str, Any]]
) -> tuple[dict[tuple[str, str], dict[str, Any]], str | None]:
    """Draw the pictures in a folder of their own, then add them to ``stage``; on failure, none and the error.

    Why a folder of their own: a failure after some grids were drawn must not leave those few in the report.
    """
    from . import pictures as drawing

    folder = stage / "pictures.tmp"
    folder.mkdir()
    try:
        pictures = drawing.write_pictures(folder, jobs, results)
    except Exception as exc:  # the pictures are an extra: a failure must not cost the tables
        shutil.rmtree(folder, ignore_errors=True)
        return {}, f"{type(exc).__name__}: {exc}"
    for path in folder.iterdir():
        path.replace(stage / path.name)
    folder.rmdir()
    moved = {
        key: {
            "grids": [stage / g.name for g in entry["grids"]],
            "scores": None if entry["scores"] is None else stage / entry["scores"].name,
        }
        for key, entry in pictures.items()
    }
    return moved, None


def _with_pictures(
    lines: list[str], pictures: dict[tuple[str, str], dict[str, Any]], error: str | None = None
) -> list[str]:
    """Insert the comparison grids and score distributions (or why they failed) before the per-category tables."""
    if not pictures and error is None:
        return lines
    section = [
        "## Anomaly maps and score distributions",
        "",
        "Maps are anomalib's normalised anomaly maps on one colour scale, 0 to 1, where 0.5 is each model's "
        "threshold (marked on the colour bar). A model whose post-processor does not normalise is drawn min-max "
        "over its column, as its header says. Each map is drawn on the image as that model saw it (after its "
        "resize or crop). The ground-truth column outlines the defect on the stored image. Rows are the same "
        "images for every model: up to 6 defective ones spread over the defect types, and 2 good ones, drawn "
        "deterministically from the test set. Each column shows one seed of its model, named in its header "
        "with that seed's metrics; the tables above give the mean ± std over seeds.",
        "",
    ]
    if error is not None:
        section += [f"**Pictures failed**: {error}. The tables and results.csv are complete without them.", ""]
    for (dataset, category), entry in pictures.items():
        section += [f"### {dataset} / {category}", ""]
        for grid in entry["grids"]:
            section += [f"![grid {dataset} {category}]({grid.name})", ""]
        if entry["grids"]:
            section += [
                f"All pages as PDF: [{entry['grids'][0].with_suffix('.pdf').name}]"
                f"({entry['grids'][0].with_suffix('.pdf').name})",
                "",
            ]
        if entry["scores"] is not None:
            section += [f"![scores {dataset} {category}]({entry['scores'].name})", ""]
    at = lines.index("## Per category") if "## Per category" in lines else len(lines)
    return [*lines[:at], *section, *lines[at:]]


def _where(result: dict[str, Any]) -> str:
    """Where the job ran and how its latency was timed."""
    execution = result.get("execution") or {}
    devices = execution.get("cuda_visible_devices")
    cells = _latency_cells(result["cost"])
    return (
        f"- ran on '{execution.get('executor', 'local')}' at {execution.get('host', 'this machine')}"
        f"{f', CUDA_VISIBLE_DEVICES={devices}' if devices else ''}, {execution.get('threads', '?')} threads; "
        f"timing: {result['cost'].get('timing', DEFAULT_TIMING)}; latency measured: {cells['latency_measured']}, "
        f"median {_fmt(result['cost'].get('latency_ms'))} ms, IQR {_fmt(cells['latency_iqr_ms'])} ms"
        f"{_load_text(cells)}"
    )


def _load_text(cells: dict[str, Any]) -> str:
    """The machine's load around a re-timing, for a job's settings line (empty when it was not re-timed)."""
    if cells["load_before"] is None or cells["load_after"] is None:
        return ""
    return f"; 1-minute load {_fmt(float(cells['load_before']))} before and {_fmt(float(cells['load_after']))} after"


def _runs(out: Path) -> list[dict[str, Any]]:
    path = out / "runs.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def report_lines(
    config: BenchmarkConfig,
    rows: Sequence[dict[str, Any]],
    results: Sequence[dict[str, Any]],
    skipped: Sequence[dict[str, Any]],
    missing: Sequence[str],
    plots: Sequence[Path],
    written: str = "",
) -> list[str]:
    """The markdown report (``written``: the report's time stamp, shown at its top)."""
    ok = [r for r in results if r.get("status") == "ok"]
    lines = [f"# Benchmark `{config.name}`", ""]
    if config.description:
        lines += [config.description.strip(), ""]
    envs = {
        (r["settings"]["device"], r["settings"]["threads"], r["settings"]["torch"], r["settings"]["anomalib"])
        for r in ok
    }
    if written:
        lines.append(f"- Report written {written} (UTC); `{MANIFEST}` lists every file of this report with its sha256")
    for device, threads, torch_v, anomalib_v in sorted(envs, key=str):
        lines.append(f"- Device: {device}; {threads} torch threads; torch {torch_v}, anomalib {anomalib_v}")
    for run in _runs(config.output):
        lines.append(
            f"- Run started {run['started']} on '{run.get('executor', 'local')}': wall {run['wall_s']} s "
            f"({run['ran']} ran, {run['skipped']} skipped, "
            f"{run['failed']} failed{', only ' + repr(run['only']) if run.get('only') else ''}"
            f"{', rerun' if run.get('rerun') else ''})"
        )
    for timing in sorted({r["cost"].get("timing", DEFAULT_TIMING) for r in ok}):
        lines.append(f"- Latency and throughput timing: {timing}")
    measured = Counter(latency_measured(r["cost"]) for r in ok)
    if measured:  # what happened, beside what was planned: a busy re-timing is not "alone"
        counts = ", ".join(f"{label} {count}" for label, count in sorted(measured.items()))
        lines.append(f"- How the latencies were measured (jobs): {counts}")
    lines += [
        f"- Jobs with results: {len(ok)} ok, {len(results) - len(ok)} failed; not run yet: {len(missing)}",
        "- Metrics: anomalib `AUROC`, `F1Max`, `AUPRO` (FPR <= 0.3) and torchmetrics' exact average precision "
        "wrapped as an anomalib metric; mAD = mean of the seven; means are over categories.",
        "- Seeds: every metric cell is the mean ± sample standard deviation (n - 1) over seeds, n = the number of "
        "seeds (a cell without ± has one seed); cost columns are the mean over seeds. results.csv has one row "
        "per seed.",
        "- Cost: MACs from `torch.utils.flop_counter.FlopCounterMode` (matmul/conv/attention, MAC = FLOP/2) on one "
        "pre-processed image; latency = median `AnomalibModule.forward` (pre-processing, model, post-processing) "
        "at batch 1, with the interquartile range (IQR) of its timed passes and how it was measured: `exclusive` "
        "(timed alone on this machine, or re-timed alone after a shared run on a quiet machine), `shared` (other "
        "jobs shared the cores), `retime-busy` (re-timed alone, but the machine's 1-minute load was above its "
        "cores before or after every try: other work ran; results.csv has `load_before` and `load_after`) or "
        "`retime-failed` (re-timing alone failed; the shared figure stays); throughput at the eval batch "
        "size; peak memory = process peak RSS on CPU (includes "
        "interpreter + libraries), `torch.cuda.max_memory_allocated` on GPU; trainable = parameters in the "
        "optimizers.",
        f"- Also written: `{TEX}` (this mean table for a paper: booktabs, percent, best per column in bold), "
        f"`{WIDE_CSV}` (one row per model, mean and std columns per dataset/category/metric), `{DEFECTS_CSV}` "
        "(image AUROC, pixel AUROC and pixel AUPRO per defect type, per job and seed); "
        "`anomalib-crr benchmark compare RUN A B` tests two models against each other on the same test images "
        "(paired bootstrap and DeLong).",
        "",
        "## Mean over categories (sorted by mAD)",
        "",
    ]
    summary = summary_rows(rows)
    lines += summary_table(summary) if summary else ["(no finished job yet)"]
    lines += bootstrap_lines(ok)
    lines += defect_type_lines(defect_type_rows(ok, config.output))
    if rows:
        lines += ["", "## Test sets", "", *evaluated_images_lines(rows, evaluated_image_sets(ok))]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{p.stem}]({p.name})" for p in plots]
    lines += ["", "## Per category", ""]
    lines += per_category_tables(rows)
    lines += ["", "## Failed jobs", ""]
    failed = [r for r in results if r.get("status") != "ok"]
    lines += (
        _table(["job", "error", "log"], [[r["job_id"], r["error"].replace("|", "/"), r["log"]] for r in failed])
        if failed
        else ["none"]
    )
    lines += ["", "## Skipped models", ""]
    lines += _table(["model", "reason"], [[s["model"], s["reason"]] for s in skipped]) if skipped else ["none"]
    if missing:
        lines += ["", "## Not run yet", "", *(f"- {m}" for m in missing)]
    lines += ["", "## Settings of every job", ""]
    for result in ok:
        settings, cost = result["settings"], result["cost"]
        lines += [
            f"### {result['job_id']}",
            "",
            f"- class: `{settings['class_path']}`; init args: `{json.dumps(settings['init_args'], default=str)}`",
            f"- trainer: `{json.dumps(settings['trainer'])}`; optimizer steps {result['cost']['optimizer_steps']}, "
            f"epochs {cost['epochs']}; datamodule overrides: `{json.dumps(settings['datamodule_overrides'])}`",
            f"- input {settings['input_size']} (stored images {settings['raw_image_size']}); weights: "
            f"{settings['weights']}; {settings['device']}, {settings['precision']}, {settings['threads']} threads",
            f"- eval batch {result['cost']['eval_batch_size']}; test {result['cost']['test_s']:.1f} s, of which "
            f"metric compute {cost['metrics_compute_s']:.1f} s (AUPRO {cost['aupro_compute_s']:.1f} s)",
            _where(result),
        ]
        lines += [f"- note: {note}" for note in result.get("notes", [])]
        lines.append("")
    return lines
