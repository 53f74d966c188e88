# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""``anomalib-crr``: anomalib's CLI with the plugin's models loaded, plus ``demo`` and ``benchmark`` subcommands.

``anomalib-crr train --model CRR ...`` behaves exactly like ``anomalib train`` after
``import anomalib_crr``, so it works even where the start-up hook (``anomalib_crr_hook.pth``) is
disabled or was not installed. One difference: ``anomalib-crr predict``/``export`` accept a training run's
``config.yaml`` (``--config``), which ``anomalib predict``/``export`` 2.7 refuse for every model.
``anomalib-crr demo`` is described in :mod:`anomalib_crr.demo`,
``anomalib-crr benchmark`` in :mod:`anomalib_crr.benchmark`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Keys that ``anomalib train`` writes into a run's config.yaml but that ``predict`` and ``export`` refuse
# ("Subcommand 'export' does not accept option 'optimizer'"), for every anomalib model in 2.7.
TRAINING_ONLY_CONFIG_KEYS = ("optimizer", "lr_scheduler")


def _benchmark_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomalib-crr benchmark",
        description="Train and test every model x dataset x seed of a benchmark config, each job in its own "
        "process (here, on a pool of workers, on Ray or on SLURM); write results.csv/json, report.md and plots.",
    )
    parser.add_argument("--config", required=True, help="benchmark YAML, e.g. configs/benchmark/smoke.yaml")
    parser.add_argument("--output", default=None, help="run folder (default: results/benchmark/<config name>)")
    parser.add_argument("--only", default=None, help="run only jobs whose id matches this glob or contains this text")
    parser.add_argument("--rerun", action="store_true", help="redo finished jobs (those selected by --only)")
    where = parser.add_argument_group("executor (default: the config's `executor` section, else local)")
    where.add_argument("--executor", choices=["local", "pool", "ray", "slurm"], default=None)
    where.add_argument("--workers", type=int, default=None, help="pool: jobs at once (default: one per GPU)")
    where.add_argument(
        "--gpus-per-job", type=int, default=None, help="GPUs per job (pool default 1; ray/slurm default 0)"
    )
    where.add_argument(
        "--exclusive-timing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pool on CPU: re-time each job's inference alone after the run (default on)",
    )
    where.add_argument("--ray-address", default=None, help="ray: auto or host:port (default: a local cluster)")
    where.add_argument(
        "--ray-auth-token-file",
        default=None,
        help="ray: file with the cluster's token (default: $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token)",
    )
    where.add_argument("--retries", type=int, default=None, help="ray: retries of a task lost with its node")
    where.add_argument("--partition", default=None, help="slurm partition")
    where.add_argument("--account", default=None, help="slurm account")
    where.add_argument("--qos", default=None, help="slurm QOS")
    where.add_argument("--time-min", type=int, default=None, help="slurm time limit per job, minutes")
    where.add_argument("--cpus-per-job", type=float, default=None, help="ray/slurm: CPUs per job")
    where.add_argument("--mem-gb", type=float, default=None, help="ray/slurm: memory per job, GB")
    where.add_argument("--dry-run", action="store_true", help="slurm: write and print the sbatch scripts only")
    where.add_argument("--detach", action="store_true", help="slurm: submit and return; rerun to collect")
    return parser


def _executor_overrides(args: argparse.Namespace) -> dict[str, object]:
    """The command line's executor settings (``None`` = keep the config's)."""
    resources = {"cpus": args.cpus_per_job, "memory_gb": args.mem_gb, "gpus": args.gpus_per_job}
    return {
        "name": args.executor,
        "workers": args.workers,
        "gpus_per_job": args.gpus_per_job,
        "exclusive_timing": args.exclusive_timing,
        "ray_address": args.ray_address,
        "ray_auth_token_file": args.ray_auth_token_file,
        "retries": args.retries,
        "resources": {k: v for k, v in resources.items() if v is not None} or None,
        "slurm": {"partition": args.partition, "account": args.account, "qos": args.qos, "time_min": args.time_min},
        "dry_run": args.dry_run or None,
        "detach": args.detach or None,
    }


def run_benchmark_cli(argv: Sequence[str]) -> int:
    """``anomalib-crr benchmark --config FILE [--output DIR] [--only PATTERN] [--rerun] [--executor ...]``.

    Exit codes: 0 all jobs finished (or were submitted with ``--detach``), 1 some job failed (listed in the
    report), 2 bad config or missing executor extra (nothing ran), 130 interrupted (Ctrl-C stopped every job).
    """
    args = _benchmark_parser().parse_args(list(argv))

    from anomalib_crr.benchmark import ConfigError, run

    try:
        summary = run(
            args.config, output=args.output, only=args.only, rerun=args.rerun, executor=_executor_overrides(args)
        )
    except ConfigError as exc:
        print(f"anomalib-crr benchmark: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("anomalib-crr benchmark: interrupted; every job it started was stopped", file=sys.stderr)
        return 130
    if summary.failed:
        print(
            f"anomalib-crr benchmark: {len(summary.failed)} job(s) failed: {', '.join(summary.failed)}", file=sys.stderr
        )
        return 1
    return 0


def accept_training_run_config(args: list[str], workdir: Path) -> list[str]:
    """Let ``predict``/``export`` take a training run's ``--config`` file, as ``test`` does.

    The file is never edited: when it holds the training-only keys, a copy without them is written to
    ``workdir`` and the arguments point to the copy. Every other key (model, data, trainer) is kept, so the
    model is rebuilt with the training run's init args.
    """
    import yaml

    if not args or args[0] not in {"predict", "export"}:
        return args
    updated = list(args)
    for index, arg in enumerate(args):
        if arg in {"--config", "-c"} and index + 1 < len(args):
            position, path, prefix = index + 1, args[index + 1], ""
        elif arg.startswith("--config="):
            position, path, prefix = index, arg.removeprefix("--config="), "--config="
        else:
            continue
        config_path = Path(path)
        if not config_path.is_file():
            continue  # anomalib reports a missing file itself
        config = yaml.safe_load(config_path.read_text())
        if not isinstance(config, dict) or not any(key in config for key in TRAINING_ONLY_CONFIG_KEYS):
            continue
        filtered = {key: value for key, value in config.items() if key not in TRAINING_ONLY_CONFIG_KEYS}
        copy = workdir / f"{index}_{config_path.name}"
        copy.write_text(yaml.safe_dump(filtered, sort_keys=False))
        updated[position] = prefix + str(copy)
    return updated


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``anomalib-crr`` console script and of ``python -m anomalib_crr``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "benchmark":
        raise SystemExit(run_benchmark_cli(args[1:]))
    if args and args[0] == "demo":
        from anomalib_crr.demo import run_demo

        try:
            run_demo(args[1:])
        except (FileNotFoundError, FileExistsError, RuntimeError, ValueError) as exc:
            # Bad input (weights, folders, sizes) gets its message, not a stack trace.
            print(f"anomalib-crr demo: error: {exc}", file=sys.stderr)
            print(
                "Offline, run `anomalib-crr demo --encoder-weights none` (random-init backbone) or pass a local "
                "checkpoint with `--encoder-weights /path/to/weights.safetensors` (the ViT-S/14 DINOv2 for CRR, "
                "tf_efficientnet_lite0 for MFRNet).",
                file=sys.stderr,
            )
            raise SystemExit(2) from None
        return

    from anomalib.cli.cli import AnomalibCLI
    from anomalib.loggers import configure_logger

    import anomalib_crr  # noqa: F401  (registers CRR with anomalib)

    configure_logger()
    with tempfile.TemporaryDirectory(prefix="anomalib_crr_config_") as workdir:
        args = accept_training_run_config(args, Path(workdir))
        if not (args and args[0] == "export") or "--help" in args or "-h" in args:
            AnomalibCLI(args=args)
            return
        run_export(AnomalibCLI(args=args, run=False))


def run_export(cli: Any) -> None:
    """``export`` for any anomalib model, with the plugin's OpenVINO export.

    For an OpenVINO IR this adds, to anomalib's built-in models as to CRR and MFRNet: ``INT8_PTQ`` / ``INT8_ACQ``
    that work (anomalib 2.7's own route fails for every model on the calibration images' size and, past that,
    quantises the scoring into constant outputs) and the OpenVINO Model API metadata (anomalib writes none). The
    model built by anomalib's CLI is given ``QuantizedOpenVinoExport`` (a subclass made here; CRR and MFRNet have it
    already), and anomalib's ``Engine.export`` runs as usual: it reloads the checkpoint through the same class. Bad
    input (no ``--data``, too few images, an unfitted model, a refused model, nncf missing) ends with its message,
    not a traceback.
    """
    from anomalib_crr.deploy import CalibrationDataError, QuantizationCheckError, UnfittedModelError
    from anomalib_crr.models.components.export import QuantizedOpenVinoExport

    model = cli.model
    if not isinstance(model, QuantizedOpenVinoExport):
        base = type(model)
        model.__class__ = type(base.__name__, (QuantizedOpenVinoExport, base), {"__module__": base.__module__})
    kwargs = cli._prepare_subcommand_kwargs("export")
    try:
        cli.engine.export(**kwargs)
    except (CalibrationDataError, QuantizationCheckError, UnfittedModelError) as error:
        print(f"anomalib-crr export: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except ModuleNotFoundError as error:
        if error.name != "nncf":
            raise
        print(f"anomalib-crr export: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
