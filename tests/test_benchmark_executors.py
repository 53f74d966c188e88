"""Benchmark executors on real engines: a local Ray cluster, a real single-node SLURM, Ctrl-C and resume.

SLURM: ``.ci/run`` installs Debian's ``slurm-wlm`` + ``munge`` and starts a single-node cluster
(``.ci/start_slurm.sh``) before the suite and sets ``ANOMALIB_CRR_REQUIRE_SLURM=1``, so there a missing SLURM
fails these tests; elsewhere they are skipped when no controller answers.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import psutil
import pytest
import yaml

from anomalib_crr.benchmark import ConfigError, run

from .helpers import PADIM_ENTRY, PATCHCORE_ENTRY, as_in_a_terminal, small_benchmark_config, wait_for

JOB_MODULE = "anomalib_crr.benchmark.job"


def _config(tmp_path: Path, root: Path, models: list[dict], **top: object) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({**small_benchmark_config(root, models), **top}))
    return path


def _cli(config: Path, output: Path, *extra: str) -> subprocess.Popen[str]:
    """``anomalib-crr benchmark`` in its own process (as a user starts it), output captured."""
    command = [sys.executable, "-m", "anomalib_crr", "benchmark", "--config", str(config), "--output", str(output)]
    return subprocess.Popen(
        [*command, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ},
        preexec_fn=as_in_a_terminal,  # noqa: PLW1509 - only restores SIGINT's default before exec
    )


def _job_processes(marker: str) -> list[psutil.Process]:
    """Running job processes whose command line contains ``marker`` (a job id or run folder)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(process.info.get("cmdline") or [])
        if JOB_MODULE in cmdline and marker in cmdline:
            found.append(process)
    return found


# --- Ctrl-C and resume across executors ------------------------------------------------------------------------


def test_ctrl_c_stops_every_pool_job_and_local_finishes_without_recomputing(tiny_dataset: Path, tmp_path: Path) -> None:
    slow_padim = {**PADIM_ENTRY, "name": "PadimSlow", "trainer": {"max_epochs": 40}}  # runs long enough to interrupt
    config = _config(tmp_path, tiny_dataset, [PADIM_ENTRY, PATCHCORE_ENTRY, slow_padim])
    output = tmp_path / "run"
    runner = _cli(config, output, "--executor", "pool", "--workers", "2", "--no-exclusive-timing")
    finished = wait_for(
        lambda: [p for p in output.glob("jobs/*/result.json") if json.loads(p.read_text())["status"] == "ok"],
        240,
        "a first finished pool job",
    )
    wait_for(lambda: _job_processes(str(output)), 120, "a running job after the first finished")
    runner.send_signal(signal.SIGINT)  # what Ctrl-C sends
    out, _ = runner.communicate(timeout=120)
    assert runner.returncode == 130, out
    assert "interrupted: stopped" in out
    assert "every job it started was stopped" in out
    time.sleep(1.0)
    assert not _job_processes(str(output)), "a job process outlived Ctrl-C"
    kept = {p.parent.name: p.stat().st_mtime_ns for p in output.glob("jobs/*/result.json")}
    assert {Path(p).parent.name for p in map(str, finished)} <= set(kept)
    assert len(kept) < 3, "Ctrl-C came after every job had finished; the test proves nothing"
    report = (output / "report.md").read_text()
    assert "## Not run yet" in report  # the report was written from what had finished

    lines: list[str] = []
    summary = run(config, output=output, executor="local", echo=lines.append)
    assert not summary.failed
    assert sorted(summary.skipped) == sorted(kept)
    assert len(summary.ran) == 3 - len(kept)
    for job_id, mtime in kept.items():  # nothing finished was recomputed or overwritten
        assert (output / "jobs" / job_id / "result.json").stat().st_mtime_ns == mtime
    frame = pd.read_csv(output / "results.csv")
    assert set(frame["model"]) == {"Padim", "Patchcore", "PadimSlow"}
    assert set(frame["executor"]) == {"pool", "local"} if kept else {"local"}


def test_missing_extra_names_it(tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real_find_spec(name, *a)
    )
    config = _config(tmp_path, tiny_dataset, [PADIM_ENTRY])
    with pytest.raises(ConfigError, match=r'pip install "anomalib-crr\[ray\]"'):
        run(config, output=tmp_path / "run", executor="ray", echo=lambda _: None)
    assert not (tmp_path / "run" / "jobs").exists()


# --- Ray: a real local cluster started by the test -------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class RayCluster:
    """A running test cluster: its address and the file holding its token."""

    address: str
    token_file: Path


RAY_AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


def _env_without_ray_auth() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in RAY_AUTH_VARIABLES}


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> RayCluster:
    """``ray start --head`` as a current cluster runs: token authentication on, advertised on 127.0.0.1 (2 CPUs).

    The token lives in a file of the test's own (not ``~/.ray``), so the driver only gets in when the CLI is
    given that file. Stopped after the module.
    """
    ray_cli = str(Path(sys.executable).parent / "ray")
    port = _free_port()
    token_file = tmp_path_factory.mktemp("ray_auth") / "auth_token"
    token_file.write_text(secrets.token_hex(32))
    token_file.chmod(0o600)
    env = {
        **_env_without_ray_auth(),
        "RAY_USAGE_STATS_ENABLED": "0",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token_file),
    }
    subprocess.run(
        [
            ray_cli,
            "start",
            "--head",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",
            "--dashboard-host=127.0.0.1",
            "--num-cpus=2",
            "--object-store-memory=200000000",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        check=True,
        env=env,
        capture_output=True,
        timeout=180,
    )
    yield RayCluster(f"127.0.0.1:{port}", token_file)
    subprocess.run([ray_cli, "stop", "--force"], env=env, capture_output=True, timeout=120, check=False)


def _ray_cli(config: Path, output: Path, cluster: RayCluster, *extra: str) -> subprocess.Popen[str]:
    """``anomalib-crr benchmark --executor ray`` on ``cluster``, given its token file, without Ray's auth variables."""
    command = [sys.executable, "-m", "anomalib_crr", "benchmark", "--config", str(config), "--output", str(output)]
    return subprocess.Popen(
        [*command, "--executor", "ray", "--ray-address", cluster.address, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**_env_without_ray_auth(), "HOME": str(output.parent)},  # no ~/.ray/auth_token to fall back on
    )


def _assert_token_nowhere(cluster: RayCluster, output: Path) -> None:
    token = cluster.token_file.read_text().strip()
    for path in output.rglob("*"):
        if path.is_file() and path.suffix in {".json", ".csv", ".md", ".html", ".txt", ".yaml"}:
            assert token not in path.read_text(errors="replace"), f"the Ray token was written into {path}"


@contextlib.contextmanager
def _stopped_at_exit(runner: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """Kill the CLI (and with it its Ray tasks) if the test ends while it runs, so a failure leaves nothing behind."""
    try:
        yield runner
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.communicate(timeout=60)


# A Ray worker's first task waits for the worker process to start and import torch and anomalib: seconds on an idle
# machine, minutes on a loaded one (seen in CI: 8 minutes with two other trainings on the same two cores).
FIRST_TASK_START_S = 900


def _kill_worker_of(job_name: str) -> tuple[int, int]:
    """SIGKILL the Ray worker running ``job_name``'s job process; returns (worker pid, job pid)."""
    job = wait_for(lambda: _job_processes(f"anomalib-crr-{job_name}"), FIRST_TASK_START_S, f"{job_name}'s job process")[
        0
    ]
    time.sleep(2.0)  # well into the job
    worker = job.parent()
    assert "python" in worker.name() or "ray" in " ".join(worker.cmdline()).lower()
    worker.send_signal(signal.SIGKILL)
    return worker.pid, job.pid


def test_ray_jobs_run_on_the_cluster_and_a_killed_worker_is_retried_then_reported(
    ray_cluster: RayCluster, tiny_dataset: Path, tmp_path: Path
) -> None:
    config = _config(tmp_path, tiny_dataset, [PADIM_ENTRY, PATCHCORE_ENTRY], executor={"resources": {"cpus": 1}})
    output = tmp_path / "run"
    padim = "Padim__tiny__per_category__washer__seed0"
    token = ("--ray-auth-token-file", str(ray_cluster.token_file))
    with _stopped_at_exit(_ray_cli(config, output, ray_cluster, *token, "--retries", "1")) as runner:
        worker_pid, job_pid = _kill_worker_of(padim)
        out, _ = runner.communicate(timeout=900)
    assert runner.returncode == 0, out
    results = {d.name: json.loads((d / "result.json").read_text()) for d in (output / "jobs").iterdir()}
    assert results[padim]["status"] == "ok"
    assert results[padim]["execution"]["pid"] != job_pid  # a new attempt ran the job
    assert results[padim]["execution"]["worker_pid"] != worker_pid
    for result in results.values():
        assert result["execution"]["executor"] == "ray"
        assert result["execution"]["resources"] == {"cpus": 1, "gpus": 0}
        assert Path(result["log"]) == output / "jobs" / result["job_id"] / "log.txt"
        assert "Engine" in Path(result["log"]).read_text() or Path(result["log"]).stat().st_size > 0
    frame = pd.read_csv(output / "results.csv")
    assert sorted(set(frame["model"])) == ["Padim", "Patchcore"]
    assert "## Failed jobs\n\nnone" in (output / "report.md").read_text()
    _assert_token_nowhere(ray_cluster, output)


def test_ray_lost_worker_without_retries_is_reported_failed(
    ray_cluster: RayCluster, tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token from Ray's own variable ($RAY_AUTH_TOKEN_PATH, no option) is used too."""
    config = _config(tmp_path, tiny_dataset, [PADIM_ENTRY])
    output = tmp_path / "run"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(ray_cluster.token_file))
    command = [sys.executable, "-m", "anomalib_crr", "benchmark", "--config", str(config), "--output", str(output)]
    runner = subprocess.Popen(
        [*command, "--executor", "ray", "--ray-address", ray_cluster.address, "--retries", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    with _stopped_at_exit(runner):
        _kill_worker_of("Padim__tiny")
        out, _ = runner.communicate(timeout=600)
    assert runner.returncode == 1, out
    result = json.loads((output / "jobs" / "Padim__tiny__per_category__washer__seed0" / "result.json").read_text())
    assert result["status"] == "failed"
    assert "Ray task lost after 0 retries" in result["error"]
    assert "Ray task lost" in (output / "report.md").read_text().split("## Failed jobs")[1]


@pytest.mark.parametrize("token", ["wrong", "none"])
def test_ray_cluster_refusing_the_driver_is_one_line_and_exit_2(
    ray_cluster: RayCluster, tiny_dataset: Path, tmp_path: Path, token: str
) -> None:
    """A wrong token, or none, for an authenticated cluster: one line naming address and mode, exit 2, bounded."""
    config = _config(tmp_path, tiny_dataset, [PADIM_ENTRY])
    output = tmp_path / "run"
    extra: tuple[str, ...] = ()
    if token == "wrong":
        wrong = tmp_path / "wrong_token"
        wrong.write_text(secrets.token_hex(32))
        extra = ("--ray-auth-token-file", str(wrong))
    started = time.monotonic()
    with _stopped_at_exit(_ray_cli(config, output, ray_cluster, *extra)) as runner:
        out, _ = runner.communicate(timeout=180)
    assert runner.returncode == 2, out
    assert time.monotonic() - started < 150
    errors = [line for line in out.splitlines() if line.startswith("anomalib-crr benchmark: error:")]
    assert len(errors) == 1, out
    assert ray_cluster.address in errors[0]
    assert ("token authentication (token from file" if token == "wrong" else "with no authentication") in errors[0]
    assert "--ray-auth-token-file" in errors[0]
    assert "Traceback" not in out
    assert not list(output.glob("jobs/*/result.json"))


def test_ray_auth_follows_rays_token_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from anomalib_crr.benchmark.executors.ray_auth import resolve_ray_auth

    for name in RAY_AUTH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_ray_auth(None).mode == "disabled"  # no token anywhere
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("secret-in-home")
    assert resolve_ray_auth(None).source == str(tmp_path / ".ray" / "auth_token")  # Ray's default file
    monkeypatch.setenv("RAY_AUTH_TOKEN", "secret-in-env")
    auth = resolve_ray_auth(None)
    assert (auth.mode, auth.source) == ("token", "$RAY_AUTH_TOKEN")
    assert "secret" not in auth.describe()
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # an explicit mode is respected
    assert resolve_ray_auth(None).mode == "disabled"
    with pytest.raises(ConfigError, match="contradicts RAY_AUTH_MODE=disabled"):
        resolve_ray_auth(tmp_path / ".ray" / "auth_token")
    monkeypatch.delenv("RAY_AUTH_MODE")
    with pytest.raises(ConfigError, match=r"--ray-auth-token-file '.*missing' does not exist"):
        resolve_ray_auth(tmp_path / "missing")
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        resolve_ray_auth(tmp_path / "empty")


def test_ray_job_larger_than_every_node_fails_at_once(
    ray_cluster: RayCluster, tiny_dataset: Path, tmp_path: Path
) -> None:
    config = _config(tmp_path, tiny_dataset, [PADIM_ENTRY], executor={"resources": {"cpus": 64}})
    output = tmp_path / "run"
    with _stopped_at_exit(
        _ray_cli(config, output, ray_cluster, "--ray-auth-token-file", str(ray_cluster.token_file))
    ) as runner:
        out, _ = runner.communicate(timeout=180)
    assert runner.returncode == 1, out
    result = json.loads((output / "jobs" / "Padim__tiny__per_category__washer__seed0" / "result.json").read_text())
    assert result["status"] == "failed"
    assert "asks for 64 CPUs, but the largest node of the Ray cluster has 2" in result["error"]


# --- SLURM: a real single-node cluster ------------------------------------------------------------------------


def _slurm_up() -> bool:
    if shutil.which("sinfo") is None:
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, check=False)
    return out.returncode == 0 and any(s in out.stdout for s in ("idle", "mix", "alloc"))


@pytest.fixture
def slurm() -> None:
    if not _slurm_up():
        if os.environ.get("ANOMALIB_CRR_REQUIRE_SLURM"):
            pytest.fail("no SLURM controller answers, but .ci/run started one (see .ci/start_slurm.sh)")
        pytest.skip("no SLURM here; .ci/run starts a single-node one (.ci/start_slurm.sh)")


SLURM_ARGS = ("--executor", "slurm", "--cpus-per-job", "1", "--mem-gb", "2", "--time-min", "10")


def _registry(output: Path) -> dict:
    return json.loads((output / "slurm" / "submitted.json").read_text())


def test_slurm_jobs_are_submitted_run_and_collected(slurm: None, tiny_dataset: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, tiny_dataset, [PADIM_ENTRY, PATCHCORE_ENTRY])
    output = tmp_path / "run"
    runner = _cli(config, output, *SLURM_ARGS)
    out, _ = runner.communicate(timeout=600)
    assert runner.returncode == 0, out
    registry = _registry(output)
    assert len(registry) == 2
    for job_id, entry in registry.items():
        result = json.loads((output / "jobs" / job_id / "result.json").read_text())
        assert result["status"] == "ok"
        assert result["execution"]["executor"] == "slurm"
        assert result["execution"]["slurm_job_id"] == str(entry["slurm_id"])
        assert f"--- SLURM job {entry['slurm_id']}" in (output / "jobs" / job_id / "log.txt").read_text()
        assert f"slurm job {entry['slurm_id']}" in out
    assert sorted(set(pd.read_csv(output / "results.csv")["model"])) == ["Padim", "Patchcore"]


def test_slurm_detach_then_a_second_invocation_collects(slurm: None, tiny_dataset: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, tiny_dataset, [PATCHCORE_ENTRY])
    output = tmp_path / "run"
    job_id = "Patchcore__tiny__per_category__washer__seed0"
    from anomalib_crr.cli import _benchmark_parser, _executor_overrides

    args = _benchmark_parser().parse_args(["--config", str(config), *SLURM_ARGS, "--detach"])
    lines: list[str] = []
    summary = run(config, output=output, executor=_executor_overrides(args), echo=lines.append)
    assert summary.submitted == [job_id]
    assert not summary.ran
    slurm_id = _registry(output)[job_id]["slurm_id"]
    assert any("--detach" in line for line in lines)

    args = _benchmark_parser().parse_args(["--config", str(config), *SLURM_ARGS])
    summary = run(config, output=output, executor=_executor_overrides(args), echo=lines.append)
    assert not summary.failed
    assert _registry(output)[job_id]["slurm_id"] == slurm_id  # adopted, not submitted twice
    assert any(f"slurm job {slurm_id} (submitted earlier)" in line for line in lines), lines
    result = json.loads((output / "jobs" / job_id / "result.json").read_text())
    assert result["status"] == "ok"
    assert result["execution"]["slurm_job_id"] == str(slurm_id)
    assert (output / "jobs" / job_id / "log.txt").read_text().count("--- SLURM job") == 1
    assert list(pd.read_csv(output / "results.csv")["model"].unique()) == ["Patchcore"]


def test_slurm_dry_run_writes_the_sbatch_lines_and_submits_nothing(tiny_dataset: Path, tmp_path: Path) -> None:
    gpu_padim = {**PADIM_ENTRY, "resources": {"gpus": 1, "cpus": 8, "memory_gb": 32}}
    config = _config(tmp_path, tiny_dataset, [gpu_padim, PATCHCORE_ENTRY])
    output = tmp_path / "run"
    from anomalib_crr.cli import run_benchmark_cli

    code = run_benchmark_cli(
        [
            *("--config", str(config), "--output", str(output), "--executor", "slurm", "--dry-run"),
            *("--partition", "gpu", "--account", "lab", "--qos", "high", "--time-min", "30"),
        ]
    )
    assert code == 0
    padim = (output / "slurm" / "dry_run" / "Padim__tiny__per_category__washer__seed0.sbatch").read_text()
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",
        "#SBATCH --qos=high",
        "#SBATCH --time=30",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --mem=32GB",
        "#SBATCH --job-name=Padim__tiny__per_category__washer__seed0",
        "#SBATCH --signal=USR2@90",  # submitit's pre-emption signal: the job is checkpointed and requeued
    ):
        assert line in padim.splitlines(), line
    patchcore = (output / "slurm" / "dry_run" / "Patchcore__tiny__per_category__washer__seed0.sbatch").read_text()
    assert "#SBATCH --cpus-per-task=4" in patchcore  # the slurm default when neither entry nor CLI says
    assert "--gpus-per-node" not in patchcore
    assert not (output / "slurm" / "submitted.json").exists()
    assert not list(output.glob("jobs/*/result.json"))


def test_progress_board_counts_elapsed_and_eta() -> None:
    from anomalib_crr.benchmark.progress import ProgressBoard

    lines: list[str] = []
    board = ProgressBoard(4, lines.append, interactive=False, line_every_s=0.0)
    now = time.time()
    board.job_started("a", "pid 1", now - 100)
    board.job_started("b", "pid 2", now - 30)
    board.job_ended("a", ok=True)  # took 100 s
    line = board.status_line()
    assert "1 done, 1 running (b 00:30), 2 queued, 0 failed" in line
    # 2 queued x 100 s + b's remaining 70 s, over the 2 jobs seen running at once: 135 s
    assert board.eta_s() == pytest.approx(135, abs=2)
    assert "ETA 02:1" in line
    board.job_ended("b", ok=False)
    assert "1 failed" in board.status_line()
    assert lines, "a log gets the one-line status"
    with ProgressBoard(2, lines.append, interactive=True) as live:  # the rich panel on a terminal
        live.job_started("c", "ray node x", time.time())
        title = str(live._panel().title)
        assert "0 done · 1 running · 1 queued · 0 failed" in title
