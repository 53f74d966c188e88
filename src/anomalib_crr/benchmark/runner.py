# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Run a benchmark config: validate, write generated data, run each job in its own process, write the report.

Layout of a run folder (``--output``, default ``results/benchmark/<config name>``)::

    data/<name>/...                 generated datasets (``generate`` entries), reused by later runs
    jobs/<job id>/job.json          what the job process runs
    jobs/<job id>/log.txt           its stdout and stderr
    jobs/<job id>/result.json       written when it ends: metrics per category and cost, or the error
    results.csv, results.json, report.md, *.png, runs.jsonl (wall time of every invocation)
    manifest.json                   the report's time stamp and every report file's sha256 (see .atomic)

A finished job (``status: ok`` and the same spec hash) is skipped on the next run unless ``rerun``; a
result whose job definition changed is never overwritten silently: the run stops before any job and asks
for ``--rerun`` or another ``--output``.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .atomic import finish_pending
from .config import (
    BenchmarkConfig,
    ConfigError,
    JobSpec,
    apply_defaults,
    check_paths,
    expand_jobs,
    load_config,
    validate_classes,
)
from .executors import Executor, ExecutorOptions, Submission, make_executor, parse_executor
from .job import RESULT, moved_test_images_message, write_result
from .logs import describe_logger
from .progress import ProgressBoard, describe, format_seconds
from .retime import retime_leftovers


@dataclass
class RunSummary:
    """What one invocation did."""

    output: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    executor: str = "local"
    stopped: list[str] = field(default_factory=list)  # running when Ctrl-C came; no result, rerun next time
    submitted: list[str] = field(default_factory=list)  # left running on a cluster (slurm --detach)

    @property
    def ok(self) -> bool:
        """Whether every job of the config that has a result finished without error."""
        return not self.failed


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


def _failed_result(job: JobSpec, job_dir: Path, code: int, reason: str | None = None) -> dict[str, Any]:
    """A result for a job process that ended without writing one (killed, out of memory, timed out, lost)."""
    log = job_dir / "log.txt"
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.is_file() else []
    if reason is None:
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


@dataclass
class _Schedule:
    """The jobs of one invocation as they move from queued to running to ended."""

    queued: list[tuple[JobSpec, Path]]
    running: dict[str, Submission] = field(default_factory=dict)
    ended: list[str] = field(default_factory=list)


def _end_job(submission: Submission, code: int, executor: Executor, summary: RunSummary, board: ProgressBoard) -> None:
    """Record one ended job: its result (a ``failed`` one when the process wrote none) and the progress line."""
    job, job_dir = submission.job, submission.job_dir
    result = read_result(job_dir)
    if result is None or result.get("spec_hash") != job.spec_hash:
        reason = executor.failure_reason(submission, code)
        result = _failed_result(job, job_dir, code, reason)
        write_result(job_dir, result)
    summary.ran.append(job.job_id)
    ok = result["status"] == "ok"
    if not ok:
        summary.failed.append(job.job_id)
    board.job_ended(job.job_id, ok)
    took = format_seconds(time.time() - submission.started)
    board.print(f"{job.job_id} {'done' if ok else 'FAILED'} in {took}: {describe(result)}")
    test_set = result.get("test_set") or {}
    if ok and test_set.get("moved_to_val"):
        board.print(f"WARNING: {job.job_id}: {moved_test_images_message(test_set)}")


def _drive(schedule: _Schedule, executor: Executor, summary: RunSummary, board: ProgressBoard, poll_s: float) -> None:
    """Start jobs while the executor has room, poll the running ones, enforce timeouts, until all ended."""
    total = len(schedule.queued)
    index = 0
    while schedule.queued or schedule.running:
        while schedule.queued and executor.has_room(len(schedule.running)):
            job, job_dir = schedule.queued.pop(0)
            index += 1
            submission = executor.start(job, job_dir)
            schedule.running[job.job_id] = submission
            board.job_started(job.job_id, submission.where, submission.started)
            where = f" ({submission.where})" if submission.where else ""
            board.print(
                f"[{index}/{total}] {job.job_id} started{where} "
                f"(elapsed total {format_seconds(time.time() - board.started_at)})"
            )
        if not executor.waits:
            return
        for job_id, submission in list(schedule.running.items()):
            code = executor.poll(submission)
            timeout = submission.job.model.timeout_s
            if code is None and timeout and time.time() - submission.started > float(timeout):
                executor.cancel(submission)
                code = 124
            if code is not None:
                del schedule.running[job_id]
                schedule.ended.append(job_id)
                _end_job(submission, code, executor, summary, board)
        board.refresh()
        if schedule.running:
            time.sleep(poll_s)


def _stop_all(schedule: _Schedule, executor: Executor, board: ProgressBoard, summary: RunSummary) -> None:
    """Ctrl-C: stop every job this run started, say which, and leave them without a result (rerun next time)."""
    stopped = []
    for submission in schedule.running.values():
        executor.cancel(submission)
        result = read_result(submission.job_dir)
        if result is not None and result.get("status") == "ok" and result.get("spec_hash") == submission.job.spec_hash:
            summary.ran.append(submission.job.job_id)  # it finished before the runner polled it: keep it
            continue
        (submission.job_dir / RESULT).unlink(missing_ok=True)
        stopped.append(submission)
    summary.stopped = [s.job.job_id for s in stopped]
    board.print(
        f"interrupted: stopped {len(stopped)} running job(s) on '{executor.name}'"
        f"{': ' + ', '.join(summary.stopped) if stopped else ''}; {len(schedule.queued)} queued job(s) not started. "
        "They have no result and run again on the next invocation."
    )


def _prepare(jobs: list[JobSpec], output: Path, rerun: bool, summary: RunSummary, echo: Callable[[str], None]) -> list:
    """Skip finished jobs; write ``job.json`` of the others and clear their old (failed) result."""
    queued = []
    for job in jobs:
        job_dir = output / "jobs" / job.job_id
        job_dir.mkdir(parents=True, exist_ok=True)
        previous = read_result(job_dir)
        if previous is not None and previous.get("status") == "ok" and not rerun:
            summary.skipped.append(job.job_id)
            echo(f"{job.job_id} skipped (finished; --rerun redoes it)")
            continue
        (job_dir / RESULT).unlink(missing_ok=True)
        payload = {**job.to_dict(), "spec_hash": job.spec_hash}
        (job_dir / "job.json").write_text(json.dumps(payload, indent=2, default=str))
        queued.append((job, job_dir))
    return queued


# Long on purpose: the run's sequence (plan, execute, interrupt, re-time, report) in one place.
def run(  # noqa: PLR0915
    config: str | Path | dict[str, Any],
    output: str | Path | None = None,
    only: str | None = None,
    rerun: bool = False,
    echo: Callable[[str], None] = print,
    executor: ExecutorOptions | dict[str, Any] | str | None = None,
    interactive: bool | None = None,
) -> RunSummary:
    """Run (or resume) a benchmark and write ``results.csv``, ``results.json``, ``report.md`` and the plots.

    Args:
        config: A YAML path or a loaded mapping (see ``configs/benchmark/*.yaml``).
        output: Run folder (default: the config's ``output``, else ``results/benchmark/<name>``).
        only: Run only the jobs whose id matches this glob (or contains this text), e.g. ``MFRNet``.
        rerun: Redo jobs that already finished (only those selected by ``only``).
        echo: Where progress lines go.
        executor: Where jobs run: a name (``local``, ``pool``, ``ray``, ``slurm``), or settings that override the
            config's ``executor`` section (see :mod:`.executors.options`). Default: the config's, else ``local``.
        interactive: Draw a live progress panel (default: when stderr is a terminal).

    Returns:
        What ran, what was skipped, what failed, what was submitted or stopped, and the wall time.

    Raises:
        ConfigError: Any config problem (or a missing executor extra), before any job starts.
        KeyboardInterrupt: After Ctrl-C stopped every running job and the report was written.
    """
    from .report import write_outputs

    started = time.perf_counter()
    started_at = dt.datetime.now(dt.timezone.utc)
    cfg = load_config(config, output)
    overrides = {"name": executor} if isinstance(executor, str) else dict(executor or {})
    if isinstance(executor, ExecutorOptions):
        options = executor
    else:
        options = parse_executor(cfg.executor, overrides, str(cfg.path or "<config>"))
    validate_classes(cfg)
    for line in apply_defaults(cfg):
        echo(line)
    echo(describe_logger(cfg.logger))
    all_jobs = expand_jobs(cfg)
    jobs = expand_jobs(cfg, only)
    if not jobs:
        msg = f"--only {only!r} matches no job; job ids look like {all_jobs[0].job_id!r}"
        raise ConfigError(msg)
    _check_stale(cfg.output, jobs, rerun)
    cfg.output.mkdir(parents=True, exist_ok=True)
    if finish_pending(cfg.output):  # a report committed by a process killed while moving its files
        echo(f"completed the report a stopped run left in {cfg.output}")
    _generate(cfg, echo)
    check_paths(cfg)
    summary = RunSummary(output=cfg.output, executor=options.name)
    if options.dry_run:
        _dry_run(options, cfg, jobs, echo)
        return summary
    pool = make_executor(options, cfg, cfg.output)
    schedule = _Schedule(queued=_prepare(jobs, cfg.output, rerun, summary, echo))
    echo(f"benchmark '{cfg.name}': {len(jobs)} job(s) on '{pool.name}' -> {cfg.output}")
    interrupted = False
    with ProgressBoard(len(schedule.queued), echo, interactive) as board:
        try:
            _drive(schedule, pool, summary, board, options.poll_s)
        except KeyboardInterrupt:
            interrupted = True
            _stop_all(schedule, pool, board, summary)
        finally:
            pool.finish()
    if not pool.waits:
        summary.submitted = list(schedule.running)
        echo(
            f"submitted {len(summary.submitted)} job(s) to '{pool.name}' and returned (--detach); run the same "
            "command again to collect their results and write the report"
        )
    elif not interrupted and _retimes_here(pool, options):
        try:
            retime_leftovers(cfg.output, cfg.offline, echo)
        except KeyboardInterrupt:  # the models not yet re-timed stay for the next run; the report is still written
            interrupted = True
            echo("interrupted while re-timing; the jobs not yet re-timed keep shared figures until the next run")
    _finish(cfg, all_jobs, summary, started, started_at, only, rerun, write_outputs, echo)
    if interrupted:
        raise KeyboardInterrupt
    return summary


# Executors whose jobs ran on this machine, so a model they kept can be re-timed here.
_RETIMING_EXECUTORS = ("local", "pool")


def _retimes_here(pool: Executor, options: ExecutorOptions) -> bool:
    """Whether this run re-times the kept timing models of its run folder on this machine.

    Why not only ``pool`` with kept models: a ``pool`` run stopped by Ctrl-C leaves its finished jobs' models
    for the next run, which may resume with ``local``; the machine is as free after a ``local`` run as after a
    ``pool`` one. Ray and SLURM jobs ran elsewhere (timing here would time another machine), and
    ``--no-exclusive-timing`` asks for no re-timing at all.
    """
    return options.exclusive_timing and pool.name in _RETIMING_EXECUTORS


def _check_stale(output: Path, jobs: list[JobSpec], rerun: bool) -> None:
    """Refuse to overwrite finished results whose job definition changed (unless ``rerun``)."""
    stale = []
    for job in jobs:
        previous = read_result(output / "jobs" / job.job_id)
        finished = previous is not None and previous.get("status") == "ok"
        if finished and previous.get("spec_hash") != job.spec_hash and not rerun:
            stale.append(job.job_id)
    if stale:
        msg = (  # failed jobs are simply run again
            f"{output}: the definition of {len(stale)} finished job(s) changed since their results were written "
            f"({', '.join(stale[:5])}{', ...' if len(stale) > 5 else ''}); pass --rerun to redo them or --output "
            "for a new run folder (nothing was overwritten)"
        )
        raise ConfigError(msg)


def _dry_run(options: ExecutorOptions, cfg: BenchmarkConfig, jobs: list[JobSpec], echo: Callable[[str], None]) -> None:
    """Write (and print) what would be submitted, without submitting anything."""
    if options.name != "slurm":
        for job in jobs:
            echo(f"would run {job.job_id} on '{options.name}'")
        return
    from .executors.slurm import write_sbatch_scripts

    for path in write_sbatch_scripts(options, cfg, jobs):
        echo(f"# {path}")
        echo(path.read_text())


def _finish(
    cfg: BenchmarkConfig,
    all_jobs: list[JobSpec],
    summary: RunSummary,
    started: float,
    started_at: dt.datetime,
    only: str | None,
    rerun: bool,
    write_outputs: Callable[..., Any],
    echo: Callable[[str], None],
) -> None:
    """Record the invocation in ``runs.jsonl`` and write the report from every current result."""
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
            "executor": summary.executor,
            "only": only,
            "rerun": rerun,
            "ran": len(summary.ran),
            "skipped": len(summary.skipped),
            "failed": len(summary.failed),
            "stopped": len(summary.stopped),
            "submitted": len(summary.submitted),
        }
        handle.write(json.dumps(record) + "\n")
    write_outputs(cfg, all_jobs, results)
    echo(
        f"benchmark '{cfg.name}' finished in {format_seconds(summary.wall_s)}: {len(summary.ran)} ran, "
        f"{len(summary.skipped)} skipped, {len(summary.failed)} failed; report: {cfg.output / 'report.md'}"
    )
