# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Run a benchmark config: validate, write generated data, run each job in its own process, write the report.

Layout of a run folder (``--output``, default ``results/benchmark/<config name>``)::

    data/<name>/...                 generated datasets (``generate`` entries), reused by later runs
    jobs/<job id>/job.json          what the job process runs
    jobs/<job id>/log.txt           its stdout and stderr
    jobs/<job id>/result.json       written when it ends: metrics per category and cost, or the error
    results.csv, results.json, report.md, *.png, runs.jsonl (wall time of every invocation)

A finished job (``status: ok`` and the same spec hash) is skipped on the next run unless ``rerun``; a
result whose job definition changed is never overwritten silently: the run stops before any job and asks
for ``--rerun`` or another ``--output``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import BenchmarkConfig, ConfigError, JobSpec, check_paths, expand_jobs, load_config, validate_classes
from .job import RESULT, write_result


@dataclass
class RunSummary:
    """What one invocation did."""

    output: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def ok(self) -> bool:
        """Whether every job of the config that has a result finished without error."""
        return not self.failed


def _format_s(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def read_result(job_dir: Path) -> dict[str, Any] | None:
    """The job's ``result.json``, or ``None`` if it has none (or an unreadable one)."""
    path = job_dir / RESULT
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _generate(config: BenchmarkConfig, echo: Callable[[str], None]) -> None:
    """Write the config's generated datasets under ``<output>/data`` (once; an existing one is reused)."""
    from anomalib_crr.data.synthetic_mvtec import SYNTHETIC_CATEGORIES, make_synthetic_mvtec

    for entry in config.generate:
        settings = {k: v for k, v in entry.items() if k != "name"}
        root = config.output / "data" / str(entry["name"])
        marker = root / ".generated.json"
        if marker.is_file():
            if json.loads(marker.read_text()) != settings:
                msg = (
                    f"{root} was generated with other settings than generate '{entry['name']}' now asks for; "
                    "use another --output (nothing was overwritten)"
                )
                raise ConfigError(msg)
            continue
        categories = settings.pop("categories", list(SYNTHETIC_CATEGORIES))
        try:
            make_synthetic_mvtec(root, categories=categories, **settings)
        except (ValueError, TypeError) as exc:
            msg = f"generate '{entry['name']}': {exc}"
            raise ConfigError(msg) from None
        marker.write_text(json.dumps({k: v for k, v in entry.items() if k != "name"}))
        echo(f"generated dataset '{entry['name']}' in {root}")


def _run_process(job: JobSpec, job_dir: Path, offline: bool, echo: Callable[[str], None], label: str) -> int:
    """Run one job process with a live progress line; returns its exit code (124 on timeout)."""
    job_file = job_dir / "job.json"
    job_file.write_text(json.dumps({**job.to_dict(), "spec_hash": job.spec_hash}, indent=2, default=str))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if offline:
        env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    interactive = sys.stderr.isatty()
    start = time.perf_counter()
    with (job_dir / "log.txt").open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "anomalib_crr.benchmark.job", str(job_file)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        last_print = start
        while True:
            try:
                code = process.wait(timeout=1.0)
                break
            except KeyboardInterrupt:  # the job runs in its own session: stop it too, then stop the run
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise
            except subprocess.TimeoutExpired:
                elapsed = time.perf_counter() - start
                if job.model.timeout_s and elapsed > float(job.model.timeout_s):
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                    code = 124
                    break
                if interactive:
                    sys.stderr.write(f"\r{label} running {_format_s(elapsed)}")
                    sys.stderr.flush()
                elif elapsed - (last_print - start) >= 60:
                    echo(f"{label} running {_format_s(elapsed)}")
                    last_print = time.perf_counter()
    if interactive:
        sys.stderr.write("\r")
    return code


def _failed_result(job: JobSpec, job_dir: Path, code: int) -> dict[str, Any]:
    """A result for a job process that ended without writing one (killed, out of memory, timed out)."""
    log = job_dir / "log.txt"
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
    reason = f"timed out after {job.model.timeout_s} s" if code == 124 else f"process ended with exit code {code}"
    if code < 0:
        reason = f"process killed by signal {-code} (out of memory?)"
    return {
        "status": "failed",
        "job_id": job.job_id,
        "model": job.model.name,
        "dataset": job.dataset.name,
        "mode": job.mode,
        "seed": job.seed,
        "error": f"{reason}; last log line: {tail[0] if tail else '(empty log)'}"[:500],
        "log": str(job_dir / "log.txt"),
        "spec_hash": job.spec_hash,
    }


def run(
    config: str | Path | dict[str, Any],
    output: str | Path | None = None,
    only: str | None = None,
    rerun: bool = False,
    echo: Callable[[str], None] = print,
) -> RunSummary:
    """Run (or resume) a benchmark and write ``results.csv``, ``results.json``, ``report.md`` and the plots.

    Args:
        config: A YAML path or a loaded mapping (see ``configs/benchmark/*.yaml``).
        output: Run folder (default: the config's ``output``, else ``results/benchmark/<name>``).
        only: Run only the jobs whose id matches this glob (or contains this text), e.g. ``MFRNet``.
        rerun: Redo jobs that already finished (only those selected by ``only``).
        echo: Where progress lines go.

    Returns:
        What ran, what was skipped, what failed, and the wall time.

    Raises:
        ConfigError: Any config problem, before any job starts.
    """
    from .report import write_outputs

    started = time.perf_counter()
    started_at = dt.datetime.now(dt.timezone.utc)
    cfg = load_config(config, output)
    validate_classes(cfg)
    all_jobs = expand_jobs(cfg)
    jobs = expand_jobs(cfg, only)
    if not jobs:
        msg = f"--only {only!r} matches no job; job ids look like {all_jobs[0].job_id!r}"
        raise ConfigError(msg)
    cfg.output.mkdir(parents=True, exist_ok=True)
    _generate(cfg, echo)
    check_paths(cfg)
    stale = []
    for job in jobs:
        previous = read_result(cfg.output / "jobs" / job.job_id)
        finished = previous is not None and previous.get("status") == "ok"
        if finished and previous.get("spec_hash") != job.spec_hash and not rerun:
            stale.append(job.job_id)
    if stale:
        msg = (  # failed jobs are simply run again
            f"{cfg.output}: the definition of {len(stale)} finished job(s) changed since their results were written "
            f"({', '.join(stale[:5])}{', ...' if len(stale) > 5 else ''}); pass --rerun to redo them or --output "
            "for a new run folder (nothing was overwritten)"
        )
        raise ConfigError(msg)

    summary = RunSummary(output=cfg.output)
    total = len(jobs)
    echo(f"benchmark '{cfg.name}': {total} job(s) -> {cfg.output}")
    for index, job in enumerate(jobs, start=1):
        job_dir = cfg.output / "jobs" / job.job_id
        job_dir.mkdir(parents=True, exist_ok=True)
        label = f"[{index}/{total}] {job.job_id}"
        previous = read_result(job_dir)
        if previous is not None and previous.get("status") == "ok" and not rerun:
            summary.skipped.append(job.job_id)
            echo(f"{label} skipped (finished; --rerun redoes it)")
            continue
        (job_dir / RESULT).unlink(missing_ok=True)
        echo(f"{label} started (elapsed total {_format_s(time.perf_counter() - started)})")
        job_start = time.perf_counter()
        code = _run_process(job, job_dir, cfg.offline, echo, label)
        result = read_result(job_dir)
        if result is None:
            result = _failed_result(job, job_dir, code)
            write_result(job_dir, result)
        summary.ran.append(job.job_id)
        took = _format_s(time.perf_counter() - job_start)
        if result["status"] == "ok":
            mean = result["categories"]
            mad = sum(r["mAD"] for r in mean.values()) / len(mean)
            echo(f"{label} done in {took}: mAD {mad:.3f}")
        else:
            summary.failed.append(job.job_id)
            echo(f"{label} FAILED in {took}: {result['error']} (log: {result['log']})")

    # Only results of the current job definitions count; older ones show as "not run yet".
    results = [
        r
        for j in all_jobs
        if (r := read_result(cfg.output / "jobs" / j.job_id)) is not None and r.get("spec_hash") == j.spec_hash
    ]
    summary.failed = sorted({r["job_id"] for r in results if r["status"] != "ok"})
    summary.wall_s = time.perf_counter() - started
    with (cfg.output / "runs.jsonl").open("a") as handle:
        record = {
            "started": started_at.isoformat(timespec="seconds"),
            "wall_s": round(summary.wall_s, 1),
            "only": only,
            "rerun": rerun,
            "ran": len(summary.ran),
            "skipped": len(summary.skipped),
            "failed": len(summary.failed),
        }
        handle.write(json.dumps(record) + "\n")
    write_outputs(cfg, all_jobs, results)
    echo(
        f"benchmark '{cfg.name}' finished in {_format_s(summary.wall_s)}: {len(summary.ran)} ran, "
        f"{len(summary.skipped)} skipped, {len(summary.failed)} failed; report: {cfg.output / 'report.md'}"
    )
    return summary
