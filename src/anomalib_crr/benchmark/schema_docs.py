# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""The benchmark config reference, ``docs/benchmark_config.md``, generated from the parser's own constants.

Over 400 lines on purpose: the page's prose for every key sits beside the code that renders it, so a new key fails
in one file.

Why generated: the allowed keys used to be documented only in the "unknown key" error message, and a
hand-written table drifts as soon as a key is added. Here every section of the page is built from the same
key sets the parser checks against (:data:`.config.TOP_KEYS`, :data:`.config.MODEL_KEYS`, ...,
:data:`.executors.options.EXECUTOR_KEYS`), and the defaults come from the same constants and signatures the
parser and the runner use (:data:`.config.TOP_DEFAULTS`, :data:`.config.TIMING_DEFAULTS`,
:class:`.executors.options.ExecutorOptions`, :func:`anomalib_crr.data.synthetic_mvtec.make_synthetic_mvtec`).
Only the type and meaning of each key are written here, in :data:`SECTIONS`; :func:`missing_descriptions` (and a
test) fail when a key is allowed but not described, or described but no longer allowed, and a second test fails
when the committed page differs from :func:`render`, so a new key cannot reach CI undocumented.

Regenerate the page with::

    python -m anomalib_crr.benchmark.schema_docs            # writes docs/benchmark_config.md
    python -m anomalib_crr.benchmark.schema_docs --check    # exit 1 if the committed page is stale
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import sys
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import (
    DATASET_KEYS,
    GENERATE_KEYS,
    MODEL_KEYS,
    MODES,
    OFFLINE_KEYS,
    PER_DATASET_KEYS,
    RESOURCE_KEYS,
    TIMING_DEFAULTS,
    TIMING_KEYS,
    TOP_DEFAULTS,
    TOP_KEYS,
)
from .executors.options import DEFAULT_RESOURCES, EXECUTOR_KEYS, EXECUTOR_NAMES, SLURM_KEYS, ExecutorOptions
from .logs import NAMED as LOGGER_NAMES

DEFAULT_PAGE = Path("docs") / "benchmark_config.md"
REQUIRED = "required"


@dataclass(frozen=True)
class Key:
    """The hand-written part of one key's row: its type, its meaning, and a default the code cannot give."""

    type: str
    meaning: str
    default: str = "—"


@dataclass(frozen=True)
class Section:
    """One table of the page: the keys a parser accepts at one place of the config.

    ``allowed`` is the parser's own key set (not a copy), so a key added to it without a row in ``keys`` is
    caught by :func:`missing_descriptions`. ``defaults`` is a callable so that the page reads the current
    defaults when it is rendered.
    """

    title: str
    anchor: str
    intro: str
    allowed: Collection[str]
    keys: Mapping[str, Key]
    defaults: Callable[[], Mapping[str, Any]] = field(default=lambda: {})


def _executor_defaults() -> dict[str, Any]:
    """``ExecutorOptions``' field defaults: what ``parse_executor`` uses for a key the config leaves out."""
    found: dict[str, Any] = {}
    for item in dataclasses.fields(ExecutorOptions):
        if item.default is not dataclasses.MISSING and item.default is not None:
            found[item.name] = item.default
    return found


def _generate_defaults() -> dict[str, Any]:
    """``make_synthetic_mvtec``'s defaults, which a ``generate`` entry gets for a key it leaves out."""
    from anomalib_crr.data.synthetic_mvtec import SYNTHETIC_CATEGORIES, make_synthetic_mvtec

    parameters = inspect.signature(make_synthetic_mvtec).parameters
    found = {k: p.default for k, p in parameters.items() if k in GENERATE_KEYS and p.default is not p.empty}
    found["categories"] = list(SYNTHETIC_CATEGORIES)  # the runner generates every category when none is named
    return found


def _format_default(value: Any) -> str:
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (list, tuple, dict)):
        return f"`{json.dumps(value)}`".replace('"', "")
    return f"`{value}`"


def _names(values: Sequence[str]) -> str:
    return ", ".join(f"`{v}`" for v in values)


SECTIONS: list[Section] = [
    Section(
        title="Top level",
        anchor="top-level",
        intro="The keys of the config file itself. Any other key is an error, reported before any job starts.",
        allowed=TOP_KEYS,
        defaults=lambda: {**TOP_DEFAULTS, "timing": TIMING_DEFAULTS},
        keys={
            "name": Key("string", "run name; the run folder is `results/benchmark/<name>` by default", "file name"),
            "description": Key("string", "shown at the top of the report", '""'),
            "vars": Key(
                "mapping",
                "values for `${NAME}` / `${NAME:-default}` placeholders (before environment variables); a value "
                "that is a relative path is resolved from the config file's folder",
                "{}",
            ),
            "output": Key("path", "run folder (`--output` wins)", "`results/benchmark/<name>`"),
            "seeds": Key("int or list of int", "every model × dataset setting runs once per seed"),
            "accelerator": Key("string", "Lightning accelerator of every job (`auto`, `cpu`, `gpu`, ...)"),
            "precision": Key("string", "Lightning precision of every job (a model's `trainer.precision` wins)"),
            "threads": Key("int", "torch threads per job (an executor's share wins)", "torch's default"),
            "offline": Key(
                "bool or mapping",
                "`true`: no job downloads anything (hub offline variables set, paths checked first, models that "
                "would download are random-initialised); `false`: models may download; a mapping of "
                "[offline substitutes](#offline) means offline and is the `offline` section of every model "
                "without its own",
            ),
            "timing": Key("mapping", "how latency is measured; see [`timing`](#timing)"),
            "save_predictions": Key("bool", "keep `predictions.pt` per job"),
            "executor": Key("mapping", "where and how many jobs run; see [`executor`](#executor)", "`local`"),
            "logger": Key(
                "string, `false` or mapping",
                "training logs of every job in `jobs/<job id>/logs/`; see [`logger`](#logger)",
                "`auto`",
            ),
            "generate": Key(
                "list of mappings",
                "synthetic datasets written into `${run_data}/<name>`; see [`generate[]`](#generate)",
                "[]",
            ),
            "models": Key("list of mappings", "the models; see [`models[]`](#models)", REQUIRED),
            "datasets": Key("list of mappings", "the datasets; see [`datasets[]`](#datasets)", REQUIRED),
        },
    ),
    Section(
        title="`models[]`",
        anchor="models",
        intro="One entry per model; every model runs on every dataset setting and seed (unless `datasets` narrows "
        "it). Names must be unique.",
        allowed=MODEL_KEYS,
        keys={
            "name": Key("string", "the model's name in job ids, tables and plots (unique)", REQUIRED),
            "class_path": Key(
                "string",
                "an `AnomalibModule` subclass: a dotted path, or a class name looked up in `anomalib.models`, "
                "then `anomalib_crr`",
                REQUIRED,
            ),
            "init_args": Key(
                "mapping",
                "arguments of the model class, checked against its signature (nested `class_path` specs too); "
                "`evaluator` and `visualizer` are set by the benchmark",
                "{}",
            ),
            "trainer": Key(
                "mapping",
                "Lightning `Trainer` arguments; `max_epochs` or `max_steps` is required (otherwise Lightning trains "
                "for 1000 epochs)",
                REQUIRED,
            ),
            "image_size": Key(
                "int or [height, width]", "input size of the default pre-processor (not with `init_args.pre_processor`)"
            ),
            "datamodule": Key(
                "mapping",
                "datamodule arguments this model overrides on every dataset (e.g. EfficientAd's `train_batch_size: 1`)",
                "{}",
            ),
            "offline": Key("mapping", "this model's [offline substitutes](#offline)", "the top-level mapping, if any"),
            "weights": Key(
                "string", "how the weights are described in the report (wins over what the benchmark infers)"
            ),
            "notes": Key("string or list", "notes printed with the model in the report", "[]"),
            "timeout_s": Key("number", "seconds after which a job of this model is stopped and marked failed", "none"),
            "datasets": Key("string or list", "names of the datasets this model runs on", "all"),
            "skip": Key("string", "a reason: the model is not run and is listed as skipped in the report"),
            "per_dataset": Key(
                "mapping",
                "`{dataset name: overrides}` merged into this entry for one dataset; see [`per_dataset`](#per-dataset)",
                "{}",
            ),
            "resources": Key(
                "mapping",
                "what a Ray task or SLURM job of this model asks for; see [`resources`](#resources)",
                "the executor's",
            ),
        },
    ),
    Section(
        title="`models[].per_dataset.<dataset>`",
        anchor="per-dataset",
        intro="Overrides of one model for one dataset (its name must be a `datasets[]` name); each mapping is merged "
        "into the model entry's mapping of the same name.",
        allowed=PER_DATASET_KEYS,
        keys={
            "trainer": Key("mapping", "merged into the model's `trainer`", "{}"),
            "datamodule": Key("mapping", "merged into the model's `datamodule`", "{}"),
            "init_args": Key("mapping", "merged into the model's `init_args`", "{}"),
        },
    ),
    Section(
        title="`offline` substitutes",
        anchor="offline",
        intro="The mapping form of the top-level `offline` and of a model's `offline`. They replace downloads only: "
        "a data or penalty-image folder that does not exist is still an error.",
        allowed=OFFLINE_KEYS,
        keys={
            "backbone_weights": Key(
                "path", "a local file that every `timm.create_model(pretrained=True)` loads instead of downloading"
            ),
            "random_init": Key(
                "bool", "turn `pretrained=True` off: the backbone is random (the report says so)", "false"
            ),
            "efficientad_random_teacher": Key(
                "bool", "keep EfficientAd's teacher random (its distilled weights are a download)", "false"
            ),
        },
    ),
    Section(
        title="`resources`",
        anchor="resources",
        intro="In a model entry or in `executor`: what one job asks a Ray cluster or SLURM for (a model's own values "
        f"win over the executor's). Defaults when neither says: ray {_format_default(DEFAULT_RESOURCES['ray'])}, "
        f"slurm {_format_default(DEFAULT_RESOURCES['slurm'])}. Values are non-negative numbers.",
        allowed=RESOURCE_KEYS,
        keys={
            "gpus": Key("number", "GPUs per job"),
            "cpus": Key("number", "CPU cores per job"),
            "memory_gb": Key("number", "memory per job, GiB (SLURM `--mem`)"),
        },
    ),
    Section(
        title="`datasets[]`",
        anchor="datasets",
        intro="One entry per dataset; names must be unique.",
        allowed=DATASET_KEYS,
        keys={
            "name": Key("string", "the dataset's name in job ids and tables (unique)", REQUIRED),
            "class_path": Key(
                "string",
                "an `AnomalibDataModule` subclass: a dotted path, or a class name looked up in `anomalib.data`, "
                "then `anomalib_crr.data`",
                REQUIRED,
            ),
            "init_args": Key(
                "mapping",
                "arguments of the datamodule (not `category`/`categories`); `val_split_mode` defaults to "
                "`same_as_test` where the class's default would move test images",
                "{}",
            ),
            "categories": Key("string or list", "the categories to run", REQUIRED),
            "mode": Key(
                "string or list",
                f"one or more of {_names(MODES)}: one model per category, and/or one model for all categories",
                f"`{MODES[0]}`",
            ),
            "notes": Key("string or list", "notes printed with the dataset in the report", "[]"),
        },
    ),
    Section(
        title="`generate[]`",
        anchor="generate",
        intro="Synthetic MVTec-style datasets (the project's generator) written once into `${run_data}/<name>` "
        "before the paths are checked; a dataset entry reads them with `root: ${run_data}/<name>`.",
        allowed=GENERATE_KEYS,
        defaults=_generate_defaults,
        keys={
            "name": Key("string", "folder under `${run_data}`", REQUIRED),
            "categories": Key("list", "synthetic categories to write"),
            "num_train": Key("int", "normal training images per category"),
            "num_test_good": Key("int", "normal test images per category"),
            "num_test_defect": Key("int", "test images per defect type and category"),
            "image_size": Key("int", "side of the square images"),
            "seed": Key("int", "generator seed; the same seed writes the same files"),
        },
    ),
    Section(
        title="`timing`",
        anchor="timing",
        intro="Latency is the median of `runs` timed batch-1 passes after `warmup` untimed ones.",
        allowed=TIMING_KEYS,
        defaults=lambda: TIMING_DEFAULTS,
        keys={
            "runs": Key("int (>= 10)", "timed passes (the median and the IQR are reported)"),
            "warmup": Key("int", "untimed passes first"),
        },
    ),
    Section(
        title="`executor`",
        anchor="executor",
        intro="Where and how many jobs run; the command line's options win.",
        allowed=EXECUTOR_KEYS,
        defaults=_executor_defaults,
        keys={
            "name": Key("string", f"one of {_names(EXECUTOR_NAMES)}"),
            "workers": Key("int", "`pool`: concurrent jobs", "one per visible GPU, else cores // 4"),
            "gpus_per_job": Key("int", "`pool` on GPUs: devices per job (disjoint `CUDA_VISIBLE_DEVICES`)"),
            "exclusive_timing": Key("bool", "`pool` on CPU: re-time each job's inference alone at the end of the run"),
            "retries": Key("int (>= 0)", "`ray`: retries of a task lost with its worker or node"),
            "ray_address": Key("string", "`ray`: an existing cluster (`auto` or `host:port`)", "a local cluster"),
            "ray_auth_token_file": Key("path", "`ray`: the cluster's token file", "Ray's own sources"),
            "resources": Key("mapping", "default [`resources`](#resources) of every job", "{}"),
            "slurm": Key("mapping", "SLURM settings; see [`executor.slurm`](#executor-slurm)", "{}"),
        },
    ),
    Section(
        title="`executor.slurm`",
        anchor="executor-slurm",
        intro="SLURM settings, passed to submitit; a key left out leaves the cluster's default.",
        allowed=SLURM_KEYS,
        keys={
            "partition": Key("string", "`--partition`"),
            "account": Key("string", "`--account`"),
            "qos": Key("string", "`--qos`"),
            "time_min": Key("int", "time limit of one job in minutes", "240"),
            "array_parallelism": Key("int", "at most this many array jobs at once"),
            "setup": Key("list of strings", "shell lines run before the job (e.g. `module load cuda`)", "[]"),
            "additional": Key("mapping", "further `#SBATCH` parameters (e.g. `{constraint: a100}`)", "{}"),
            "cluster": Key(
                "string", "submitit cluster: `slurm`, or `local` to run submitit's local executor", "`slurm`"
            ),
        },
    ),
]

# The top-level ``logger`` is a value, not a mapping of keys: its accepted forms, keyed as the parser names them.
LOGGER_FORMS: dict[str, str] = {
    "auto": "absent: `tensorboard` where TensorBoard is installed, else `csv`",
    "tensorboard": "TensorBoard event files in `jobs/<job id>/logs/` (needs `tensorboard`)",
    "csv": "Lightning's `CSVLogger`: `logs/metrics.csv` and `logs/hparams.yaml`",
    "none": "no training logs (also `false`)",
    "class_path": "any Lightning logger, `{class_path: ..., init_args: {...}}` or a dotted path; `save_dir` defaults "
    "to the job's `logs/` (MLflow and W&B need their own packages)",
}


def missing_descriptions() -> list[str]:
    """Problems that make the page incomplete or wrong: undescribed keys, described keys the parser rejects.

    Returns:
        One line per problem, empty when every allowed key of every section has exactly one row.
    """
    problems = []
    for section in SECTIONS:
        for key in sorted(set(section.allowed) - set(section.keys)):
            problems.append(f"{section.title}: key '{key}' is allowed by the parser but not described")
        for key in sorted(set(section.keys) - set(section.allowed)):
            problems.append(f"{section.title}: key '{key}' is described but the parser does not allow it")
    for form in sorted((set(LOGGER_NAMES) | {"class_path"}) ^ set(LOGGER_FORMS)):
        problems.append(f"logger: form '{form}' is accepted but not described, or described but not accepted")
    return problems


def _table(section: Section) -> list[str]:
    defaults = section.defaults()
    lines = [
        f'<a id="{section.anchor}"></a>',
        f"## {section.title}",
        "",
        section.intro,
        "",
        "| key | type | default | meaning |",
        "|---|---|---|---|",
    ]
    for key in sorted(section.allowed, key=lambda k: (list(section.keys).index(k) if k in section.keys else 999, k)):
        row = section.keys.get(key, Key("?", "**undocumented**", "?"))
        default = _format_default(defaults[key]) if key in defaults else row.default
        lines.append(f"| `{key}` | {row.type} | {default} | {row.meaning} |")
    return [*lines, ""]


def render() -> str:
    """The whole page, as :func:`main` writes it (deterministic: rows in :data:`SECTIONS` order)."""
    lines = [
        "# Benchmark config reference",
        "",
        "<!-- Generated by `python -m anomalib_crr.benchmark.schema_docs` from the parser's key sets and defaults;",
        "     do not edit by hand (tests/test_benchmark_schema_docs.py fails when this page is stale). -->",
        "",
        "Every key `anomalib-crr benchmark` accepts in a config file, with its type, default and meaning. An unknown "
        "key anywhere is an error naming the file, the entry and the key, reported before any job starts. "
        "Strings may hold `${NAME}` / `${NAME:-default}` placeholders (from `vars`, then the environment); "
        "`${run_data}` is the run folder's `data` sub-folder. See [benchmarks.md](benchmarks.md) for how a run "
        "works and `configs/benchmark/*.yaml` for examples.",
        "",
    ]
    for section in SECTIONS:
        lines += _table(section)
    lines += [
        '<a id="logger"></a>',
        "## `logger`",
        "",
        "A value rather than a mapping of keys; logging never changes a job's result or its spec hash, and is off "
        "while latency is timed.",
        "",
        "| form | meaning |",
        "|---|---|",
        *(f"| `{form}` | {meaning} |" for form, meaning in LOGGER_FORMS.items()),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the page (or, with ``--check``, compare it); returns the exit code.

    Returns:
        0 when written or up to date; 1 when ``--check`` finds it stale or a key is undescribed.
    """
    parser = argparse.ArgumentParser(description="Write the benchmark config reference page.")
    parser.add_argument("--output", type=Path, default=DEFAULT_PAGE, help=f"default: {DEFAULT_PAGE}")
    parser.add_argument("--check", action="store_true", help="exit 1 if the page differs from the generated one")
    args = parser.parse_args(argv)
    problems = missing_descriptions()
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    text = render()
    if args.check:
        current = args.output.read_text() if args.output.is_file() else ""
        if current != text:
            print(f"{args.output} is stale: run python -m anomalib_crr.benchmark.schema_docs", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
