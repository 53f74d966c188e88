# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Training logs of each job: the config's ``logger`` key, parsed here and built in the job process.

Why: a researcher checks the training curves before trusting a number; a benchmark that ran every job with
``logger=False`` left nothing to look at. Each job logs into ``jobs/<job id>/logs/``:

* ``logger: tensorboard`` (the default when ``tensorboard`` or ``tensorboardX`` is installed): TensorBoard event
  files, read with ``tensorboard --logdir <run>/jobs``.
* ``logger: csv`` (the default otherwise, so a plain install still keeps curves): ``logs/metrics.csv`` and
  ``logs/hparams.yaml`` from Lightning's ``CSVLogger``.
* ``logger: none`` (or ``false``): no logs, as before.
* ``logger: {class_path: lightning.pytorch.loggers.MLFlowLogger, init_args: {...}}``: any Lightning logger (a
  short name is looked up in ``lightning.pytorch.loggers``); ``save_dir`` defaults to the job's ``logs/`` when the
  class takes one and the config does not set it. MLflow and W&B need their own packages.

Logging does not change what a job computes, so it is not part of a job's spec hash: switching it on does not
make finished jobs stale. It never touches the timing pass either: latency is timed outside the trainer after
``test`` ended, when Lightning has already finalised (flushed and closed) every logger.
"""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

LOGS = "logs"
LOGGER_MODULES = ("lightning.pytorch.loggers",)
NAMED = {"auto", "tensorboard", "csv", "none"}


class LoggerConfigError(ValueError):
    """The ``logger`` key is invalid (the config loader turns it into a ``ConfigError``)."""


def tensorboard_available() -> bool:
    """Whether Lightning's ``TensorBoardLogger`` can write here (it needs ``tensorboard`` or ``tensorboardX``)."""
    return any(importlib.util.find_spec(name) is not None for name in ("tensorboard", "tensorboardX"))


def parse_logger(value: Any, where: str) -> dict[str, Any]:
    """The ``logger`` key as ``{"kind": ...}`` (and ``class_path``/``init_args`` for a logger class).

    Args:
        value: ``None`` (absent: ``auto``), a name (``tensorboard``, ``csv``, ``none``), ``false``, a class path,
            or a mapping ``{class_path, init_args}``.
        where: The config location, for messages.

    Raises:
        LoggerConfigError: Anything else, or ``tensorboard`` asked for where it is not installed.
    """
    if value is None:
        return {"kind": "auto"}
    if value is False:
        return {"kind": "none"}
    if isinstance(value, str) and value.lower() in NAMED:
        kind = value.lower()
        if kind == "tensorboard" and not tensorboard_available():
            msg = f"{where}: 'tensorboard' needs the tensorboard package (pip install tensorboard), or use 'csv'"
            raise LoggerConfigError(msg)
        return {"kind": kind}
    if isinstance(value, str) and "." in value:
        value = {"class_path": value}
    if isinstance(value, dict) and value.get("class_path") and set(value) <= {"class_path", "init_args"}:
        init_args = value.get("init_args") or {}
        if not isinstance(init_args, dict):
            msg = f"{where}.init_args: expected a mapping, got {init_args!r}"
            raise LoggerConfigError(msg)
        return {"kind": "class", "class_path": str(value["class_path"]), "init_args": dict(init_args)}
    msg = (
        f"{where}: expected one of {sorted(NAMED - {'auto'})}, false, or a Lightning logger "
        f"{{class_path: ..., init_args: {{...}}}}, got {value!r}"
    )
    raise LoggerConfigError(msg)


def logger_class(spec: dict[str, Any]) -> type:
    """The class of a ``kind: class`` logger (a short name is looked up in ``lightning.pytorch.loggers``)."""
    path = spec["class_path"]
    module_name, _, attr = path.rpartition(".")
    module = importlib.import_module(module_name or LOGGER_MODULES[0])
    return getattr(module, attr)


def build_logger(spec: dict[str, Any] | None, job_dir: Path) -> Any:
    """The Lightning logger of one job (``False`` for none); file loggers start from an empty ``logs/``."""
    kind = (spec or {"kind": "auto"})["kind"]
    if kind == "none":
        return False
    save_dir = job_dir / LOGS
    if kind == "auto":
        kind = "tensorboard" if tensorboard_available() else "csv"
    if kind in {"tensorboard", "csv"}:
        from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

        shutil.rmtree(save_dir, ignore_errors=True)  # a rerun's curves are not appended to the last run's
        cls = TensorBoardLogger if kind == "tensorboard" else CSVLogger
        return cls(save_dir=str(save_dir), name="", version="")
    import inspect

    init_args = dict((spec or {}).get("init_args") or {})
    cls = logger_class(spec)
    if "save_dir" in inspect.signature(cls.__init__).parameters and "save_dir" not in init_args:
        init_args["save_dir"] = str(save_dir)
    return cls(**init_args)


def describe_logger(spec: dict[str, Any] | None) -> str:
    """One line for the run log: which logger the jobs use and where they write."""
    kind = (spec or {"kind": "auto"})["kind"]
    if kind == "auto":
        kind = "tensorboard" if tensorboard_available() else "csv (tensorboard is not installed)"
    if kind == "class":
        kind = str((spec or {})["class_path"])
    return f"training logs: {kind}" + ("" if kind == "none" else f", in jobs/<job id>/{LOGS}/")
