# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""``ray``: each job is a Ray task that runs the job process on whichever worker Ray picks.

The task asks for the job's resources (``{gpus, cpus, memory_gb}``: the model entry's, else the executor
section's, else 1 CPU). On the worker it writes ``job.json`` into a private temporary folder, runs
``python -m anomalib_crr.benchmark.job_main`` there (so a crash or OOM kills that process, not the worker), and
returns the exit code with the job's files (``result.json``, ``log.txt``, ``predictions.pt``) as bytes; the
driver writes them into the run folder. Nodes therefore need no shared filesystem, only the datasets at the
paths the config names and this package installed.

A task whose worker or node dies is retried ``retries`` times by Ray (``max_retries``); after that the job is
reported failed with Ray's reason. The job process dies with its worker (``PR_SET_PDEATHSIG``), so a retry
never races an orphan.

An existing cluster is reached with the authentication :mod:`.ray_auth` chooses (token authentication is Ray's
default since 2.59); a refused connection is a :class:`ConfigError` of one line (the CLI exits with 2), and a job
that asks for more than any node of the cluster has fails at once instead of waiting in Ray's queue forever.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ..config import JobSpec
from .base import (
    EXECUTION_ENV,
    Executor,
    Submission,
    die_with_parent,
    execution_record,
    job_command,
    job_environment,
)
from .options import ExecutorOptions
from .ray_auth import apply_ray_auth, connection_error, resolve_ray_auth

# Files of a job folder that travel back to the driver (the Engine's checkpoints do not).
RETURNED_FILES = ("result.json", "log.txt", "predictions.pt", "maps.npz", "scores.csv")


def run_job_on_worker(job_text: str, job_id: str, env: dict[str, str]) -> dict[str, Any]:
    """Ray task body: run one job process in a temporary folder and return its exit code and files."""
    with tempfile.TemporaryDirectory(prefix=f"anomalib-crr-{job_id}-") as workdir:
        job_file = Path(workdir) / "job.json"
        job_file.write_text(job_text)
        record = {**json.loads(env.get(EXECUTION_ENV, "{}")), "worker_pid": os.getpid()}
        with (Path(workdir) / "log.txt").open("w") as log:
            code = subprocess.call(
                job_command(job_file),
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env, EXECUTION_ENV: json.dumps(record)},
                preexec_fn=die_with_parent,
            )
        files = {
            name: (Path(workdir) / name).read_bytes() for name in RETURNED_FILES if (Path(workdir) / name).exists()
        }
    return {"code": code, "files": files, "node": socket.gethostname()}


class RayExecutor(Executor):
    """Jobs as Ray tasks on an existing cluster (``ray_address``) or on a local one started for the run."""

    name = "ray"

    def __init__(self, options: ExecutorOptions, offline: bool) -> None:
        import ray

        self.options = options
        self.offline = offline
        self.started_cluster = not ray.is_initialized() and options.ray_address is None
        self.auth = "local cluster started for the run"
        if not ray.is_initialized():
            if options.ray_address:
                self._connect(options.ray_address, options.ray_auth_token_file)
            else:
                ray.init(include_dashboard=False, log_to_driver=False)
        self.largest_node = _largest_node()
        self._remote = ray.remote(run_job_on_worker)

    def _connect(self, address: str, token_file: str | None) -> None:
        """``ray.init(address)`` with the authentication of :func:`resolve_ray_auth`; one-line error if refused."""
        import ray

        auth = resolve_ray_auth(token_file)
        apply_ray_auth(auth, token_file)
        self.auth = auth.describe()
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
            if ray.is_initialized():  # pragma: no cover - a failure after connecting
                ray.shutdown()
            raise connection_error(address, auth, exc) from None

    def has_room(self, running: int) -> bool:
        """Ray queues tasks by their resources itself: every job is submitted at once."""
        del running
        return True

    def start(self, job: JobSpec, job_dir: Path) -> Submission:
        """Submit the job's task with its resources and retry budget."""
        resources = self.options.job_resources(job.model.resources)
        too_large = _exceeds(resources, self.largest_node)
        if too_large:
            (job_dir / "log.txt").write_text(too_large + "\n")
            return Submission(job=job, job_dir=job_dir, handle={"error": too_large}, where="not submitted")
        timing = (
            "exclusive GPU: each task owns its GPU(s); CPU shared"
            if resources.get("gpus")
            else "shared: Ray packs CPU tasks onto nodes by their CPU request; other tasks may share the node"
        )
        env = job_environment(self.offline, {EXECUTION_ENV: execution_record("ray", timing, resources=resources)})
        env = {k: v for k, v in env.items() if k not in os.environ or os.environ[k] != v}  # only what we add
        if resources.get("cpus"):
            env["ANOMALIB_CRR_JOB_THREADS"] = str(max(1, int(resources["cpus"])))
        ref = self._remote.options(
            num_cpus=float(resources.get("cpus", 1)),
            num_gpus=float(resources.get("gpus", 0)),
            memory=int(float(resources["memory_gb"]) * 1024**3) if resources.get("memory_gb") else None,
            max_retries=self.options.retries,
            retry_exceptions=False,  # only lost workers/nodes are retried; a job's own error is its result
            name=job.job_id,
        ).remote((job_dir / "job.json").read_text(), job.job_id, env)
        (job_dir / "log.txt").write_text(f"submitted to Ray as task {job.job_id}; the log arrives when it ends\n")
        return Submission(job=job, job_dir=job_dir, handle={"ref": ref}, where=f"ray task, {resources}")

    def poll(self, submission: Submission) -> int | None:
        """Collect the task's files into the run folder once it ended (or record why it was lost)."""
        import ray

        if "ref" not in submission.handle:  # refused before submission (see start)
            return -1
        ref = submission.handle["ref"]
        ready, _ = ray.wait([ref], timeout=0)
        if not ready:
            return None
        try:
            returned = ray.get(ref)
        except ray.exceptions.RayError as exc:
            first = str(exc).strip().splitlines()
            submission.handle["error"] = (
                f"Ray task lost after {self.options.retries} retr{'y' if self.options.retries == 1 else 'ies'}: "
                f"{type(exc).__name__}: {first[0] if first else ''}"
            )
            return -1
        for name, data in returned["files"].items():
            (submission.job_dir / name).write_bytes(data)
        _point_result_at_run_folder(submission.job_dir, returned)
        submission.where = f"ray node {returned['node']}"
        return int(returned["code"])

    def cancel(self, submission: Submission) -> None:
        """Force-cancel the task (its worker, and with it the job process, is killed)."""
        import ray

        if "ref" in submission.handle:
            ray.cancel(submission.handle["ref"], force=True)

    def failure_reason(self, submission: Submission, code: int) -> str | None:
        """Ray's reason for a lost task."""
        del code
        return submission.handle.get("error")

    def finish(self) -> None:
        """Shut down the local cluster this run started (an existing cluster is left running)."""
        import ray

        if self.started_cluster and ray.is_initialized():
            ray.shutdown()


def _largest_node() -> dict[str, float]:
    """The most CPUs, GPUs and memory (GB) any one live node of the connected cluster offers."""
    import ray

    largest = {"cpus": 0.0, "gpus": 0.0, "memory_gb": 0.0}
    for node in ray.nodes():
        if not node.get("Alive", True):
            continue
        offered = node.get("Resources", {})
        largest["cpus"] = max(largest["cpus"], float(offered.get("CPU", 0)))
        largest["gpus"] = max(largest["gpus"], float(offered.get("GPU", 0)))
        largest["memory_gb"] = max(largest["memory_gb"], float(offered.get("memory", 0)) / 1024**3)
    return largest


def _exceeds(resources: dict[str, Any], largest: dict[str, float]) -> str | None:
    """Why no node can ever run a task with ``resources`` (Ray would queue it forever), or ``None``."""
    for key, label, flag in (
        ("cpus", "CPUs", "--cpus-per-job"),
        ("gpus", "GPUs", "--gpus-per-job"),
        ("memory_gb", "GB of memory", "--mem-gb"),
    ):
        wanted = float(resources.get(key) or 0)
        if wanted > largest[key]:
            return (
                f"not submitted: the job asks for {wanted:g} {label}, but the largest node of the Ray cluster has "
                f"{largest[key]:.4g}; lower resources.{key} (or {flag}) "
                "or add a larger node"
            )
    return None


def _point_result_at_run_folder(job_dir: Path, returned: dict[str, Any]) -> None:
    """The result names the worker's temporary log path; point it at the run folder's copy."""
    from ..job import RESULT, write_result

    path = job_dir / RESULT
    if not path.is_file():
        return
    result = json.loads(path.read_text())
    result["log"] = str(job_dir / "log.txt")
    result.setdefault("execution", {})["node"] = returned["node"]
    write_result(job_dir, result)
