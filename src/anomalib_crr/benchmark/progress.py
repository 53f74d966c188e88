# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""One progress display for sequential and concurrent jobs.

On a terminal it is a live ``rich`` panel (jobs done / running / queued / failed, each running job's elapsed
time and where it runs, overall elapsed time and ETA); in a log (CI, ``nohup``, SLURM output) the same facts
are printed as one line a minute, so a log never fills with redraws.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table


def format_seconds(seconds: float) -> str:
    """``mm:ss`` or ``h:mm:ss``."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:d}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class ProgressBoard:
    """Counts and per-job timers of one invocation.

    Args:
        total: Jobs this invocation will run (finished ones skipped are not counted).
        echo: Where event lines go (job started / done / failed).
        interactive: Draw a live panel (default: whether stderr is a terminal).
        line_every_s: In a log, how often the one-line status is printed.
    """

    def __init__(
        self,
        total: int,
        echo: Callable[[str], None],
        interactive: bool | None = None,
        line_every_s: float = 60.0,
    ) -> None:
        self.total = total
        self.echo = echo
        self.interactive = sys.stderr.isatty() if interactive is None else interactive
        self.line_every_s = line_every_s
        self.started_at = time.time()
        self.durations: list[float] = []
        self.failed = 0
        self.running: dict[str, tuple[float, str]] = {}
        self.concurrency = 1
        self._last_line = time.time()
        self._live: Live | None = None

    def __enter__(self) -> ProgressBoard:
        if self.interactive and self.total:
            self._live = Live(self._panel(), console=Console(stderr=True), refresh_per_second=2, transient=True)
            self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    @property
    def done(self) -> int:
        """Jobs that ended (ok or failed) in this invocation."""
        return len(self.durations)

    @property
    def queued(self) -> int:
        """Jobs not started yet."""
        return self.total - self.done - len(self.running)

    def job_started(self, job_id: str, where: str, started: float) -> None:
        """A job began (``started`` is its wall-clock start)."""
        self.running[job_id] = (started, where)
        self.concurrency = max(self.concurrency, len(self.running))
        self.refresh()

    def job_ended(self, job_id: str, ok: bool) -> None:
        """A job ended; its duration feeds the ETA."""
        started, _ = self.running.pop(job_id, (time.time(), ""))
        self.durations.append(time.time() - started)
        self.failed += 0 if ok else 1
        self.refresh()

    def eta_s(self) -> float | None:
        """Remaining wall time: the mean job duration so far spread over the concurrency seen (None before any)."""
        if not self.durations:
            return None
        mean = sum(self.durations) / len(self.durations)
        now = time.time()
        left = self.queued * mean + sum(max(mean - (now - s), 0.0) for s, _ in self.running.values())
        return left / max(1, min(self.concurrency, self.queued + len(self.running)) or 1)

    def status_line(self) -> str:
        """Counts, running jobs with their elapsed time, total elapsed time and ETA, on one line."""
        now = time.time()
        eta = self.eta_s()
        running = ", ".join(f"{job} {format_seconds(now - s)}" for job, (s, _) in self.running.items())
        return (
            f"progress: {self.done - self.failed} done, {len(self.running)} running"
            f"{f' ({running})' if running else ''}, {self.queued} queued, {self.failed} failed; "
            f"elapsed {format_seconds(now - self.started_at)}, ETA {format_seconds(eta) if eta is not None else '?'}"
        )

    def _panel(self) -> Table:
        now = time.time()
        eta = self.eta_s()
        table = Table(
            title=(
                f"{self.done - self.failed} done · {len(self.running)} running · {self.queued} queued · "
                f"{self.failed} failed — elapsed {format_seconds(now - self.started_at)}, "
                f"ETA {format_seconds(eta) if eta is not None else '?'}"
            ),
            title_justify="left",
        )
        table.add_column("running job")
        table.add_column("where")
        table.add_column("elapsed", justify="right")
        for job, (started, where) in self.running.items():
            table.add_row(job, where, format_seconds(now - started))
        return table

    def refresh(self) -> None:
        """Redraw the panel, or print the status line if a minute has passed (logs)."""
        if self._live is not None:
            self._live.update(self._panel())
        elif time.time() - self._last_line >= self.line_every_s and self.running:
            self.echo(self.status_line())
            self._last_line = time.time()

    def print(self, line: str) -> None:
        """An event line (above the live panel on a terminal)."""
        if self._live is not None and self.echo is print:
            self._live.console.print(line, markup=False, highlight=False)
        else:
            self.echo(line)


def describe(result: dict[str, Any]) -> str:
    """``mAD 0.812`` for a finished job, or its error for a failed one."""
    if result.get("status") == "ok":
        rows = result["categories"]
        return f"mAD {sum(r['mAD'] for r in rows.values()) / len(rows):.3f}"
    return f"{result.get('error')} (log: {result.get('log')})"
