# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""``anomalib-crr``: anomalib's CLI with the plugin's models loaded, plus ``demo`` and ``benchmark`` subcommands.

``anomalib-crr train --model CRR ...`` behaves exactly like ``anomalib train`` after
``import anomalib_crr``, so it works even where the start-up hook (``anomalib_crr_hook.pth``) is
disabled or was not installed. ``anomalib-crr demo`` is described in :mod:`anomalib_crr.demo`,
``anomalib-crr benchmark`` in :mod:`anomalib_crr.benchmark`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def run_benchmark_cli(argv: Sequence[str]) -> int:
    """``anomalib-crr benchmark --config FILE [--output DIR] [--only PATTERN] [--rerun]``; returns the exit code.

    Exit codes: 0 all jobs finished, 1 some job failed (listed in the report), 2 bad config (nothing ran).
    """
    parser = argparse.ArgumentParser(
        prog="anomalib-crr benchmark",
        description="Train and test every model x dataset x seed of a benchmark config, each job in its own "
        "process; write results.csv/json, report.md and plots to the run folder.",
    )
    parser.add_argument("--config", required=True, help="benchmark YAML, e.g. configs/benchmark/smoke.yaml")
    parser.add_argument("--output", default=None, help="run folder (default: results/benchmark/<config name>)")
    parser.add_argument("--only", default=None, help="run only jobs whose id matches this glob or contains this text")
    parser.add_argument("--rerun", action="store_true", help="redo finished jobs (those selected by --only)")
    args = parser.parse_args(list(argv))

    from anomalib_crr.benchmark import ConfigError, run

    try:
        summary = run(args.config, output=args.output, only=args.only, rerun=args.rerun)
    except ConfigError as exc:
        print(f"anomalib-crr benchmark: error: {exc}", file=sys.stderr)
        return 2
    if summary.failed:
        print(
            f"anomalib-crr benchmark: {len(summary.failed)} job(s) failed: {', '.join(summary.failed)}", file=sys.stderr
        )
        return 1
    return 0


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
    AnomalibCLI(args=args)


if __name__ == "__main__":
    main()
