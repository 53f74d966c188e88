# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""``anomalib-crr``: anomalib's CLI with the plugin's models loaded, plus a ``demo`` subcommand.

``anomalib-crr train --model CRR ...`` behaves exactly like ``anomalib train`` after
``import anomalib_crr``, so it works even where the start-up hook (``anomalib_crr_hook.pth``) is
disabled or was not installed. ``anomalib-crr demo`` is described in :mod:`anomalib_crr.demo`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``anomalib-crr`` console script and of ``python -m anomalib_crr``."""
    args = list(sys.argv[1:] if argv is None else argv)
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
