# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Executor settings: the config's ``executor`` section, overridden by the command line.

```yaml
executor:
  name: pool              # local (default) | pool | ray | slurm
  workers: 2              # pool: concurrent jobs (default: one per visible GPU, else cores // 4)
  gpus_per_job: 1         # pool on GPUs: devices per job (disjoint CUDA_VISIBLE_DEVICES)
  exclusive_timing: true  # pool on CPU: re-time each job's inference alone at the end of the run
  retries: 1              # ray: retries of a task lost with its worker or node
  ray_address: auto       # ray: an existing cluster (auto or host:port); unset = a local one for the run
  ray_auth_token_file: ~/.ray/auth_token   # ray: the cluster's token (default: Ray's own sources, see ray_auth)
  resources: {gpus: 1, cpus: 8, memory_gb: 32}   # ray/slurm: what a job asks for (a model's own wins)
  slurm: {partition: gpu, account: lab, qos: normal, time_min: 240, array_parallelism: 64,
          setup: ["module load cuda"], additional: {constraint: a100}}
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError, _check_keys, parse_resources

EXECUTOR_NAMES = ("local", "pool", "ray", "slurm")
EXECUTOR_KEYS = {
    "name",
    "workers",
    "gpus_per_job",
    "exclusive_timing",
    "retries",
    "ray_address",
    "ray_auth_token_file",
    "resources",
    "slurm",
}
SLURM_KEYS = {"partition", "account", "qos", "time_min", "array_parallelism", "setup", "additional", "cluster"}
# What a job asks a cluster for when neither its model entry nor the executor section says.
DEFAULT_RESOURCES = {
    "ray": {"cpus": 1, "gpus": 0},
    "slurm": {"cpus": 4, "gpus": 0, "memory_gb": 16},
}


@dataclass
class ExecutorOptions:
    """Where and how many jobs run at once; see the module docstring for the YAML form."""

    name: str = "local"
    workers: int | None = None
    gpus_per_job: int = 1
    exclusive_timing: bool = True
    retries: int = 1
    ray_address: str | None = None
    ray_auth_token_file: str | None = None
    resources: dict[str, Any] = field(default_factory=dict)
    slurm: dict[str, Any] = field(default_factory=dict)
    dry_run: bool = False
    detach: bool = False
    poll_s: float = 1.0

    def job_resources(self, model_resources: dict[str, Any]) -> dict[str, Any]:
        """A job's resources: executor defaults, then the executor section, then the model entry."""
        return {**DEFAULT_RESOURCES.get(self.name, {}), **self.resources, **model_resources}


def parse_executor(section: dict[str, Any], overrides: dict[str, Any], where: str) -> ExecutorOptions:
    """The config's ``executor`` section with the command line's non-``None`` values on top.

    Raises:
        ConfigError: An unknown executor or key, or a value of the wrong kind.
    """
    values = dict(section or {})
    _check_keys(values, EXECUTOR_KEYS, f"{where}: executor")
    slurm = dict(values.pop("slurm", None) or {})
    _check_keys(slurm, SLURM_KEYS, f"{where}: executor.slurm")
    slurm.update({k: v for k, v in (overrides.pop("slurm", None) or {}).items() if v is not None})
    values.update({k: v for k, v in overrides.items() if v is not None})
    name = str(values.get("name", "local"))
    if name not in EXECUTOR_NAMES:
        msg = f"{where}: executor '{name}' is not one of {', '.join(EXECUTOR_NAMES)}"
        raise ConfigError(msg)
    for key in ("workers", "gpus_per_job"):
        if values.get(key) is not None and (not isinstance(values[key], int) or values[key] < 1):
            msg = f"{where}: executor.{key} must be a positive integer, got {values[key]!r}"
            raise ConfigError(msg)
    retries = values.get("retries", 1)
    if not isinstance(retries, int) or retries < 0:
        msg = f"{where}: executor.retries must be an integer >= 0, got {retries!r}"
        raise ConfigError(msg)
    return ExecutorOptions(
        name=name,
        workers=values.get("workers"),
        gpus_per_job=int(values.get("gpus_per_job", 1)),
        exclusive_timing=bool(values.get("exclusive_timing", True)),
        retries=retries,
        ray_address=values.get("ray_address"),
        ray_auth_token_file=values.get("ray_auth_token_file"),
        resources=parse_resources(values.get("resources"), f"{where}: executor.resources"),
        slurm=slurm,
        dry_run=bool(values.get("dry_run", False)),
        detach=bool(values.get("detach", False)),
        poll_s=float(values.get("poll_s", 1.0)),
    )
