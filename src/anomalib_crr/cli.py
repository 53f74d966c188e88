# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""``anomalib-crr``: anomalib's CLI with the plugin's models loaded, plus ``demo`` and ``benchmark`` subcommands.

Over 400 lines on purpose: one subcommand parser per command (train/test/predict/export pass-through, demo,
benchmark and its compare/publish), each with the short errors of the own-data flow.

``anomalib-crr train --model CRR ...`` behaves exactly like ``anomalib train`` after
``import anomalib_crr``, so it works even where the start-up hook (``anomalib_crr_hook.pth``) is
disabled or was not installed. One difference: ``anomalib-crr predict``/``export`` accept a training run's
``config.yaml`` (``--config``), which ``anomalib predict``/``export`` 2.7 refuse for every model.
``anomalib-crr demo`` is described in :mod:`anomalib_crr.demo`,
``anomalib-crr benchmark`` in :mod:`anomalib_crr.benchmark`.
"""

from __future__ import annotations

import argparse
import inspect
import os
import re
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
# anomalib's own default for --default_root_dir; outputs of predict/export go elsewhere unless the user chose one.
DEFAULT_ROOT_DIR = Path("results")
VERBOSE_ENV = "ANOMALIB_CRR_VERBOSE"
# Flags of anomalib-crr itself; removed from the arguments before anomalib's parser sees them.
PLUGIN_FLAGS = ("--verbose", "--overwrite")
# An error message longer than this (e.g. a list of bad files) is cut; --verbose shows everything.
MAX_MESSAGE_LINES = 6
# Subcommands that run through the Engine (and so get the plugin's error, output and data-root handling).
RUN_SUBCOMMANDS = frozenset({"fit", "validate", "test", "train", "predict", "export"})
# How jsonargparse's messages start when they wrap the error of an init argument (a model's, a datamodule's).
JSONARGPARSE_WRAPPERS = ("Does not validate against any of the Union subtypes", "Problem with given class_path")
EXPORT_SUFFIXES = {"torch": ".pt", "onnx": ".onnx", "openvino": ".xml"}
PLUGIN_SUBCOMMANDS = {
    "demo": "Offline demo: make data, train + test a model.",
    "benchmark": "Benchmark models x datasets x seeds (plugin).",
}

# Keys that ``anomalib train`` writes into a run's config.yaml but that ``predict`` and ``export`` refuse
# ("Subcommand 'export' does not accept option 'optimizer'"), for every anomalib model in 2.7.
TRAINING_ONLY_CONFIG_KEYS = ("optimizer", "lr_scheduler")


def _benchmark_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anomalib-crr benchmark",
        description="Train and test every model x dataset x seed of a benchmark config, each job in its own "
        "process (here, on a pool of workers, on Ray or on SLURM); write results.csv/json, report.md and plots.",
        epilog="Paired test of two models of a finished run: anomalib-crr benchmark compare RUN A B (--help there).",
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
    ``anomalib-crr benchmark compare RUN A B`` is the paired test of two models of a finished run
    (:mod:`anomalib_crr.benchmark.paired`; exit 2 when they were not run on the same images and seeds).
    """
    if list(argv[:1]) == ["compare"]:
        from anomalib_crr.benchmark.paired import main as compare_main

        return compare_main(argv[1:])
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


class OutputExistsError(FileExistsError):
    """An export or prediction would overwrite earlier outputs; the message names them and ``--overwrite``."""


class DataRootError(FileNotFoundError):
    """``--data.root`` names a folder that is not there; raised before anomalib would try to download into it."""


class MissingExtraError(RuntimeError):
    """An optional dependency (an extra) that the requested command needs is not installed."""


@dataclass(frozen=True)
class PluginOptions:
    """The ``anomalib-crr`` flags that anomalib's parser does not know (removed before it parses)."""

    verbose: bool = False
    overwrite: bool = False


def split_plugin_options(args: Sequence[str]) -> tuple[list[str], PluginOptions]:
    """Take ``--verbose`` and ``--overwrite`` out of ``args``; ``ANOMALIB_CRR_VERBOSE=1`` also sets verbose."""
    remaining = [arg for arg in args if arg not in PLUGIN_FLAGS]
    verbose = "--verbose" in args or os.environ.get(VERBOSE_ENV, "").lower() in {"1", "true", "yes", "on"}
    return remaining, PluginOptions(verbose=verbose, overwrite="--overwrite" in args)


def _exception_chain(error: BaseException) -> list[BaseException]:
    """``error`` and every exception it was raised from or during (``__cause__``, ``__context__``), outermost first."""
    chain: list[BaseException] = []
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop(0)
        if any(current is seen for seen in chain):
            continue
        chain.append(current)
        pending.extend(item for item in (current.__cause__, current.__context__) if item is not None)
    return chain


def _union_root_cause(message: str) -> str | None:
    """The real error inside jsonargparse's "Does not validate against any of the Union subtypes" dump.

    jsonargparse tries each type of ``model: AnomalibModule | None`` (or ``data``); the ``None`` branch fails with
    "Expected a <class 'NoneType'>", the class branch with the model's own message, followed by a dump of every
    init argument. The model's message is the one the user needs.
    """
    if "Errors:" not in message or not any(marker in message for marker in JSONARGPARSE_WRAPPERS):
        return None
    errors = message.split("Errors:", 1)[1].split("\nGiven value type:", 1)[0]
    for bullet in re.split(r"\n\s*- ", "\n" + errors.strip()):
        text = bullet.strip().removeprefix("- ").strip()
        if not text or text.startswith("Expected a <class"):
            continue
        text = re.sub(r"^Problem with given class_path '[^']*':\s*", "", text)
        return re.split(r"\. Got value: ", text, maxsplit=1)[0]
    return None


def _raised_in_plugin(error: BaseException) -> bool:
    """Whether the innermost frame of ``error``'s traceback is the plugin's code (its own, deliberate errors)."""
    traceback = error.__traceback__
    if traceback is None:
        return False
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    return Path(traceback.tb_frame.f_code.co_filename).resolve().is_relative_to(PACKAGE_DIR)


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Error classes that always describe the user's input, wherever they are raised."""
    from anomalib_crr.data.validation import InvalidInputError
    from anomalib_crr.deploy import CalibrationDataError, QuantizationCheckError, UnfittedModelError
    from anomalib_crr.models.components.input_checks import CheckpointMismatchError

    user_errors: tuple[type[BaseException], ...] = (
        InvalidInputError,
        CheckpointMismatchError,
        CalibrationDataError,
        QuantizationCheckError,
        UnfittedModelError,
        OutputExistsError,
        DataRootError,
        MissingExtraError,
    )
    try:
        from anomalib_crr.benchmark import ConfigError
    except ImportError:  # pragma: no cover - the benchmark extra is optional
        return user_errors
    return (*user_errors, ConfigError)


def _download_hint(error: BaseException) -> str:
    """One line for a failed download (no network), naming the offline alternatives."""
    return (
        f"a download failed ({type(error).__name__}: {error}). Offline, point --data.root at a folder that holds the "
        "dataset (and --data.category at one of its categories), and pass local backbone weights "
        "(--model.weights_path / --model.encoder_weights)"
    )


def user_error_message(error: BaseException) -> str | None:
    """The short message for an error the user can fix, or ``None`` for a bug (which keeps its traceback).

    Recognised: the plugin's error classes (bad input files, checkpoints, calibration data, outputs that exist, a
    missing data root, benchmark configs), any ``ValueError``/``RuntimeError``/``OSError`` raised by the plugin's own
    code (size errors, missing weights files or downloads), jsonargparse's Union dump around such an error, and
    failed downloads (``URLError``).
    """
    from urllib.error import URLError

    user_errors = _user_error_types()
    for item in _exception_chain(error):
        if isinstance(item, user_errors):
            return str(item)
        if isinstance(item, ValueError) and (cause := _union_root_cause(str(item))) is not None:
            return cause
        if isinstance(item, (ValueError, RuntimeError, OSError)) and _raised_in_plugin(item):
            return str(item)
        if isinstance(item, URLError):
            return _download_hint(item)
    return None


def report_user_error(subcommand: str, message: str) -> None:
    """Print ``message`` in at most ``MAX_MESSAGE_LINES`` lines and how to see the traceback, to stderr."""
    lines = message.strip().splitlines() or [message]
    if len(lines) > MAX_MESSAGE_LINES:
        lines = [*lines[: MAX_MESSAGE_LINES - 1], f"  ... ({len(lines) - MAX_MESSAGE_LINES + 1} more lines)"]
    print(f"anomalib-crr {subcommand}: error: " + "\n".join(lines), file=sys.stderr)
    print(f"(--verbose or {VERBOSE_ENV}=1 shows the traceback)", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``anomalib-crr`` console script and of ``python -m anomalib_crr``.

    Errors the user can fix (see :func:`user_error_message`) end with their message in one or two lines and exit
    code 2; ``--verbose`` or ``ANOMALIB_CRR_VERBOSE=1`` shows the full traceback instead.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "benchmark":
        raise SystemExit(run_benchmark_cli(args[1:]))
    if args and args[0] == "demo":
        run_demo_cli(args[1:])
        return
    args, options = split_plugin_options(args)
    try:
        run_anomalib(args, options)
    except Exception as error:
        message = None if options.verbose else user_error_message(error)
        if message is None:
            raise
        report_user_error(args[0] if args else "", message)
        raise SystemExit(2) from None


def run_demo_cli(args: list[str]) -> None:
    """``anomalib-crr demo``: bad input (weights, folders, sizes) gets its message, not a stack trace."""
    from anomalib_crr.demo import run_demo

    try:
        run_demo(args)
    except (FileNotFoundError, FileExistsError, RuntimeError, ValueError) as exc:
        print(f"anomalib-crr demo: error: {exc}", file=sys.stderr)
        print(
            "Offline, run `anomalib-crr demo --encoder-weights none` (random-init backbone) or pass a local "
            "checkpoint with `--encoder-weights /path/to/weights.safetensors` (the ViT-S/14 DINOv2 for CRR, "
            "tf_efficientnet_lite0 for MFRNet).",
            file=sys.stderr,
        )
        raise SystemExit(2) from None


def _plugin_cli_class() -> type:
    """Build anomalib's CLI class whose ``--help`` also lists the plugin's ``demo`` and ``benchmark`` subcommands.

    ``main`` handles both before anomalib's parser runs; they are registered here (with empty parsers) only so that
    ``anomalib-crr --help`` names them. anomalib's own pipeline ``benchmark`` entry is relabelled, because
    ``anomalib-crr benchmark`` runs the plugin's.
    """
    from anomalib.cli.cli import AnomalibCLI
    from jsonargparse import ArgumentParser

    class PluginCLI(AnomalibCLI):
        def add_subcommands(self, **kwargs: Any) -> None:
            super().add_subcommands(**kwargs)
            subcommands = self.parser._subcommands_action  # jsonargparse keeps no public handle
            if subcommands is None:
                return
            for choice in subcommands._choices_actions:
                if choice.dest == "benchmark":
                    choice.help = PLUGIN_SUBCOMMANDS["benchmark"]
            if "benchmark" not in subcommands._name_parser_map:
                subcommands.add_subcommand("benchmark", ArgumentParser(), help=PLUGIN_SUBCOMMANDS["benchmark"])
            subcommands.add_subcommand("demo", ArgumentParser(), help=PLUGIN_SUBCOMMANDS["demo"])

    return PluginCLI


def run_anomalib(args: list[str], options: PluginOptions) -> None:
    """Run one of anomalib's subcommands with the plugin loaded and the plugin's output rules.

    ``train``/``fit`` put ``latest`` back when the run fails, ``predict`` writes to a fresh folder, ``export``
    writes under the checkpoint's run and refuses to overwrite; every command checks ``--data.root`` first.
    """
    from anomalib.loggers import configure_logger

    import anomalib_crr  # noqa: F401  (registers CRR with anomalib)

    configure_logger()
    cli_class = _plugin_cli_class()
    subcommand = args[0] if args else ""
    with tempfile.TemporaryDirectory(prefix="anomalib_crr_config_") as workdir:
        args = accept_training_run_config(args, Path(workdir))
        if subcommand not in RUN_SUBCOMMANDS or "--help" in args or "-h" in args:
            cli_class(args=args)
            return
        cli = cli_class(args=args, run=False)
        check_data_root(cli.datamodule)
        if subcommand == "export":
            run_export(cli, args, options)
        elif subcommand == "predict":
            run_predict(cli, args, options)
        elif subcommand in {"train", "fit"}:
            run_train(cli)
        else:
            cli._run_subcommand()


def check_data_root(datamodule: Any) -> None:
    """Refuse a ``--data.root`` (or a predict ``--data`` path) that does not exist, naming it, before any download.

    anomalib's MVTec-style datamodules create a missing root and try to download the dataset into it, which offline
    ends hundreds of lines later in ``URLError`` without naming the path. A root left at the datamodule's default
    still downloads as before.

    Raises:
        DataRootError: If the root, or its ``category`` folder, is not there.
    """
    if isinstance(datamodule, (str, Path)):
        if not Path(datamodule).exists():
            msg = f"--data {datamodule}: no such file or folder (pass an image file or a folder of images)"
            raise DataRootError(msg)
        return
    root = getattr(datamodule, "root", None)
    if root is None or _is_default_root(datamodule, root):
        return
    root = Path(root)
    if not root.is_dir():
        categories = _expected_categories(datamodule) or ["<category>"]
        layout = getattr(datamodule, "normal_dir", None) or f"{categories[0]}/train/good"
        msg = f"--data.root {root}: no such folder (it must hold the dataset: {root / str(layout)})"
        raise DataRootError(msg)
    missing = [category for category in _expected_categories(datamodule) if not (root / category).is_dir()]
    if missing:
        found = sorted(path.name for path in root.iterdir() if path.is_dir())[:10]
        msg = f"--data.root {root} holds no category '{missing[0]}' (folders there: {', '.join(found) or 'none'})"
        raise DataRootError(msg)


def _expected_categories(datamodule: Any) -> list[str]:
    """The category folders a datamodule will read under its root (none for ``Folder``-style datamodules).

    Multi-class datamodules list theirs in ``categories`` (``None``: all of the dataset's, not checked here); their
    ``category`` is a label, not a folder.
    """
    if hasattr(datamodule, "normal_dir"):  # Folder: no category folder; its own dirs are checked by anomalib
        return []
    if hasattr(datamodule, "categories"):
        return [str(category) for category in datamodule.categories or []]
    category = getattr(datamodule, "category", None)
    return [category] if isinstance(category, str) and category else []


def _is_default_root(datamodule: Any, root: str | Path) -> bool:
    """Whether ``root`` is the datamodule class's default (where anomalib may download the dataset)."""
    try:
        default = inspect.signature(type(datamodule).__init__).parameters["root"].default
    except (KeyError, TypeError, ValueError):
        return False
    if default in {None, inspect.Parameter.empty}:
        return False
    return Path(default).resolve() == Path(root).resolve()


def _given_on_command_line(args: Sequence[str], option: str) -> bool:
    """Whether ``option`` is on the command line (``--x value`` or ``--x=value``)."""
    return any(arg == option or arg.startswith(f"{option}=") for arg in args)


def run_folder(checkpoint: str | Path) -> Path:
    """The run folder of a checkpoint: ``<run>`` for ``<run>/weights/lightning/x.ckpt``, else its folder.

    The path is resolved, so ``latest`` is replaced by the ``vN`` it points to now: a later run that moves
    ``latest`` does not move these outputs.
    """
    path = Path(checkpoint).resolve()
    if path.parent.name == "lightning" and path.parent.parent.name == "weights":
        return path.parents[2]
    return path.parent


def _output_root(cli: Any, args: Sequence[str]) -> Path | None:
    """``--default_root_dir`` when the user chose it (command line or another value than anomalib's default)."""
    config = cli.config[cli.subcommand]
    root = Path(config["default_root_dir"])
    if _given_on_command_line(args, "--default_root_dir") or root != DEFAULT_ROOT_DIR:
        return root
    return None


def export_target(export_root: Path, export_type: Any, model_file_name: str) -> Path:
    """The file anomalib's ``to_torch``/``to_onnx``/``to_openvino`` write for ``export_root``."""
    kind = str(getattr(export_type, "value", export_type)).lower()
    return export_root / "weights" / kind / f"{model_file_name}{EXPORT_SUFFIXES.get(kind, '')}"


def run_train(cli: Any) -> None:
    """``train``/``fit``; when the run fails, ``latest`` points again where it pointed before.

    anomalib's ``Engine`` makes a new ``vN`` folder and moves ``latest`` to it before anything can fail (data,
    weights, the first step). The documented next command (``--config .../latest/config.yaml``) then finds an
    empty or config-only folder. The failed run's folder is kept: its ``config.yaml`` and logs show what ran.
    """
    root = Path(cli.config[cli.subcommand]["default_root_dir"])
    before = _latest_links(root)
    try:
        cli._run_subcommand()
    except BaseException:
        for message in restore_latest_links(root, before):
            print(f"anomalib-crr {cli.subcommand}: {message}", file=sys.stderr)
        raise


def _latest_links(root: Path) -> dict[Path, str]:
    """Every ``latest`` link anomalib keeps under ``root`` (``<Model>/<dataset>/<category>/latest``) and its target."""
    links = {}
    for pattern in ("*/latest", "*/*/latest", "*/*/*/latest", "*/*/*/*/latest"):
        for link in root.glob(pattern):
            if link.is_symlink():
                links[link] = os.readlink(link)
    return links


def _has_checkpoint(folder: Path) -> bool:
    """Whether a run folder holds a checkpoint (the sign of a run that trained)."""
    return any((folder / "weights").rglob("*.ckpt"))


def restore_latest_links(root: Path, before: dict[Path, str]) -> list[str]:
    """Point each ``latest`` that moved to a folder without a checkpoint back to its earlier target.

    Returns:
        One message per link put back (or removed, when it did not exist before).
    """
    messages = []
    for link, target in _latest_links(root).items():
        if before.get(link) == target or _has_checkpoint(link.resolve()):
            continue
        failed = link.resolve()
        link.unlink()
        if link in before:
            link.symlink_to(before[link])
            messages.append(f"the run failed; {link} points again to {before[link]} (the failed run's files: {failed})")
        else:
            messages.append(f"the run failed; removed {link}, which pointed to the failed run's folder {failed}")
    return messages


def run_export(cli: Any, args: Sequence[str], options: PluginOptions) -> None:
    """``export`` for any anomalib model, with the plugin's OpenVINO export, under the run and never overwriting.

    The output goes to ``--export_root`` or ``--default_root_dir`` when given, else into the checkpoint's run folder
    (``<run>/weights/<export_type>/``), not to ``./results/weights``. A file already there is refused unless
    ``--overwrite``. An ``--input_size`` the model cannot take is refused with the nearest sizes it can.

    For an OpenVINO IR this adds, to anomalib's built-in models as to CRR and MFRNet: ``INT8_PTQ`` / ``INT8_ACQ``
    that work (anomalib 2.7's own route fails for every model on the calibration images' size and, past that,
    quantises the scoring into constant outputs) and the OpenVINO Model API metadata (anomalib writes none). The
    model built by anomalib's CLI is given ``QuantizedOpenVinoExport`` (a subclass made here; CRR and MFRNet have it
    already), and anomalib's ``Engine.export`` runs as usual: it reloads the checkpoint through the same class. Bad
    input (no ``--data``, too few images, an unfitted model, a refused model, nncf missing) ends with its message,
    not a traceback.
    """
    from anomalib_crr.deploy.export import QuantizedOpenVinoExport
    from anomalib_crr.models.components.export import check_export_input_size

    model = cli.model
    if not isinstance(model, QuantizedOpenVinoExport):
        base = type(model)
        model.__class__ = type(base.__name__, (QuantizedOpenVinoExport, base), {"__module__": base.__module__})
    kwargs = cli._prepare_subcommand_kwargs("export")
    checkpoint = kwargs.get("ckpt_path")
    checkpoint_run = run_folder(checkpoint) if checkpoint else None
    export_root = Path(kwargs.get("export_root") or _output_root(cli, args) or checkpoint_run or DEFAULT_ROOT_DIR)
    target = export_target(export_root, kwargs["export_type"], kwargs.get("model_file_name") or "model")
    if target.exists() and not options.overwrite:
        msg = f"{target} exists: pass --overwrite to replace it, or --default_root_dir <another folder>"
        raise OutputExistsError(msg)
    kwargs = {**_with_checkpoint_model(kwargs), "export_root": export_root}
    check_export_input_size(kwargs["model"], kwargs.get("input_size"))
    _note_resize(kwargs["model"], kwargs.get("input_size"))
    _export(cli, kwargs)
    print(f"anomalib-crr export: wrote {target}", file=sys.stderr)


def _with_checkpoint_model(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Load the checkpoint's model here, as ``Engine.export`` would, so the checks see the model that is exported.

    ``Engine.export(ckpt_path=...)`` rebuilds the model from the checkpoint's own hyper-parameters (its
    pre-processor included), not from the command line's; checking the command line's model could refuse a size
    the exported model takes, or accept one it cannot. ``Engine.export`` then gets the loaded model, no path.
    """
    checkpoint = kwargs.get("ckpt_path")
    if not checkpoint:
        return kwargs
    model = kwargs["model"]
    loaded = type(model).load_from_checkpoint(Path(checkpoint).resolve())
    return {**kwargs, "model": loaded, "ckpt_path": None}


def _note_resize(model: Any, input_size: Sequence[int] | None) -> None:
    """Say when the IR resizes its input inside the graph, so that its map size is no surprise."""
    from anomalib_crr.deploy.raw_input import first_resize
    from anomalib_crr.models.components.export import model_input_size

    if input_size is None:
        return
    size = tuple(int(side) for side in input_size)
    resize = first_resize(model)
    resize_size = tuple(resize.size) if resize is not None and isinstance(resize.size, (list, tuple)) else None
    if resize_size is not None and len(resize_size) == 2 and resize_size != size:
        print(
            f"anomalib-crr export: warning: the model resizes images to {resize_size[0]}x{resize_size[1]}, but the "
            f"graph will take {size[0]}x{size[1]}: raw files cannot be scored as the trained model scores them "
            f"(anomalib_crr.deploy's inferencers refuse them). Export with --input_size "
            f"[{resize_size[0]},{resize_size[1]}] or without --input_size.",
            file=sys.stderr,
        )
        return
    inner = model_input_size(model, size)
    if inner != size:
        print(
            f"anomalib-crr export: the graph takes {size[0]}x{size[1]} images and its pre-processor resizes them to "
            f"{inner[0]}x{inner[1]} inside, as in training; anomaly maps come out at the pre-processor's size",
            file=sys.stderr,
        )


def _export(cli: Any, kwargs: dict[str, Any]) -> None:
    """``Engine.export``, with nncf missing reported as a user error (the ``int8`` extra)."""
    try:
        cli.engine.export(**kwargs)
    except ModuleNotFoundError as error:
        if error.name != "nncf":
            raise
        msg = f'{error}: INT8_PTQ / INT8_ACQ need nncf (pip install "anomalib-crr[int8]")'
        raise MissingExtraError(msg) from error


def run_predict(cli: Any, args: Sequence[str], options: PluginOptions) -> None:
    """``predict`` into a fresh folder per call, or into the ``--default_root_dir`` given, never over earlier files.

    anomalib writes predictions to ``<root>/<Model>/<dataset>/<category>/latest`` (the training run's folder, or a
    shared ``latest``), so each call overwrote the previous ``predictions.csv`` and images. Here the folder is
    ``<run>/predictions/vN`` (``<run>``: the checkpoint's run folder; a new ``vN`` per call), or exactly the
    ``--default_root_dir`` given, which is refused if it already holds predictions unless ``--overwrite``.
    """
    folder = prediction_folder(cli, args, options)
    engine = cli.engine

    def use_folder(*_args: Any, **_kwargs: Any) -> None:
        # Engine.predict calls this to pick <root>/<Model>/<dataset>/<category>/latest; use the folder chosen here.
        engine._cache.args["default_root_dir"] = folder

    engine._setup_workspace = use_folder
    cli._run_subcommand()
    print(f"anomalib-crr predict: wrote predictions to {folder}", file=sys.stderr)


def prediction_folder(cli: Any, args: Sequence[str], options: PluginOptions) -> Path:
    """The folder one ``predict`` call writes to (see :func:`run_predict`); created here."""
    from anomalib_crr.predict import PREDICTION_OUTPUTS, fresh_version_dir

    chosen = _output_root(cli, args)
    if chosen is None:
        checkpoint = cli.config[cli.subcommand].get("ckpt_path")
        base = run_folder(checkpoint) if checkpoint else DEFAULT_ROOT_DIR / type(cli.model).__name__
        return fresh_version_dir(base / "predictions")
    existing = [name for name in PREDICTION_OUTPUTS if (chosen / name).exists()]
    if existing and not options.overwrite:
        msg = (
            f"{chosen} already holds predictions ({', '.join(existing)}): pass --overwrite to write over them, or "
            "leave out --default_root_dir for a new folder per call"
        )
        raise OutputExistsError(msg)
    chosen.mkdir(parents=True, exist_ok=True)
    return chosen


if __name__ == "__main__":
    main()
