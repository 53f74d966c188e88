# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""``slurm``: one SLURM job per benchmark job, submitted through ``submitit``.

Each SLURM job runs the same job process (``python -m anomalib_crr.benchmark.job_main``) and writes its
``result.json`` and ``log.txt`` straight into the run folder, so the run folder must be on a filesystem the
compute nodes share with the submitting node (as ``$HOME`` or ``/scratch`` are on most clusters); submitit's
own files (sbatch script, stdout/stderr, pickles) go to ``<run>/slurm/``.

- Resources per job: partition, account, QOS, time limit (``slurm`` section or ``--partition`` ...) and
  ``{gpus, cpus, memory_gb}`` (the model entry's, else the executor section's, else 4 CPUs / 16 GB).
- Pre-emption and time-outs: the job function is ``submitit.helpers.Checkpointable``, so a pre-empted (or
  timed-out) job is requeued by submitit and starts the job again from the beginning.
- ``--detach`` submits, records the SLURM ids in ``<run>/slurm/submitted.json`` and returns; the next
  invocation adopts the jobs still queued or running (it never submits the same job twice), waits for them and
  writes the report from their results.
- ``--dry-run`` writes the sbatch script each job would get to ``<run>/slurm/dry_run/`` and submits nothing.
- Job states come from ``squeue``/``scontrol``, which work without SLURM's accounting database.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import submitit

from ..config import BenchmarkConfig, ConfigError, JobSpec
from .base import EXECUTION_ENV, THREADS_ENV, Executor, Submission, execution_record, job_command, job_environment
from .options import ExecutorOptions

REGISTRY = "submitted.json"


class SlurmJobFunction(submitit.helpers.Checkpointable):
    """What a SLURM job runs: the job process, with its log appended to the job folder's ``log.txt``.

    ``Checkpointable`` makes submitit requeue the job (with this same function) when SLURM pre-empts it or
    its time limit is near.
    """

    def __init__(self, job_file: str, env: dict[str, str]) -> None:
        self.job_file = job_file
        self.env = env

    def __call__(self) -> int:
        """Run the job process; returns its exit code."""
        job_dir = Path(self.job_file).parent
        env = {**os.environ, **self.env}
        record = json.loads(env.get(EXECUTION_ENV, "{}"))
        record["slurm_job_id"] = os.environ.get("SLURM_JOB_ID")
        env[EXECUTION_ENV] = json.dumps(record)
        with (job_dir / "log.txt").open("a") as log:
            log.write(f"--- SLURM job {os.environ.get('SLURM_JOB_ID')} on {os.uname().nodename} ---\n")
            log.flush()
            return subprocess.call(job_command(self.job_file), stdout=log, stderr=subprocess.STDOUT, env=env)


def _parameters(options: ExecutorOptions, job: JobSpec) -> dict[str, Any]:
    """Submitit parameters of one job (only those set, so the cluster's defaults apply otherwise)."""
    resources = options.job_resources(job.model.resources)
    slurm = options.slurm
    params: dict[str, Any] = {
        "name": job.job_id,
        "timeout_min": int(slurm.get("time_min", 240)),
        "cpus_per_task": int(resources.get("cpus", 4)),
        "slurm_partition": slurm.get("partition"),
        "slurm_account": slurm.get("account"),
        "slurm_qos": slurm.get("qos"),
        "slurm_setup": list(slurm.get("setup") or []) or None,
        "slurm_additional_parameters": dict(slurm.get("additional") or {}) or None,
    }
    if resources.get("gpus"):
        params["gpus_per_node"] = int(resources["gpus"])
    if resources.get("memory_gb"):
        params["mem_gb"] = float(resources["memory_gb"])
    return {k: v for k, v in params.items() if v is not None}


def _job_env(options: ExecutorOptions, job: JobSpec, offline: bool) -> dict[str, str]:
    """Only the variables the benchmark adds (the job inherits the SLURM node's environment)."""
    resources = options.job_resources(job.model.resources)
    timing = "exclusive GPU: the SLURM job owns its GPU(s)" if resources.get("gpus") else "SLURM CPU allocation"
    added = job_environment(offline, {EXECUTION_ENV: execution_record("slurm", timing, resources=resources)})
    added = {k: v for k, v in added.items() if os.environ.get(k) != v}
    added[THREADS_ENV] = str(int(resources.get("cpus", 4)))
    return added


def _make_executor(folder: Path, options: ExecutorOptions) -> submitit.AutoExecutor:
    cluster = options.slurm.get("cluster", "slurm")  # "local" runs submitit's local executor (no SLURM)
    return submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)


def write_sbatch_scripts(options: ExecutorOptions, config: BenchmarkConfig, jobs: list[JobSpec]) -> list[Path]:
    """``--dry-run``: the sbatch script of every job, written to ``<run>/slurm/dry_run/<job>.sbatch``."""
    folder = config.output / "slurm"
    out = folder / "dry_run"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for job in jobs:
        executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
        executor.update_parameters(**_parameters(options, job))
        slurm = executor._executor
        text = slurm._make_submission_file_text(slurm._submitit_command_str, "dry-run")
        path = out / f"{job.job_id}.sbatch"
        path.write_text(text)
        paths.append(path)
    return paths


class SlurmExecutor(Executor):
    """Submit each job to SLURM (or adopt it if an earlier ``--detach`` run already did) and watch the queue."""

    name = "slurm"

    def __init__(self, options: ExecutorOptions, offline: bool, run_dir: Path) -> None:
        cluster = options.slurm.get("cluster", "slurm")
        if cluster == "slurm" and shutil.which("sbatch") is None:
            msg = "--executor slurm: `sbatch` is not on PATH (run it on a SLURM login node, or use --executor pool)"
            raise ConfigError(msg)
        self.options = options
        self.offline = offline
        self.folder = run_dir / "slurm"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.registry_path = self.folder / REGISTRY
        self.registry: dict[str, dict[str, Any]] = (
            json.loads(self.registry_path.read_text()) if self.registry_path.is_file() else {}
        )
        self.uses_squeue = cluster == "slurm"
        self.waits = not options.detach

    def has_room(self, running: int) -> bool:
        """SLURM queues the jobs itself."""
        del running
        return True

    def _save_registry(self) -> None:
        tmp = self.registry_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.registry, indent=2))
        tmp.replace(self.registry_path)

    def start(self, job: JobSpec, job_dir: Path) -> Submission:
        """Adopt the job's earlier submission if it is still queued or running, else submit it."""
        known = self.registry.get(job.job_id)
        if known and known.get("spec_hash") == job.spec_hash and self.uses_squeue and _state(known["slurm_id"]):
            return Submission(
                job=job,
                job_dir=job_dir,
                handle={"slurm_id": known["slurm_id"], "job": None},
                started=float(known.get("submitted", time.time())),
                where=f"slurm job {known['slurm_id']} (submitted earlier)",
            )
        executor = _make_executor(self.folder, self.options)
        executor.update_parameters(**_parameters(self.options, job))
        (job_dir / "log.txt").write_text("")
        submitted = executor.submit(
            SlurmJobFunction(str(job_dir / "job.json"), _job_env(self.options, job, self.offline))
        )
        self.registry[job.job_id] = {"slurm_id": submitted.job_id, "spec_hash": job.spec_hash, "submitted": time.time()}
        self._save_registry()
        return Submission(
            job=job,
            job_dir=job_dir,
            handle={"slurm_id": submitted.job_id, "job": submitted},
            where=f"slurm job {submitted.job_id}",
        )

    def poll(self, submission: Submission) -> int | None:
        """0/1 once the job wrote its result; -1 when it left the queue without one."""
        result = submission.job_dir / "result.json"
        if result.is_file():
            status = json.loads(result.read_text()).get("status")
            return 0 if status == "ok" else 1
        slurm_id = submission.handle["slurm_id"]
        if self.uses_squeue:
            state = _state(slurm_id)
            if state:
                submission.handle["last_state"] = state
                return None
        elif not submission.handle["job"].done():
            return None
        time.sleep(1.0)  # a result written just before the job left the queue
        if result.is_file():
            return self.poll(submission)
        return -1

    def cancel(self, submission: Submission) -> None:
        """``scancel`` the job and wait until it left the queue."""
        slurm_id = submission.handle["slurm_id"]
        if not self.uses_squeue:
            submission.handle["job"].cancel(check=False)
            return
        subprocess.call(["scancel", str(slurm_id)])
        for _ in range(60):
            if not _state(slurm_id):
                return
            time.sleep(1.0)

    def failure_reason(self, submission: Submission, code: int) -> str | None:
        """The SLURM state and where submitit kept the job's stderr."""
        del code
        slurm_id = submission.handle["slurm_id"]
        state = _final_state(slurm_id) if self.uses_squeue else "ended"
        stderr = self.folder / str(slurm_id) / f"{slurm_id}_0_log.err"
        return f"SLURM job {slurm_id} ended ({state}) without a result; SLURM stderr: {stderr}"


def _state(slurm_id: str) -> str | None:
    """The job's state while it is in the queue (PENDING, RUNNING, REQUEUED, ...), else ``None``."""
    out = subprocess.run(
        ["squeue", "-h", "-j", str(slurm_id), "-o", "%T"],
        capture_output=True,
        text=True,
        check=False,
    )
    state = out.stdout.strip()
    return state or None


def _final_state(slurm_id: str) -> str:
    """``scontrol``'s JobState for a job that left the queue (kept for a few minutes), else ``unknown``."""
    out = subprocess.run(
        ["scontrol", "show", "job", str(slurm_id)],
        capture_output=True,
        text=True,
        check=False,
    )
    for token in out.stdout.split():
        if token.startswith("JobState="):
            return token.split("=", 1)[1]
    return "state unknown"
