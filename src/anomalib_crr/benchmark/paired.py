# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""``anomalib-crr benchmark compare RUN A B``: is model A's image AUROC really different from model B's?

Two means ± std over a few seeds cannot tell a real difference from test-set noise: both models are scored on
the same test images, and much of each AUROC's uncertainty comes from which images happen to be in the test
set. A *paired* test uses that: it looks at the difference on the same images, so the shared noise cancels.
Everything comes from each job's ``scores.csv`` (per-image scores), nothing is re-run.

The statistic is the image AUROC difference A − B, averaged over every (dataset, category, seed) cell; with one
dataset and the same categories in every seed this is the difference of the mean table's image AUROC. Two tests:

- **Paired bootstrap** (:func:`paired_bootstrap`): each resample draws a category's test images with
  replacement, the good and the defective ones separately (every resample keeps both classes and the class
  balance), and applies the *same* draw to both models and to every seed that was tested on those images: the
  images are one sample shared by all seeds, so drawing them per seed would shrink the interval by treating
  the seeds' test sets as independent. Gives a 95 % percentile interval and a two-sided p-value,
  ``2 · (min(#{Δ* <= 0}, #{Δ* >= 0}) + 1) / (B + 1)`` capped at 1 (p < 0.05 about when the interval excludes 0;
  never exactly 0).
- **DeLong's test** (:func:`delong`): the same difference with DeLong, DeLong & Clarke-Pearson's (1988)
  variance from the structural components (placement values) of both AUROCs, averaged over the seeds that
  share a test set (the difference of averages is again a U-statistic over the same images), and summed over
  categories (disjoint images); ``z`` against a standard normal, two-sided.

Both tests treat the trained models (the seeds) as given: they answer "on this test set, do these trained
models differ?", not "would a new seed differ?". The seed-to-seed spread is the ± of the report's tables.
The command refuses (exit 2) when A and B were not evaluated on the same seeds, categories and test images.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .samples import read_scores
from .stats import BOOTSTRAP_SAMPLES, BOOTSTRAP_SEED, auroc

PROG = "anomalib-crr benchmark compare"


class CompareError(ValueError):
    """The two models cannot be compared pairwise (different images or seeds, missing scores)."""


@dataclass(frozen=True)
class Cell:
    """One (dataset, category, seed): both models' scores on the same images, sorted by path."""

    dataset: str
    category: str
    seed: Any
    paths: tuple[str, ...]
    labels: np.ndarray
    a: np.ndarray
    b: np.ndarray

    @property
    def difference(self) -> float:
        """Image AUROC of A minus that of B on this cell."""
        return auroc(self.a, self.labels) - auroc(self.b, self.labels)


@dataclass(frozen=True)
class TestResult:
    """A difference with its interval (bootstrap only) and two-sided p-value."""

    difference: float
    low: float
    high: float
    p: float


def load_results(run_dir: Path) -> list[dict[str, Any]]:
    """The jobs of a run folder (``results.json``)."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise CompareError(f"{path} not found: give the folder of a finished benchmark run")
    return list(json.loads(path.read_text()).get("jobs", []))


def _scores_by_cell(
    results: Sequence[dict[str, Any]], model: str, run_dir: Path | None, dataset: str | None, mode: str | None
) -> dict[tuple[str, Any, str], Any]:
    """``{(dataset, seed, category): that job's scores.csv rows}`` of one model's finished jobs."""
    jobs = [
        r
        for r in results
        if r.get("status") == "ok"
        and r["model"] == model
        and dataset in (None, r["dataset"])
        and mode in (None, r["mode"])
    ]
    if not jobs:
        models = sorted({r["model"] for r in results if r.get("status") == "ok"})
        narrowed = "".join(f", {k} {v!r}" for k, v in (("dataset", dataset), ("mode", mode)) if v)
        raise CompareError(f"model {model!r}{narrowed} has no finished job here; models with results: {models}")
    modes: dict[str, set[str]] = defaultdict(set)
    for job in jobs:
        modes[job["dataset"]].add(job["mode"])
    for name, found in modes.items():
        if len(found) > 1:
            raise CompareError(
                f"model {model!r} ran dataset {name!r} in several modes {sorted(found)}: choose one with --mode"
            )
    cells: dict[tuple[str, Any, str], Any] = {}
    for job in jobs:
        frame = read_scores(job, run_dir)
        if frame is None:
            raise CompareError(f"job {job['job_id']} kept no scores.csv (per-image scores), so it cannot be paired")
        for category, part in frame.groupby("category", sort=False):
            cells[(job["dataset"], job["seed"], str(category))] = part.sort_values("image_path", kind="mergesort")
    return cells


def paired_cells(
    results: Sequence[dict[str, Any]],
    model_a: str,
    model_b: str,
    run_dir: Path | None = None,
    dataset: str | None = None,
    mode: str | None = None,
) -> list[Cell]:
    """Both models' scores per (dataset, category, seed), checked to be on the same images.

    Raises:
        CompareError: When the models' seeds, categories or test images differ, or a job kept no scores.
    """
    scores_a = _scores_by_cell(results, model_a, run_dir, dataset, mode)
    scores_b = _scores_by_cell(results, model_b, run_dir, dataset, mode)
    if scores_a.keys() != scores_b.keys():
        only = [sorted(set(x) - set(y), key=str)[:3] for x, y in ((scores_a, scores_b), (scores_b, scores_a))]
        raise CompareError(
            f"{model_a} and {model_b} were not run on the same seeds and categories "
            f"(dataset, seed, category only in {model_a}: {only[0]}; only in {model_b}: {only[1]}); "
            "a paired test needs both on the same test images and seeds (narrow with --dataset/--mode)"
        )
    cells = []
    for key in sorted(scores_a, key=str):
        part_a, part_b = scores_a[key], scores_b[key]
        paths = tuple(part_a["image_path"])
        where = f"{key[0]}/{key[2]}, seed {key[1]}"
        if paths != tuple(part_b["image_path"]):
            missing = len(set(paths) - set(part_b["image_path"]))
            extra = len(set(part_b["image_path"]) - set(paths))
            raise CompareError(
                f"{model_a} and {model_b} were not evaluated on the same test images ({where}: {missing} of "
                f"{model_a}'s images not in {model_b}'s scores, {extra} the other way, {len(paths)} vs "
                f"{len(part_b)} images); a paired test needs the same images"
            )
        labels = part_a["gt_label"].to_numpy(int)
        if not np.array_equal(labels, part_b["gt_label"].to_numpy(int)):
            raise CompareError(f"{model_a} and {model_b} disagree on the labels of the test images ({where})")
        if min(int((labels == 0).sum()), int((labels == 1).sum())) < 2:
            raise CompareError(f"{where} has fewer than 2 good or 2 defective test images: no AUROC test")
        a, b = part_a["pred_score"].to_numpy(float), part_b["pred_score"].to_numpy(float)
        if not (np.isfinite(a).all() and np.isfinite(b).all()):
            raise CompareError(f"{where}: a model gave non-finite image scores")
        cells.append(Cell(key[0], key[2], key[1], paths, labels, a, b))
    return cells


def _groups(cells: Sequence[Cell]) -> list[list[int]]:
    """Indices of the cells that share one test set (same dataset, category and images): one draw each."""
    groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for index, cell in enumerate(cells):
        groups[(cell.dataset, cell.category, cell.paths)].append(index)
    return list(groups.values())


def bootstrap_draws(cells: Sequence[Cell], samples: int = BOOTSTRAP_SAMPLES, seed: int = BOOTSTRAP_SEED) -> np.ndarray:
    """``(samples, cells)`` AUROC differences on resampled images (see the module doc for the resampling)."""
    rng = np.random.default_rng(seed)
    draws = np.empty((samples, len(cells)))
    groups = _groups(cells)
    for sample in range(samples):
        for members in groups:
            labels = cells[members[0]].labels
            index = np.concatenate(
                [rng.choice(np.flatnonzero(labels == value), int((labels == value).sum())) for value in (0, 1)]
            )
            drawn = labels[index]
            for member in members:
                cell = cells[member]
                draws[sample, member] = auroc(cell.a[index], drawn) - auroc(cell.b[index], drawn)
    return draws


def paired_bootstrap(
    cells: Sequence[Cell], draws: np.ndarray | None = None, columns: Sequence[int] | None = None
) -> TestResult:
    """Mean AUROC difference over ``columns`` (default: every cell), 95 % interval, two-sided p-value."""
    draws = bootstrap_draws(cells) if draws is None else draws
    columns = list(range(len(cells))) if columns is None else list(columns)
    estimate = float(np.mean([cells[c].difference for c in columns]))
    means = draws[:, columns].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    tail = min(int((means <= 0).sum()), int((means >= 0).sum()))
    p = min(1.0, 2 * (tail + 1) / (means.size + 1))
    return TestResult(estimate, float(low), float(high), p)


def _placements(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components (placement values), from mid-ranks as in Sun & Xu's fast algorithm.

    Per defective image, the share of good images it outscores (ties count half); per good image, the share of
    defective images that outscore it. Both means equal the AUROC; their spread gives DeLong's variance.
    """
    from scipy.stats import rankdata

    positive, negative = scores[labels == 1], scores[labels == 0]
    ranks = rankdata(np.concatenate([positive, negative]))
    v10 = (ranks[: positive.size] - rankdata(positive)) / negative.size
    v01 = 1.0 - (ranks[positive.size :] - rankdata(negative)) / positive.size
    return v10, v01


def delong(cells: Sequence[Cell], columns: Sequence[int] | None = None) -> TestResult:
    """DeLong's paired test of the mean AUROC difference over ``columns`` (default: every cell).

    Cells that share a test set are averaged per image before the variance is taken (they are correlated
    through the images); test sets of different categories are independent, so their variances add with
    the squared weights of the mean. Returns no interval (``low``/``high`` NaN).
    """
    chosen = set(range(len(cells)) if columns is None else columns)
    total = len(chosen)
    estimate, variance = 0.0, 0.0
    for group in _groups(cells):
        members = [m for m in group if m in chosen]
        if not members:
            continue
        labels = cells[members[0]].labels
        d10 = np.zeros(int((labels == 1).sum()))
        d01 = np.zeros(int((labels == 0).sum()))
        for member in members:
            a10, a01 = _placements(cells[member].a, labels)
            b10, b01 = _placements(cells[member].b, labels)
            d10 += (a10 - b10) / len(members)
            d01 += (a01 - b01) / len(members)
        weight = len(members) / total
        estimate += weight * float(d10.mean())
        variance += weight**2 * (d10.var(ddof=1) / d10.size + d01.var(ddof=1) / d01.size)
    if variance <= 1e-18:
        return TestResult(estimate, math.nan, math.nan, 1.0 if abs(estimate) < 1e-12 else 0.0)
    z = estimate / math.sqrt(variance)
    return TestResult(estimate, math.nan, math.nan, math.erfc(abs(z) / math.sqrt(2)))


def _p(value: float) -> str:
    return f"{value:.2g}" if value >= 0.001 else f"{value:.1e}"


def comparison_lines(cells: Sequence[Cell], model_a: str, model_b: str, samples: int = BOOTSTRAP_SAMPLES) -> list[str]:
    """The comparison as markdown: one row per (dataset, category), averaged over seeds, then the overall row."""
    draws = bootstrap_draws(cells, samples)
    by_category: dict[tuple[str, str], list[int]] = defaultdict(list)
    for index, cell in enumerate(cells):
        by_category[(cell.dataset, cell.category)].append(index)
    seeds = sorted({c.seed for c in cells}, key=str)
    header = [
        "dataset",
        "category",
        "n",
        "images (good/defective)",
        f"{model_a} I-AUROC",
        f"{model_b} I-AUROC",
        "Δ (A − B)",
        "95 % interval",
        "p (bootstrap)",
        "p (DeLong)",
    ]
    rows = []
    overall = [(("all", "mean"), list(range(len(cells))))] if len(by_category) > 1 else []
    for (dataset, category), columns in [*by_category.items(), *overall]:
        boot, dl = paired_bootstrap(cells, draws, columns), delong(cells, columns)
        counts = sorted({(int((cells[c].labels == 0).sum()), int((cells[c].labels == 1).sum())) for c in columns})
        rows.append(
            [
                dataset,
                category,
                str(len({cells[c].seed for c in columns})),
                "; ".join(f"{g}/{d}" for g, d in counts) if category != "mean" else "",
                f"{np.mean([auroc(cells[c].a, cells[c].labels) for c in columns]):.3f}",
                f"{np.mean([auroc(cells[c].b, cells[c].labels) for c in columns]):.3f}",
                f"{boot.difference:+.3f}",
                f"[{boot.low:+.3f}, {boot.high:+.3f}]",
                _p(boot.p),
                _p(dl.p),
            ]
        )
    last = rows[-1]
    return [
        f"## Paired comparison: {model_a} vs {model_b} (image AUROC)",
        "",
        f"Same test images for both models in every cell; seeds {', '.join(map(str, seeds))} (n = {len(seeds)}); "
        f"{len(cells)} (dataset, category, seed) cells. Δ is A − B averaged over seeds"
        f"{' (last row: over every cell)' if overall else ''}.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
        "",
        f"Paired bootstrap: {samples} resamples of the test images (good and defective drawn separately), the same "
        "draw for both models and for every seed tested on those images; percentile interval; two-sided "
        "p = 2·(min(#Δ*≤0, #Δ*≥0) + 1)/(B + 1). DeLong: DeLong, DeLong & Clarke-Pearson (1988) variance of the paired "
        "AUROC difference, per-image components averaged over seeds, categories independent. Both condition on "
        "the trained models; seed-to-seed spread is the ± of the report's tables. Per-category p-values are not "
        "corrected for multiple comparisons.",
        "",
        f"Overall: Δ image AUROC = {last[6]}, 95 % interval {last[7]}, p = {last[8]} (paired bootstrap), "
        f"p = {last[9]} (DeLong).",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    """``anomalib-crr benchmark compare RUN A B``: exit 0 with the comparison, 2 (one line) when it cannot pair."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Paired test of two models' image AUROC on the same test images and seeds of a finished "
        "benchmark run (paired bootstrap over the test images and DeLong's test), from the jobs' scores.csv.",
    )
    parser.add_argument("run", type=Path, help="the run folder (with results.json and jobs/)")
    parser.add_argument("model_a", metavar="A", help="model name, as in results.csv")
    parser.add_argument("model_b", metavar="B", help="model name, as in results.csv")
    parser.add_argument("--dataset", default=None, help="only this dataset (default: every dataset both ran)")
    parser.add_argument("--mode", default=None, help="only this mode (needed when a model ran several)")
    parser.add_argument("--samples", type=int, default=BOOTSTRAP_SAMPLES, help="bootstrap resamples (default 1000)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        if args.model_a == args.model_b:
            raise CompareError("A and B are the same model")
        cells = paired_cells(load_results(args.run), args.model_a, args.model_b, args.run, args.dataset, args.mode)
    except CompareError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(comparison_lines(cells, args.model_a, args.model_b, args.samples)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
