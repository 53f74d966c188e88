# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Write ``docs/benchmarks.md`` from finished run folders, so the published numbers are never typed by hand.

Usage::

    python -m anomalib_crr.benchmark.publish results/benchmark/smoke results/benchmark/real_cpu \
        --docs docs --copy real_cpu --context "2-core CPU shared with two other jobs"

For every run folder it adds a section with the machine, device, weights, settings, date and wall time (from
``results.json`` and ``runs.jsonl``), the mean-over-categories table, the per-category image AUROC and mAD
tables, the failed and skipped jobs, and the plots. Runs named in ``--copy`` get their ``results.csv``,
``report.md`` and PNGs copied to ``docs/benchmarks/<run>/`` (committed); others link to nothing outside docs.
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .metrics import MAD
from .report import per_category_tables, summary_rows, summary_table

INTRO = """# Benchmarks

Produced by `anomalib-crr benchmark --config configs/benchmark/<name>.yaml` (see `src/anomalib_crr/benchmark/`)
and written into this page by `python -m anomalib_crr.benchmark.publish`; every number below comes from the run's
result files. Metrics: image AUROC / AP / F1-max, pixel AUROC / AP / F1-max, pixel AUPRO (FPR <= 0.3), and mAD =
their mean, each computed per category and then averaged over categories. AUROC, F1-max and AUPRO are anomalib's
metric classes; AP is torchmetrics' exact average precision wrapped as an anomalib metric (anomalib's `AUPR` is
the trapezoidal area, not AP). anomalib 2.7's AUPRO is already an exact sort-based computation (one argsort of
all pixels, no threshold loop); its compute time is recorded per job (`aupro_compute_s` in the CSV) and each
run below states its largest share of a job's test time, which decides whether a faster implementation is needed.

Cost columns: parameters (trainable = parameters the optimizers update, so 0 for memory-bank models);
MACs per image from `torch.utils.flop_counter.FlopCounterMode` on the torch model for one pre-processed image
(matmul/conv/attention only, MAC = FLOP / 2); latency = median of >= 10 timed `AnomalibModule.forward` passes
(pre-processing, model, post-processing) at batch 1 after warm-up, throughput at the eval batch size; peak
memory = process peak RSS on CPU (VmHWM, reset between training and inference; it includes the interpreter,
torch and anomalib), `torch.cuda.max_memory_allocated` on GPU.
"""


def _environment(results: Sequence[dict[str, Any]]) -> list[str]:
    ok = [r for r in results if r.get("status") == "ok"]
    if not ok:
        return []
    settings = ok[0]["settings"]
    weights = sorted({f"{r['model']}: {r['settings']['weights']}" for r in ok})
    return [
        f"- Machine: `{settings['hostname']}`, {settings['device']}; {settings['threads']} torch threads; "
        f"precision {settings['precision']}",
        f"- Software: torch {settings['torch']}, anomalib {settings['anomalib']}, lightning {settings['lightning']}, "
        f"Python {settings['python']}",
        f"- Weights: {'; '.join(weights)}",
    ]


def _job_seconds(job_dir: Path) -> float:
    """Wall time of a job process: from writing its job.json to writing its result.json."""
    return (job_dir / "result.json").stat().st_mtime - (job_dir / "job.json").stat().st_mtime


# Long on purpose: writes one docs section in document order.
def run_section(run_dir: Path, docs: Path, copy: bool, context: str | None) -> list[str]:  # noqa: PLR0915
    """The markdown section of one run folder (and, with ``copy``, its files under ``docs/benchmarks/``)."""
    payload = json.loads((run_dir / "results.json").read_text())
    results, rows = payload["jobs"], payload["rows"]
    name = payload["config"]
    lines = [f"## `{name}`", ""]
    report_head = (run_dir / "report.md").read_text().split("\n## ")[0].splitlines()
    description = [line for line in report_head[1:] if line and not line.startswith("- ")]
    lines += [*description, ""]
    if context:
        lines += [f"- Context: {context}"]
    lines += _environment(results)
    for run in payload.get("runs", []):
        only = f", only `{run['only']}`" if run.get("only") else ""
        lines.append(
            f"- Invocation started {run['started']} (UTC): wall time {run['wall_s']:.0f} s, {run['ran']} jobs ran, "
            f"{run['skipped']} skipped, {run['failed']} failed{only}{', --rerun' if run.get('rerun') else ''}"
        )
    ok = [r for r in results if r.get("status") == "ok"]
    job_seconds = [_job_seconds(run_dir / "jobs" / r["job_id"]) for r in ok]
    if ok:
        lines.append(
            f"- Job processes of the {len(ok)} finished jobs: {sum(job_seconds) / 60:.0f} min in total "
            f"(from job.json to result.json times; the longest {max(job_seconds) / 60:.1f} min)"
        )
        worst = max(ok, key=lambda r: r["cost"]["aupro_compute_s"] / max(r["cost"]["test_s"], 1e-9))
        share = worst["cost"]["aupro_compute_s"] / max(worst["cost"]["test_s"], 1e-9)
        lines.append(
            f"- AUPRO compute: at most {worst['cost']['aupro_compute_s']:.1f} s, {100 * share:.0f} % of the test time "
            f"of `{worst['job_id']}` ({worst['cost']['test_s']:.0f} s)"
        )
    lines += [f"- Result files written {payload['written']} (UTC)", "", "### Mean over categories (sorted by mAD)", ""]
    lines += summary_table(summary_rows(rows))
    failed = payload.get("failed") or []
    if failed:
        lines += ["", "Failed jobs:", ""] + [f"- `{r['job_id']}`: {r['error']}" for r in failed]
    skipped = payload.get("skipped_models") or []
    if skipped:
        lines += ["", "Skipped models:", ""] + [f"- {s['model']}: {s['reason']}" for s in skipped]
    notes = sorted({(r["model"], note) for r in results if r.get("status") == "ok" for note in r.get("notes", [])})
    if notes:
        lines += ["", "Per-model notes (from the job results):", ""] + [f"- {m}: {n}" for m, n in notes]
    tables = per_category_tables(rows)
    keep, include = [], False
    for line in tables:
        if line.startswith("#### "):
            include = line.endswith((": image_AUROC", f": {MAD}"))
        if include:
            keep.append(line.replace("#### ", "#### Per category: ", 1) if line.startswith("#### ") else line)
    lines += ["", *keep]
    if copy:
        target = docs / "benchmarks" / name
        target.mkdir(parents=True, exist_ok=True)
        for item in ("results.csv", "report.md", *(p.name for p in run_dir.glob("*.png"))):
            shutil.copy2(run_dir / item, target / item)
        lines += [
            "",
            f"Files: [`results.csv`](benchmarks/{name}/results.csv), [full report](benchmarks/{name}/report.md)",
            "",
        ]
        pngs = sorted(p for p in target.glob("*.png") if p.name in {q.name for q in run_dir.glob("*.png")})
        plots = [p for p in pngs if not p.name.startswith(("grid_", "scores_"))]
        lines += [f"![{p.stem}](benchmarks/{name}/{p.name})" for p in plots]
        pictures = [p for p in pngs if p.name.startswith(("grid_", "scores_"))]
        if pictures:
            lines += [
                "",
                "#### Anomaly maps and score distributions",
                "",
                "One colour scale for every map column: anomalib's normalised map, 0.5 = the model's threshold.",
                "",
            ]
            lines += [f"![{p.stem}](benchmarks/{name}/{p.name})" for p in pictures]
    lines.append("")
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: run folders in, ``<docs>/benchmarks.md`` out."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (results/benchmark/<name>)")
    parser.add_argument("--docs", type=Path, default=Path("docs"))
    parser.add_argument("--copy", nargs="*", default=[], help="config names whose CSV, report and PNGs to copy")
    parser.add_argument("--context", nargs="*", default=[], help="NAME=TEXT: a context line for a run")
    parser.add_argument("--preamble", type=Path, default=None, help="markdown inserted after the intro")
    args = parser.parse_args(argv)
    contexts = dict(item.split("=", 1) for item in args.context)
    lines = [INTRO]
    if args.preamble is not None:
        lines += [args.preamble.read_text().strip(), ""]
    for run_dir in args.runs:
        name = json.loads((run_dir / "results.json").read_text())["config"]
        lines += run_section(run_dir, args.docs, name in args.copy, contexts.get(name))
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "benchmarks.md").write_text("\n".join(lines))
    print(f"wrote {args.docs / 'benchmarks.md'}")


if __name__ == "__main__":
    main()
