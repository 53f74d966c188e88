"""What a paper takes from a benchmark run: per-defect-type AUROC, ``report.tex``, the wide CSV, ``compare``.

Every check runs on hand-written results and ``scores.csv`` files whose AUROCs are known exactly (no training),
so each module test takes about a second; the pdflatex build takes a few more.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from anomalib_crr.benchmark.config import expand_jobs, load_config
from anomalib_crr.benchmark.defects import defect_type_lines, defect_type_rows
from anomalib_crr.benchmark.metrics import MAD, METRICS
from anomalib_crr.benchmark.paired import (
    Cell,
    _placements,
    bootstrap_draws,
    delong,
    load_results,
    main,
    paired_bootstrap,
    paired_cells,
)
from anomalib_crr.benchmark.paper import latex_escape, latex_table, wide_frame
from anomalib_crr.benchmark.report import COST_COLUMNS, SETTING_COLUMNS, result_rows, summary_rows, write_outputs
from anomalib_crr.benchmark.stats import auroc
from anomalib_crr.cli import run_benchmark_cli

from .helpers import PADIM_ENTRY, small_benchmark_config

# Seed 0: scratch is separated perfectly (AUROC 1), stain half (0.15 beats 1 of 4 good, 0.35 beats 3: 0.5).
GOOD = [0.1, 0.2, 0.3, 0.4]
SEED0 = {"scratch": [0.5, 0.6], "stain": [0.15, 0.35]}
# Seed 1: scratch 0.75 (0.35 beats 3 of 4, 0.6 all), stain 0 (both below every good image).
SEED1 = {"scratch": [0.35, 0.6], "stain": [0.01, 0.02]}


def _result(job_dir: Path, seed: int, value: float, model: str = "Padim", category: str = "washer") -> dict[str, Any]:
    """A finished job's result with every metric = ``value`` (its scores.csv is written separately)."""
    return {
        "status": "ok",
        "job_id": job_dir.name,
        "model": model,
        "dataset": "tiny",
        "mode": "per_category",
        "seed": seed,
        "categories": {category: dict.fromkeys((*METRICS, MAD), value)},
        "test_set": {"images": {category: 8}, "moved_to_val": {}, "val_images": 8, "val_split_mode": "same_as_test"},
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


def _write_scores(
    job_dir: Path, good: list[float], defects: dict[str, list[float]], category: str = "washer"
) -> list[str]:
    """A job's ``scores.csv`` (the columns :class:`SampleRecorder` writes); returns the image paths."""
    job_dir.mkdir(parents=True, exist_ok=True)
    rows = [(f"/data/{category}/test/good/{i:03d}.png", "good", 0, s) for i, s in enumerate(good)]
    for kind, scores in defects.items():
        rows += [(f"/data/{category}/test/{kind}/{i:03d}.png", kind, 1, s) for i, s in enumerate(scores)]
    frame = pd.DataFrame(
        [
            {
                "image_path": p,
                "category": category,
                "defect_type": k,
                "gt_label": lab,
                "pred_score": s,
                "pred_label": int(s > 0.5),
            }
            for p, k, lab, s in rows
        ]
    )
    frame.to_csv(job_dir / "scores.csv", index=False)
    return list(frame["image_path"])


def _seeded_results(tmp_path: Path) -> list[dict[str, Any]]:
    results = []
    for seed, defects in ((0, SEED0), (1, SEED1)):
        job_dir = tmp_path / "jobs" / f"Padim-tiny-washer-s{seed}"
        _write_scores(job_dir, GOOD, defects)
        results.append(_result(job_dir, seed, 0.7 + 0.2 * seed))
    return results


# ---- per defect type ---------------------------------------------------------------------------------------


def test_defect_type_auroc_is_good_against_that_type_only(tmp_path: Path) -> None:
    rows = defect_type_rows(_seeded_results(tmp_path))
    values = {(r["seed"], r["defect_type"]): r["image_AUROC"] for r in rows}
    assert values == {(0, "scratch"): 1.0, (0, "stain"): 0.5, (1, "scratch"): 0.875, (1, "stain"): 0.0}
    assert {(r["good_images"], r["defective_images"]) for r in rows} == {(4, 2)}
    table = "\n".join(defect_type_lines(rows))
    assert "| model | mode | n | scratch (4/2) | stain (4/2) |" in table
    # scratch: mean of 1 and 0.875, std |1 - 0.875| / sqrt 2; stain: 0.25 ± 0.354
    assert "| Padim | per_category | 2 | 0.938 ± 0.088 | 0.250 ± 0.354 |" in table
    assert "Pixel AUROC and AUPRO per defect type are computed" in table
    assert "No job kept `defect_maps.npz` (no ground-truth masks): n/a everywhere." in table  # these jobs kept none


def _written_run(tiny_dataset: Path, tmp_path: Path) -> Path:
    """write_outputs over two models × two seeds with scores.csv files; returns the run folder."""
    entries = [PADIM_ENTRY, {**PADIM_ENTRY, "name": "CRR_small"}]
    config = {**small_benchmark_config(tiny_dataset, entries), "seeds": [0, 1]}
    config = load_config(config, output=tmp_path / "run")
    jobs = expand_jobs(config)
    results = []
    for job in jobs:
        job_dir = config.output / "jobs" / job.job_id
        better = job.model.name == "CRR_small"
        _write_scores(job_dir, GOOD, SEED0 if job.seed == 0 else SEED1)
        results.append(_result(job_dir, job.seed, (0.9 if better else 0.7) + 0.02 * job.seed, model=job.model.name))
    write_outputs(config, jobs, results)
    return config.output


def test_write_outputs_adds_defect_csv_tex_and_wide_csv(tiny_dataset: Path, tmp_path: Path) -> None:
    out = _written_run(tiny_dataset, tmp_path)
    defects = pd.read_csv(out / "results_by_defect_type.csv")
    assert len(defects) == 2 * 2 * 2  # models × seeds × defect types
    assert set(defects.columns) >= {"seed", "defect_type", "image_AUROC", "good_images", "defective_images"}
    scratch = defects[(defects["model"] == "Padim") & (defects["defect_type"] == "scratch")]
    assert sorted(scratch["image_AUROC"]) == [0.875, 1.0]
    report = (out / "report.md").read_text()
    assert "## Image AUROC per defect type" in report
    assert "| CRR_small | per_category | 2 | 0.938 ± 0.088 | 0.250 ± 0.354 |" in report

    wide = pd.read_csv(out / "results_wide.csv")
    assert list(wide["model"]) == ["Padim", "CRR_small"]  # one row per model
    crr = wide[wide["model"] == "CRR_small"].iloc[0]
    assert crr["tiny/washer/image_AUROC_mean"] == pytest.approx(0.91)
    assert crr["tiny/washer/image_AUROC_std"] == pytest.approx(0.02 / math.sqrt(2))
    assert crr["tiny/mean/pixel_AUPRO_mean"] == pytest.approx(0.91)
    assert crr["tiny/washer/n"] == 2

    tex = (out / "report.tex").read_text()
    assert r"CRR\_small & \textbf{91.0} $\pm$ 1.4" in tex  # best per column bold, percent, ± std
    assert r"Padim & 71.0 $\pm$ 1.4" in tex
    assert "$n = 2$ seeds" in tex


def _summary(**values: tuple[float, float]) -> list[dict[str, Any]]:
    rows = []
    for model, (mean, std) in values.items():
        row = {"model": model, "dataset": "d_1", "mode": "per_category", "seeds": 3}
        for metric in (*METRICS, MAD):
            row[metric], row[f"{metric}_std"] = mean, std
        rows.append(row)
    return rows


def test_report_tex_has_booktabs_rules_bold_best_and_escaping() -> None:
    tex = latex_table(_summary(A_b=(0.9, 0.01), B=(0.8, 0.05), C=(0.9, 0.02)), "run_50%")
    lines = tex.splitlines()
    at = {rule: lines.index(rule) for rule in (r"\toprule", r"\midrule", r"\bottomrule")}
    assert at[r"\toprule"] < at[r"\midrule"] < at[r"\bottomrule"]
    body = lines[at[r"\midrule"] + 1 : at[r"\bottomrule"]]
    assert body[0].startswith(r"A\_b & \textbf{90.0} $\pm$ 1.0 &")  # ties at the printed precision: both bold
    assert body[1].startswith(r"B & 80.0 $\pm$ 5.0 &")
    assert body[2].startswith(r"C & \textbf{90.0} $\pm$ 2.0 &")
    assert all(line.count("&") == 8 and line.endswith(r"\\") for line in body)
    assert r"\texttt{run\_50\%}" in tex
    assert "$n = 3$ seeds" in tex
    assert latex_escape("a_b%c&d#e$f{g}h~i^j\\") == (
        r"a\_b\%c\&d\#e\$f\{g\}h\textasciitilde{}i\textasciicircum{}j\textbackslash{}"
    )


def test_report_tex_compiles_with_pdflatex(tiny_dataset: Path, tmp_path: Path) -> None:
    """Debian's texlive-latex-base + texlive-latex-recommended (booktabs) build report.tex into a PDF."""
    if shutil.which("pdflatex") is None:
        if os.environ.get("ANOMALIB_CRR_REQUIRE_LATEX"):
            pytest.fail("pdflatex missing, but .ci/run installs texlive-latex-base and texlive-latex-recommended")
        pytest.skip("no pdflatex here (Debian: texlive-latex-base texlive-latex-recommended)")
    out = _written_run(tiny_dataset, tmp_path)
    done = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "report.tex"],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert (out / "report.pdf").read_bytes().startswith(b"%PDF")
    assert "Overfull" not in done.stdout


def test_wide_csv_has_one_row_per_model_and_mean_std_columns(tmp_path: Path) -> None:
    results = [
        _result(tmp_path / f"m{m}s{s}", s, 0.5 + 0.1 * m + 0.1 * s, model=f"M{m}") for m in (0, 1) for s in (0, 1)
    ]
    frame = wide_frame(result_rows(results))
    assert list(frame["model"]) == ["M0", "M1"]
    assert frame.loc[1, "tiny/washer/image_AP_mean"] == pytest.approx(0.65)
    assert frame.loc[1, "tiny/washer/image_AP_std"] == pytest.approx(0.1 / math.sqrt(2))
    assert list(frame.columns[:3]) == ["model", "mode", "tiny/washer/n"]
    assert frame.columns[-1] == f"tiny/mean/{MAD}_std"
    assert len(summary_rows(result_rows(results))) == 2


# ---- paired comparison -------------------------------------------------------------------------------------


def _run_folder(tmp_path: Path, scores: dict[tuple[str, int], tuple[list[float], dict[str, list[float]]]]) -> Path:
    """A run folder with results.json and one scores.csv per (model, seed)."""
    results = []
    for (model, seed), (good, defects) in scores.items():
        job_dir = tmp_path / "jobs" / f"{model}-tiny-washer-s{seed}"
        _write_scores(job_dir, good, defects)
        results.append(_result(job_dir, seed, 0.5, model=model))
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "results.json").write_text(json.dumps({"jobs": results}))
    return tmp_path


def _random_scores(
    rng: np.random.Generator, shift: float, size: int = 30
) -> tuple[list[float], dict[str, list[float]]]:
    """Good ~ N(0, 1), defective ~ N(shift, 1), drawn so both models share nothing but the image list."""
    return list(rng.normal(0, 1, size)), {"scratch": list(rng.normal(shift, 1, size))}


def test_identical_models_give_p_one_and_a_zero_interval(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(0)
    same = {seed: _random_scores(rng, 1.0) for seed in (0, 1)}
    folder = _run_folder(tmp_path, {(m, s): same[s] for m in ("A", "B") for s in (0, 1)})
    cells = paired_cells(load_results(folder), "A", "B", folder)
    result = paired_bootstrap(cells, bootstrap_draws(cells, 200))
    assert (result.difference, result.low, result.high, result.p) == (0.0, 0.0, 0.0, 1.0)
    assert delong(cells).p == 1.0
    assert run_benchmark_cli(["compare", str(folder), "A", "B", "--samples", "200"]) == 0
    assert "Overall: Δ image AUROC = +0.000, 95 % interval [+0.000, +0.000], p = 1 (paired bootstrap)" in (
        capsys.readouterr().out
    )


def test_clearly_better_model_gives_small_p(tmp_path: Path) -> None:
    """A separates the classes well (shift 3), B barely (shift 0.3), on the same 60 images per seed."""
    rng = np.random.default_rng(1)
    scores = {}
    for seed in (0, 1):
        good_a, defect_a = _random_scores(rng, 3.0)
        good_b, defect_b = _random_scores(rng, 0.3)
        scores[("A", seed)], scores[("B", seed)] = (good_a, defect_a), (good_b, defect_b)
    folder = _run_folder(tmp_path, scores)
    cells = paired_cells(load_results(folder), "A", "B", folder)
    boot = paired_bootstrap(cells, bootstrap_draws(cells, 300))
    expected = np.mean([auroc(c.a, c.labels) - auroc(c.b, c.labels) for c in cells])
    assert boot.difference == pytest.approx(expected)
    assert boot.difference > 0.3
    assert 0 < boot.low < boot.difference < boot.high
    assert boot.p < 0.05
    assert delong(cells).p < 0.05
    assert delong(cells).difference == pytest.approx(expected)
    # reversed: the same test, the sign flips
    reverse = paired_cells(load_results(folder), "B", "A", folder)
    assert paired_bootstrap(reverse, bootstrap_draws(reverse, 300)).difference == pytest.approx(-expected)


def test_delong_matches_auroc_and_the_bootstrap_spread() -> None:
    """The placement values average to the AUROC (ties half) and DeLong's SE is the bootstrap's, within 15 %."""
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 80)
    a = np.round(rng.normal(labels * 1.0, 1), 1)  # rounded: ties inside and across the classes
    b = np.round(a + rng.normal(0, 0.8, labels.size), 1)
    v10, v01 = _placements(a, labels)
    assert v10.mean() == pytest.approx(auroc(a, labels))
    assert v01.mean() == pytest.approx(auroc(a, labels))
    cell = Cell("d", "c", 0, tuple(map(str, range(labels.size))), labels, a, b)
    result = delong([cell])
    se = abs(result.difference) / math.sqrt(2) / _inverse_erfc(result.p)
    spread = bootstrap_draws([cell], 1000).std()
    assert se == pytest.approx(spread, rel=0.15)


def _inverse_erfc(p: float) -> float:
    """DeLong's p = erfc(|z| / √2), so its SE is |Δ| / (√2 · erfcinv(p))."""
    from scipy.special import erfcinv

    return float(erfcinv(p))


def test_compare_refuses_different_images_or_seeds(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rng = np.random.default_rng(3)
    good, defects = _random_scores(rng, 1.0)
    folder = _run_folder(
        tmp_path,
        {
            ("A", 0): (good, defects),
            ("A", 1): (good, defects),
            ("B", 0): (good[:-1], defects),
            ("C", 0): (good, defects),
        },
    )
    assert main([str(folder), "A", "B"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0
    assert "not run on the same seeds and categories" in error  # B has no seed 1
    assert main([str(folder), "A", "C", "--samples", "50"]) == 2
    assert "not run on the same seeds" in capsys.readouterr().err
    assert run_benchmark_cli(["compare", str(folder), "B", "C"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("anomalib-crr benchmark compare: error: B and C were not evaluated on the same test")
    assert error.count("\n") == 0
    assert main([str(folder), "A", "Z"]) == 2
    assert "model 'Z' has no finished job" in capsys.readouterr().err


def test_seeds_on_the_same_images_share_one_image_draw(tmp_path: Path) -> None:
    """Two seeds that gave the same scores are one test set: the interval is that of one seed, not √2 narrower."""
    rng = np.random.default_rng(4)
    scores = {("A", 0): _random_scores(rng, 1.0), ("B", 0): _random_scores(rng, 0.5)}
    one = _run_folder(tmp_path / "one", scores)
    two = _run_folder(tmp_path / "two", {**scores, ("A", 1): scores[("A", 0)], ("B", 1): scores[("B", 0)]})
    results = []
    for folder in (one, two):
        cells = paired_cells(load_results(folder), "A", "B", folder)
        results.append((paired_bootstrap(cells, bootstrap_draws(cells, 200)), delong(cells)))
    assert results[0] == results[1]
