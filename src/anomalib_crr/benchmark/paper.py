# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""What a paper takes from a run: ``report.tex`` (a booktabs table) and ``results_wide.csv``.

- ``report.tex`` is a complete document (``pdflatex report.tex`` builds it) whose one ``table`` is the report's
  mean-over-categories table: every metric in percent as mean ± sample std over seeds, the best mean of each
  column in bold (within a dataset: numbers on different test sets are not ranked together), and the seed
  count in the caption, so a table copied into a paper carries its own spread and n. Only packages of TeX
  Live's ``latex-base`` and ``latex-recommended`` are used (``booktabs``, ``graphicx``).
- ``results_wide.csv`` is one row per model (and mode), one ``mean`` and one ``std`` column per dataset,
  category and metric, and the seed count per dataset and category: the layout a plotting script or a
  spreadsheet pivot wants, with the same numbers as ``results.csv`` (fractions, not percent).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .metrics import MAD, METRICS
from .stats import seed_stats

TEX = "report.tex"
WIDE_CSV = "results_wide.csv"
MEAN = "mean"  # the category of the mean-over-categories rows (report.MEAN)
#: Short column names of the accuracy metrics (the report's mean table uses them too).
TEX_HEADER = {
    "image_AUROC": "I-AUROC",
    "image_AP": "I-AP",
    "image_F1Max": "I-F1max",
    "pixel_AUROC": "P-AUROC",
    "pixel_AP": "P-AP",
    "pixel_F1Max": "P-F1max",
    "pixel_AUPRO": "P-AUPRO",
    MAD: "mAD",
}
_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: Any) -> str:
    """``text`` with LaTeX's special characters escaped (model names such as ``CRR_small`` or ``90%``)."""
    return "".join(_SPECIAL.get(char, char) for char in str(text))


def _percent(value: Any) -> float:
    return math.nan if value is None or math.isnan(float(value)) else round(100 * float(value), 1)


def latex_table(summary: Sequence[dict[str, Any]], run_name: str, written: str = "") -> str:
    """``report.tex`` for the summary rows of :func:`.report.summary_rows` (mean ± std over seeds per metric).

    Why bold by the rounded value: two means that print the same are the same to the reader, so both are bold.
    """
    if not summary:
        return "\n".join(
            [r"\documentclass{article}", r"\begin{document}", "No finished job yet.", r"\end{document}", ""]
        )
    metrics = [*METRICS, MAD]
    datasets = list(dict.fromkeys(r["dataset"] for r in summary))
    modes = {r["mode"] for r in summary}
    seeds = sorted({int(r["seeds"]) for r in summary})
    key_header = ["Model", *(["Dataset"] if len(datasets) > 1 else []), *(["Mode"] if len(modes) > 1 else [])]
    show_n = len(seeds) > 1
    columns = [*key_header, *(["$n$"] if show_n else []), *(TEX_HEADER[m] for m in metrics)]
    body: list[str] = []
    for dataset in datasets:
        rows = [r for r in summary if r["dataset"] == dataset]
        best = {m: max((v for r in rows if not math.isnan(v := _percent(r[m]))), default=math.nan) for m in metrics}
        if body:
            body.append(r"\midrule")
        for row in rows:
            keys = [row["model"], *([dataset] if len(datasets) > 1 else []), *([row["mode"]] if len(modes) > 1 else [])]
            cells = [latex_escape(k) for k in keys] + ([str(row["seeds"])] if show_n else [])
            for metric in metrics:
                mean, std = _percent(row[metric]), _percent(row.get(f"{metric}_std"))
                if math.isnan(mean):
                    cells.append("--")
                    continue
                text = rf"\textbf{{{mean:.1f}}}" if mean == best[metric] else f"{mean:.1f}"
                cells.append(text if math.isnan(std) else rf"{text} $\pm$ {std:.1f}")
            body.append(" & ".join(cells) + r" \\")
    count = rf"$n = {seeds[0]}$ seed{'s' if seeds[0] != 1 else ''}" if len(seeds) == 1 else "$n$ seeds (column $n$)"
    spread = "mean $\\pm$ sample standard deviation" if max(seeds, default=1) > 1 else "the value"
    caption = (
        f"Benchmark \\texttt{{{latex_escape(run_name)}}}: each metric averaged over categories, in percent, "
        f"{spread} over {count}; best per column{' and dataset' if len(datasets) > 1 else ''} in bold. "
        "mAD is the mean of the seven metrics."
    )
    stamp = f" at {written}" if written else ""
    label = "tab:benchmark-" + "".join(c if c.isalnum() else "-" for c in run_name)
    spec = "l" * len(key_header) + ("r" if show_n else "") + "c" * len(metrics)
    return "\n".join(
        [
            f"% Written by anomalib-crr benchmark from the results of run '{run_name}'{stamp}.",
            "% Copy the table environment into a paper; it needs \\usepackage{booktabs} and \\usepackage{graphicx}.",
            r"\documentclass{article}",
            r"\usepackage{booktabs}",
            r"\usepackage{graphicx}",
            r"\begin{document}",
            r"\begin{table}[t]",
            r"\centering",
            rf"\caption{{{caption}}}",
            rf"\label{{{label}}}",
            r"\resizebox{\linewidth}{!}{%",
            rf"\begin{{tabular}}{{{spec}}}",
            r"\toprule",
            " & ".join(columns) + r" \\",
            r"\midrule",
            *body,
            r"\bottomrule",
            r"\end{tabular}}",
            r"\end{table}",
            r"\end{document}",
            "",
        ]
    )


def wide_frame(rows: Sequence[dict[str, Any]]) -> Any:
    """One row per (model, mode); ``<dataset>/<category>/<metric>_mean`` and ``_std`` columns, and ``/n`` seeds.

    ``rows`` are :func:`.report.result_rows` (one per job, seed and category, plus the ``mean`` rows).
    """
    import pandas as pd

    groups: dict[tuple[str, str], dict[tuple[str, str], list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    places: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        groups[(row["model"], row["mode"])][(row["dataset"], row["category"])].append(row)
        if row["category"] not in places[row["dataset"]]:
            places[row["dataset"]].append(row["category"])
    columns = ["model", "mode"]
    for dataset, categories in places.items():
        for category in [c for c in categories if c != MEAN] + ([MEAN] if MEAN in categories else []):
            columns.append(f"{dataset}/{category}/n")
            for metric in (*METRICS, MAD):
                columns += [f"{dataset}/{category}/{metric}_mean", f"{dataset}/{category}/{metric}_std"]
    out = []
    for (model, mode), cells in groups.items():
        entry: dict[str, Any] = {"model": model, "mode": mode}
        for (dataset, category), members in cells.items():
            entry[f"{dataset}/{category}/n"] = len({m["seed"] for m in members})
            for metric in (*METRICS, MAD):
                mean, std, _ = seed_stats([m[metric] for m in members])
                entry[f"{dataset}/{category}/{metric}_mean"] = mean
                entry[f"{dataset}/{category}/{metric}_std"] = std
        out.append(entry)
    return pd.DataFrame(out, columns=columns)


def write_paper_outputs(
    summary: Sequence[dict[str, Any]], rows: Sequence[dict[str, Any]], out: Path, run_name: str, written: str = ""
) -> list[Path]:
    """Write ``report.tex`` and ``results_wide.csv`` into the run folder ``out``; returns their paths."""
    wide = out / WIDE_CSV
    wide_frame(rows).to_csv(wide, index=False)
    tex = out / TEX
    tex.write_text(latex_table(summary, run_name, written))
    return [tex, wide]
