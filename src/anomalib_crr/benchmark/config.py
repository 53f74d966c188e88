# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Benchmark configuration: parsing, placeholder expansion, validation and the job list.

Over 400 lines on purpose: every check a config gets before any job starts, and each one's error text; split, the
checks would lose the one place that lists them (issue 36 leaves it whole).

A config is models × datasets × seeds (see ``configs/benchmark/*.yaml``). Everything that can be checked
without training is checked here, *before any job starts*, and every problem is reported as a
:class:`ConfigError` naming the file, the entry and the key: unknown top-level or entry keys, model classes
that do not import or are not ``AnomalibModule`` subclasses, datamodules that are not ``AnomalibDataModule``
subclasses, init args the class does not accept, missing data roots and missing weight files.

Placeholders: ``${NAME}`` / ``${NAME:-default}`` in any string are replaced by the config's ``vars``, then
by environment variables, then by the default. ``${run_data}`` is the run folder's ``data`` sub-folder (where
``generate`` entries are written). A ``vars`` value that is a relative path is resolved against the folder
of the config file, so ``vars: {shared: "${ANOMALIB_CRR_SHARED:-../../../shared}"}`` works from any clone.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import importlib
import inspect
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .logs import LOGGER_MODULES, LoggerConfigError, parse_logger

TOP_KEYS = {
    "name",
    "description",
    "vars",
    "output",
    "seeds",
    "accelerator",
    "precision",
    "threads",
    "offline",
    "timing",
    "save_predictions",
    "executor",
    "logger",
    "generate",
    "models",
    "datasets",
}
MODEL_KEYS = {
    "name",
    "class_path",
    "init_args",
    "trainer",
    "image_size",
    "datamodule",
    "offline",
    "weights",
    "notes",
    "timeout_s",
    "datasets",
    "skip",
    "per_dataset",
    "resources",
}
RESOURCE_KEYS = {"gpus", "cpus", "memory_gb"}
PER_DATASET_KEYS = {"trainer", "datamodule", "init_args"}
DATASET_KEYS = {"name", "class_path", "init_args", "categories", "mode", "notes"}
GENERATE_KEYS = {"name", "categories", "num_train", "num_test_good", "num_test_defect", "image_size", "seed"}
TIMING_KEYS = {"runs", "warmup"}
# Defaults of the keys a config may leave out; load_config reads them from here and so does the schema page
# (``docs/benchmark_config.md``, see :mod:`.schema_docs`), so the page cannot state another default.
TIMING_DEFAULTS = {"runs": 10, "warmup": 2}
TOP_DEFAULTS: dict[str, Any] = {
    "seeds": [0],
    "accelerator": "auto",
    "precision": "32-true",
    "offline": True,
    "save_predictions": False,
}
OFFLINE_KEYS = {"backbone_weights", "random_init", "efficientad_random_teacher"}
MODES = ("per_category", "multiclass")
# Keys the benchmark sets itself; a config must not set them in init_args.
RESERVED_INIT_ARGS = {"evaluator", "visualizer"}
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A benchmark config is invalid; the message names the file, the entry and the key."""


@dataclass
class ModelSpec:
    """One model entry of the config (after placeholder expansion)."""

    name: str
    class_path: str
    init_args: dict[str, Any]
    trainer: dict[str, Any]
    image_size: list[int] | None = None
    datamodule: dict[str, Any] = field(default_factory=dict)
    offline: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    notes: list[str] = field(default_factory=list)
    timeout_s: float | None = None
    datasets: list[str] | None = None
    skip: str | None = None
    per_dataset: dict[str, dict[str, Any]] = field(default_factory=dict)
    # What a Ray task or SLURM job of this model asks for ({gpus, cpus, memory_gb}); where a job runs is not
    # part of what it computes, so it is left out of the job's spec hash.
    resources: dict[str, Any] = field(default_factory=dict)

    def for_dataset(self, dataset: str) -> ModelSpec:
        """This entry with its ``per_dataset`` overrides for ``dataset`` merged in (trainer, datamodule, init_args)."""
        override = self.per_dataset.get(dataset) or {}
        if not override:
            return self
        merged = copy.deepcopy(self)
        merged.trainer.update(override.get("trainer") or {})
        merged.datamodule.update(override.get("datamodule") or {})
        merged.init_args.update(override.get("init_args") or {})
        merged.per_dataset = {}
        return merged


@dataclass
class DatasetSpec:
    """One dataset entry: a datamodule class, its init args, categories and evaluation mode(s)."""

    name: str
    class_path: str
    init_args: dict[str, Any]
    categories: list[str]
    modes: list[str]
    notes: list[str] = field(default_factory=list)


@dataclass
class BenchmarkConfig:
    """A parsed, validated benchmark config."""

    name: str
    path: Path | None
    description: str
    output: Path
    seeds: list[int]
    accelerator: str
    precision: str
    threads: int | None
    offline: bool
    timing: dict[str, int]
    save_predictions: bool
    generate: list[dict[str, Any]]
    models: list[ModelSpec]
    datasets: list[DatasetSpec]
    raw: dict[str, Any]
    executor: dict[str, Any] = field(default_factory=dict)  # the ``executor`` section (see .executors.options)
    # ``offline: {random_init: true, ...}`` at the top level: the substitutes every model without its own
    # ``offline`` section gets (see :func:`apply_defaults`).
    offline_defaults: dict[str, Any] = field(default_factory=dict)
    # The ``logger`` key (see :mod:`.logs`): how every job logs training, ``{"kind": "auto"}`` by default.
    logger: dict[str, Any] = field(default_factory=lambda: {"kind": "auto"})


@dataclass
class JobSpec:
    """One job: a model trained on one dataset setting (one category or all categories) with one seed."""

    job_id: str
    model: ModelSpec
    dataset: DatasetSpec
    mode: str
    categories: list[str]
    seed: int
    accelerator: str
    precision: str
    threads: int | None
    offline: bool
    timing: dict[str, int]
    save_predictions: bool
    # How the job logs training (see :mod:`.logs`); not part of the spec hash: logs do not change the numbers.
    logger: dict[str, Any] = field(default_factory=lambda: {"kind": "auto"})

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable description (what the job process reads)."""
        return {
            "job_id": self.job_id,
            "model": {k: v for k, v in self.model.__dict__.items() if k != "resources"},
            "dataset": self.dataset.__dict__,
            "mode": self.mode,
            "categories": self.categories,
            "seed": self.seed,
            "accelerator": self.accelerator,
            "precision": self.precision,
            "threads": self.threads,
            "offline": self.offline,
            "timing": self.timing,
            "save_predictions": self.save_predictions,
            "logger": self.logger,
        }

    @property
    def spec_hash(self) -> str:
        """Hash of everything that defines the job; a stored result with another hash is stale."""
        defining = {k: v for k, v in self.to_dict().items() if k != "logger"}
        return hashlib.sha256(json.dumps(defining, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _expand(value: Any, variables: dict[str, str], where: str) -> Any:
    """Replace ``${NAME}``/``${NAME:-default}`` in every string of ``value`` (recursively)."""
    if isinstance(value, dict):
        return {k: _expand(v, variables, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, variables, f"{where}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in variables:
            return variables[name]
        if name in os.environ:
            return os.environ[name]
        if default is not None:
            return default
        msg = f"{where}: placeholder ${{{name}}} is not defined in `vars` or the environment"
        raise ConfigError(msg)

    return _PLACEHOLDER.sub(substitute, value)


def _check_keys(entry: Any, allowed: set[str], where: str) -> None:
    if not isinstance(entry, dict):
        msg = f"{where}: expected a mapping, got {type(entry).__name__}"
        raise ConfigError(msg)
    unknown = sorted(set(entry) - allowed)
    if unknown:
        msg = f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {unknown}; allowed: {sorted(allowed)}"
        raise ConfigError(msg)


def import_class(path: str, default_modules: tuple[str, ...], where: str) -> type:
    """Import ``package.Class``; an undotted name is looked up in ``default_modules`` in order."""
    if "." in path:
        module_name, _, attr = path.rpartition(".")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            msg = f"{where}: class_path '{path}': module '{module_name}' cannot be imported ({exc})"
            raise ConfigError(msg) from None
        if not hasattr(module, attr):
            msg = f"{where}: class_path '{path}': module '{module_name}' has no class '{attr}'"
            raise ConfigError(msg)
        return getattr(module, attr)
    for module_name in default_modules:
        module = importlib.import_module(module_name)
        if hasattr(module, path):
            return getattr(module, path)
    msg = f"{where}: unknown class_path '{path}' (not found in {list(default_modules)}; give a dotted path)"
    raise ConfigError(msg)


def _check_init_args(cls: type, init_args: dict[str, Any], where: str) -> None:
    """Every init arg must be a parameter of ``cls.__init__`` (unless it takes ``**kwargs``)."""
    reserved = sorted(RESERVED_INIT_ARGS & set(init_args))
    if reserved:
        msg = f"{where}.init_args: {reserved} are set by the benchmark (the seven-metric evaluator, no visualiser)"
        raise ConfigError(msg)
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        # Our multi-class datamodules forward **kwargs to anomalib's class: check against that one too.
        params = {**params}
        for base in cls.__mro__[1:]:
            if "__init__" in base.__dict__:
                params.update(inspect.signature(base.__init__).parameters)
        if all(p.kind is inspect.Parameter.VAR_KEYWORD or n == "self" for n, p in params.items()):
            return
    names = {
        n for n, p in params.items() if p.kind not in {inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL}
    }
    unknown = sorted(set(init_args) - names - {"self"})
    if unknown:
        msg = f"{where}.init_args: {cls.__name__} has no argument{'s' if len(unknown) > 1 else ''} {unknown}"
        raise ConfigError(msg)


def _check_nested(value: Any, where: str) -> None:
    """Nested ``class_path`` specs (e.g. a pre-processor) must import and accept their init args."""
    if isinstance(value, dict):
        if "class_path" in value:
            _check_keys(value, {"class_path", "init_args"}, where)
            cls = import_class(str(value["class_path"]), (), where)
            _check_init_args(cls, value.get("init_args") or {}, where)
            _check_nested(value.get("init_args") or {}, f"{where}.init_args")
            return
        for key, item in value.items():
            _check_nested(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_nested(item, f"{where}[{i}]")


def _as_list(value: Any, where: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, int, float)):
        return [value]
    if isinstance(value, list):
        return value
    msg = f"{where}: expected a list, got {type(value).__name__}"
    raise ConfigError(msg)


def _parse_model(entry: dict[str, Any], where: str) -> ModelSpec:
    _check_keys(entry, MODEL_KEYS, where)
    for key in ("name", "class_path"):
        if not entry.get(key):
            msg = f"{where}: missing '{key}'"
            raise ConfigError(msg)
    where = f"{where} '{entry['name']}'"
    trainer = dict(entry.get("trainer") or {})
    if "max_epochs" not in trainer and "max_steps" not in trainer and not entry.get("skip"):
        msg = (
            f"{where}: set trainer.max_epochs or trainer.max_steps (otherwise Lightning trains for its default "
            "1000 epochs)"
        )
        raise ConfigError(msg)
    offline = dict(entry.get("offline") or {})
    _check_keys(offline, OFFLINE_KEYS, f"{where}.offline")
    resources = parse_resources(entry.get("resources"), f"{where}.resources")
    image_size = entry.get("image_size")
    if image_size is not None:
        image_size = _as_list(image_size, f"{where}.image_size")
        image_size = image_size * 2 if len(image_size) == 1 else image_size
        if len(image_size) != 2 or not all(isinstance(s, int) and s > 0 for s in image_size):
            msg = f"{where}.image_size: expected [height, width] positive integers, got {entry.get('image_size')}"
            raise ConfigError(msg)
    return ModelSpec(
        name=str(entry["name"]),
        class_path=str(entry["class_path"]),
        init_args=dict(entry.get("init_args") or {}),
        trainer=trainer,
        image_size=image_size,
        datamodule=dict(entry.get("datamodule") or {}),
        offline=offline,
        weights=entry.get("weights"),
        notes=[str(n) for n in _as_list(entry.get("notes"), f"{where}.notes")],
        timeout_s=entry.get("timeout_s"),
        datasets=[str(d) for d in _as_list(entry["datasets"], f"{where}.datasets")] if "datasets" in entry else None,
        skip=str(entry["skip"]) if entry.get("skip") else None,
        per_dataset=_parse_per_dataset(entry.get("per_dataset"), f"{where}.per_dataset"),
        resources=resources,
    )


def parse_resources(value: Any, where: str) -> dict[str, Any]:
    """``{gpus, cpus, memory_gb}`` with non-negative numbers (what a Ray task or SLURM job asks for)."""
    resources = dict(value or {})
    _check_keys(resources, RESOURCE_KEYS, where)
    for key, amount in resources.items():
        if not isinstance(amount, (int, float)) or isinstance(amount, bool) or amount < 0:
            msg = f"{where}.{key}: expected a non-negative number, got {amount!r}"
            raise ConfigError(msg)
    return resources


def _parse_per_dataset(value: Any, where: str) -> dict[str, dict[str, Any]]:
    """``{dataset name: {trainer: ..., datamodule: ..., init_args: ...}}`` (names are checked in load_config)."""
    if value is None:
        return {}
    _check_keys(value, set(value) if isinstance(value, dict) else set(), where)
    for name, override in value.items():
        _check_keys(override, PER_DATASET_KEYS, f"{where}.{name}")
    return {str(k): dict(v) for k, v in value.items()}


def _parse_dataset(entry: dict[str, Any], where: str) -> DatasetSpec:
    _check_keys(entry, DATASET_KEYS, where)
    for key in ("name", "class_path", "categories"):
        if not entry.get(key):
            msg = f"{where}: missing '{key}'"
            raise ConfigError(msg)
    where = f"{where} '{entry['name']}'"
    modes = [str(m) for m in _as_list(entry.get("mode", "per_category"), f"{where}.mode")]
    bad = [m for m in modes if m not in MODES]
    if bad:
        msg = f"{where}.mode: unknown mode {bad}; choose from {list(MODES)}"
        raise ConfigError(msg)
    return DatasetSpec(
        name=str(entry["name"]),
        class_path=str(entry["class_path"]),
        init_args=dict(entry.get("init_args") or {}),
        categories=[str(c) for c in _as_list(entry["categories"], f"{where}.categories")],
        modes=modes,
        notes=[str(n) for n in _as_list(entry.get("notes"), f"{where}.notes")],
    )


# Long on purpose: one pass over the config's top-level keys, each with its own check and error.
def load_config(source: str | Path | dict[str, Any], output: str | Path | None = None) -> BenchmarkConfig:  # noqa: PLR0912, PLR0915
    """Read and validate a benchmark config (a YAML path or an already-loaded mapping).

    Args:
        source: Path of a YAML file, or a mapping with the same content.
        output: Run folder; overrides the config's ``output`` (default ``results/benchmark/<name>``).

    Raises:
        ConfigError: Naming the file, entry and key of the first problem found.
    """
    path = None
    if isinstance(source, dict):
        raw, label, base = copy.deepcopy(source), "<config>", Path.cwd()
    else:
        path = Path(source)
        if not path.is_file():
            msg = f"Benchmark config not found: {path}"
            raise ConfigError(msg)
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            msg = f"{path}: not valid YAML: {exc}"
            raise ConfigError(msg) from None
        label, base = str(path), path.resolve().parent
    _check_keys(raw, TOP_KEYS, label)
    name = str(raw.get("name") or (path.stem if path else "benchmark"))
    out = Path(output) if output is not None else Path(raw.get("output") or f"results/benchmark/{name}")

    variables: dict[str, str] = {"run_data": str((out / "data").resolve())}
    for key, value in (raw.get("vars") or {}).items():
        text = str(_expand(str(value), variables, f"{label}: vars.{key}"))
        if (text.startswith(("./", "../")) or text in {".", ".."}) and not Path(text).is_absolute():
            text = str((base / text).resolve())
        variables[str(key)] = text
    body = _expand({k: v for k, v in raw.items() if k != "vars"}, variables, label)

    timing = {**TIMING_DEFAULTS, **(body.get("timing") or {})}
    _check_keys(timing, TIMING_KEYS, f"{label}: timing")
    if int(timing["runs"]) < 10:
        msg = f"{label}: timing.runs must be >= 10 (median of at least ten timed passes), got {timing['runs']}"
        raise ConfigError(msg)
    models = [_parse_model(m, f"{label}: models[{i}]") for i, m in enumerate(_as_list(body.get("models"), "models"))]
    datasets = [
        _parse_dataset(d, f"{label}: datasets[{i}]") for i, d in enumerate(_as_list(body.get("datasets"), "datasets"))
    ]
    if not models or not datasets:
        msg = f"{label}: needs at least one entry in `models` and in `datasets`"
        raise ConfigError(msg)
    for kind, entries in (("models", models), ("datasets", datasets)):
        names = [e.name for e in entries]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            msg = f"{label}: {kind} names must be unique; repeated: {duplicates}"
            raise ConfigError(msg)
    dataset_names = {d.name for d in datasets}
    for model in models:
        unknown = sorted((set(model.datasets or []) | set(model.per_dataset)) - dataset_names)
        if unknown:
            msg = f"{label}: model '{model.name}': datasets/per_dataset name unknown datasets {unknown}"
            raise ConfigError(msg)
    offline, offline_defaults = _parse_offline(body.get("offline", TOP_DEFAULTS["offline"]), f"{label}: offline")
    try:
        logger = parse_logger(body.get("logger"), f"{label}: logger")
    except LoggerConfigError as exc:
        raise ConfigError(str(exc)) from None
    generate = [dict(g) for g in _as_list(body.get("generate"), "generate")]
    for i, entry in enumerate(generate):
        _check_keys(entry, GENERATE_KEYS, f"{label}: generate[{i}]")
        if not entry.get("name"):
            msg = f"{label}: generate[{i}]: missing 'name' (the folder under ${{run_data}})"
            raise ConfigError(msg)
    return BenchmarkConfig(
        name=name,
        path=path,
        description=str(body.get("description") or ""),
        output=out,
        seeds=[int(s) for s in _as_list(body.get("seeds", TOP_DEFAULTS["seeds"]), "seeds")],
        accelerator=str(body.get("accelerator", TOP_DEFAULTS["accelerator"])),
        precision=str(body.get("precision", TOP_DEFAULTS["precision"])),
        threads=body.get("threads"),
        offline=offline,
        timing={k: int(v) for k, v in timing.items()},
        save_predictions=bool(body.get("save_predictions", TOP_DEFAULTS["save_predictions"])),
        generate=generate,
        models=models,
        datasets=datasets,
        raw=raw,
        executor=dict(body.get("executor") or {}),
        offline_defaults=offline_defaults,
        logger=logger,
    )


def _parse_offline(value: Any, where: str) -> tuple[bool, dict[str, Any]]:
    """The top-level ``offline``: ``true``/``false``, or a mapping of substitutes (which means offline too).

    A mapping is what a reader of ``offline: {random_init: true}`` expects: the run is offline, and every model
    without its own ``offline`` section gets these substitutes.
    """
    if isinstance(value, bool):
        return value, {}
    if isinstance(value, dict):
        _check_keys(value, OFFLINE_KEYS, where)
        return True, dict(value)
    msg = f"{where}: expected true, false or a mapping with keys {sorted(OFFLINE_KEYS)}, got {value!r}"
    raise ConfigError(msg)


MODEL_MODULES = ("anomalib.models", "anomalib_crr")
DATA_MODULES = ("anomalib.data", "anomalib_crr.data")


# Long on purpose: one branch per kind of class path in a config, each naming its own error.
def validate_classes(config: BenchmarkConfig) -> None:  # noqa: PLR0912
    """Import every model/datamodule class and check its type and init args (imports anomalib: ~10 s).

    Raises:
        ConfigError: Unknown class, wrong base class, or an init arg the class does not take.
    """
    from anomalib.data import AnomalibDataModule
    from anomalib.models import AnomalibModule

    label = str(config.path or "<config>")
    for model in config.models:
        if model.skip:
            continue
        where = f"{label}: model '{model.name}'"
        cls = import_class(model.class_path, MODEL_MODULES, where)
        if not (isinstance(cls, type) and issubclass(cls, AnomalibModule)):
            msg = f"{where}: class_path '{model.class_path}' is not an AnomalibModule subclass"
            raise ConfigError(msg)
        for dataset_name in [None, *model.per_dataset]:
            spec = model.for_dataset(dataset_name) if dataset_name else model
            at = f"{where}.per_dataset.{dataset_name}" if dataset_name else where
            _check_init_args(cls, spec.init_args, at)
            _check_nested(spec.init_args, f"{at}.init_args")
        if model.image_size is not None and "pre_processor" in model.init_args:
            msg = f"{where}: give either image_size or init_args.pre_processor, not both"
            raise ConfigError(msg)
    if config.logger["kind"] == "class":
        cls = import_class(config.logger["class_path"], LOGGER_MODULES, f"{label}: logger")
        _check_init_args(cls, config.logger["init_args"], f"{label}: logger")
    for dataset in config.datasets:
        where = f"{label}: dataset '{dataset.name}'"
        cls = import_class(dataset.class_path, DATA_MODULES, where)
        if not (isinstance(cls, type) and issubclass(cls, AnomalibDataModule)):
            msg = f"{where}: class_path '{dataset.class_path}' is not an AnomalibDataModule subclass"
            raise ConfigError(msg)
        _check_init_args(cls, dataset.init_args, where)
        params = inspect.signature(cls.__init__).parameters
        for mode in dataset.modes:
            if mode == "multiclass" and "categories" not in params:
                msg = (
                    f"{where}: mode 'multiclass' needs a multi-class datamodule with `categories` "
                    f"(e.g. anomalib_crr.data.MultiClassMVTecAD); {cls.__name__} has none"
                )
                raise ConfigError(msg)
            takes_category = "category" in params or "categories" in params
            if mode == "per_category" and not takes_category and len(dataset.categories) != 1:
                msg = f"{where}: {cls.__name__} takes no `category`; per_category mode needs one category"
                raise ConfigError(msg)
        for key in ("category", "categories"):
            if key in dataset.init_args:
                msg = f"{where}.init_args: do not set '{key}'; list them in `categories`"
                raise ConfigError(msg)
    for model in config.models:
        if model.skip:
            continue
        for key in model.datamodule:
            for dataset in config.datasets:
                cls = import_class(dataset.class_path, DATA_MODULES, label)
                _check_init_args(cls, {key: None}, f"{label}: model '{model.name}'.datamodule (for '{dataset.name}')")


# The anomalib val split modes that take nothing from the test set (``from_test`` moves a share of it).
TEST_PRESERVING_VAL_SPLITS = {"same_as_test", "from_train", "from_dir", "none", "synthetic"}
# Why ``same_as_test``: the seven benchmark metrics are threshold-free, so validation only sets the
# normalisation and threshold that the pictures and predicted labels use. ``same_as_test`` keeps both the
# training and the test set exactly as the user gave them, is anomalib's own default for MVTec AD, VisA and
# BTech, and is what the papers report on (the whole test set). ``from_train`` would take good images away
# from training and give a validation set without defects, on which anomalib's F1-adaptive threshold is
# meaningless. ``from_test`` (anomalib's ``Folder`` default) would evaluate on a different half of the test
# set per seed.
DEFAULT_VAL_SPLIT = "same_as_test"
# Weight provenances (see :func:`.offline.weights_provenance`) that mean "this model would download".
_DOWNLOADS = {"pretrained (download)", "as built by the model (no weights option)"}


def apply_defaults(config: BenchmarkConfig) -> list[str]:
    """Fill in what the benchmark decides when the config is silent; returns one log line per decision.

    - Every dataset whose datamodule would take test images for validation (anomalib's ``Folder`` defaults to
      ``val_split_mode=from_test``) gets ``val_split_mode: same_as_test`` (see :data:`DEFAULT_VAL_SPLIT`).
      A config that sets ``val_split_mode`` (in the dataset or a model's ``datamodule``) keeps it; one that
      moves test images is named here, and the jobs record how many they moved.
    - Offline runs (``offline: true``, the default, or a mapping): a model without its own ``offline`` section
      gets the top-level mapping, else, if it would download weights, ``random_init: true``
      (``efficientad_random_teacher: true`` for EfficientAd). Its weights column then says "random init".

    It changes the jobs' definitions (and so their spec hashes), which is the point: a result computed on a
    halved test set or with other weights is stale. Call after :func:`validate_classes`.
    """
    return [*_default_val_splits(config), *_offline_fallbacks(config)]


def _default_val_splits(config: BenchmarkConfig) -> list[str]:
    lines = []
    for dataset in config.datasets:
        cls = import_class(dataset.class_path, DATA_MODULES, dataset.name)
        parameter = inspect.signature(cls.__init__).parameters.get("val_split_mode")
        if parameter is None:
            continue
        overrides = {
            m.name: m.for_dataset(dataset.name).datamodule["val_split_mode"]
            for m in config.models
            if not m.skip and "val_split_mode" in m.for_dataset(dataset.name).datamodule
        }
        if "val_split_mode" not in dataset.init_args:
            default = str(getattr(parameter.default, "value", parameter.default))
            if default not in TEST_PRESERVING_VAL_SPLITS:
                dataset.init_args["val_split_mode"] = DEFAULT_VAL_SPLIT
                lines.append(
                    f"dataset '{dataset.name}': val_split_mode={DEFAULT_VAL_SPLIT} (the benchmark's default; "
                    f"{cls.__name__}'s own '{default}' would move test images to validation)"
                )
        chosen = {"the dataset": dataset.init_args.get("val_split_mode"), **overrides}
        for who, mode in chosen.items():
            if str(mode) not in TEST_PRESERVING_VAL_SPLITS and mode is not None:
                lines.append(
                    f"WARNING: dataset '{dataset.name}': {who} sets val_split_mode={mode}, which moves test images "
                    "to validation; the jobs record how many, and the report says so"
                )
    return lines


def _offline_fallbacks(config: BenchmarkConfig) -> list[str]:
    from .offline import weights_provenance

    if not config.offline:
        return []
    lines = []
    for model in config.models:
        if model.skip or model.offline or model.weights:
            continue
        if config.offline_defaults:
            model.offline = dict(config.offline_defaults)
            lines.append(f"model '{model.name}': offline substitutes from the top-level offline: {model.offline}")
            continue
        cls = import_class(model.class_path, MODEL_MODULES, model.name)
        accepted = set(inspect.signature(cls.__init__).parameters)
        variants = [model.init_args, *(model.for_dataset(name).init_args for name in model.per_dataset)]
        if not any(weights_provenance(args, {}, None, accepted) in _DOWNLOADS for args in variants):
            continue
        key = "efficientad_random_teacher" if cls.__name__ == "EfficientAd" else "random_init"
        model.offline = {key: True}
        lines.append(
            f"model '{model.name}': offline run and its weights would be downloaded, so it is random-initialised "
            f"(offline: {{{key}: true}}); give it offline.backbone_weights or set offline: false for real weights"
        )
    return lines


def _folder_dirs(dataset: DatasetSpec, cls: type) -> list[tuple[str, Path]]:
    """The ``Folder``-style sub-folders a dataset names (``normal_dir``, ...), resolved as the datamodule does."""
    params = inspect.signature(cls.__init__).parameters
    root = dataset.init_args.get("root")
    bases = [Path(root) / c for c in dataset.categories] if "categories" in params and root else [Path(root or ".")]
    found = []
    for key in ("normal_dir", "abnormal_dir", "normal_test_dir", "mask_dir"):
        for value in _as_list(dataset.init_args.get(key), key):
            for base in bases:
                found.append((key, Path(value) if Path(value).is_absolute() else base / str(value)))
    return found


def check_paths(config: BenchmarkConfig) -> None:
    """Data roots and weight files must exist, checked once before any job (after ``generate`` wrote its data).

    Online configs may let a datamodule download a missing root (MVTec AD, VisA), but a ``Folder``-style
    dataset cannot download anything, so its root and sub-folders are checked whether offline or not: a
    misspelt path fails here once, naming the path, instead of failing every job in turn.

    Raises:
        ConfigError: Naming the entry, the key and the missing path.
    """
    label = str(config.path or "<config>")
    for dataset in config.datasets:
        cls = import_class(dataset.class_path, DATA_MODULES, f"{label}: dataset '{dataset.name}'")
        folder_like = "normal_dir" in inspect.signature(cls.__init__).parameters
        root = dataset.init_args.get("root")
        if root is not None and (config.offline or folder_like) and not Path(root).is_dir():
            msg = f"{label}: dataset '{dataset.name}': data root not found: {root} (init_args.root)"
            raise ConfigError(msg)
        for key, path in _folder_dirs(dataset, cls) if folder_like else []:
            if not path.exists():
                msg = f"{label}: dataset '{dataset.name}': init_args.{key} not found: {path}"
                raise ConfigError(msg)
    if not config.offline:
        return  # online configs let the models download what is missing
    for model in config.models:
        if model.skip:
            continue
        weights = model.offline.get("backbone_weights")
        if weights is not None and not Path(weights).is_file():
            msg = f"{label}: model '{model.name}': offline.backbone_weights file not found: {weights}"
            raise ConfigError(msg)
        for key in ("weights_path", "dtd_dir", "imagenet_dir", "anomaly_source_path"):
            value = model.init_args.get(key)
            if isinstance(value, str) and value and not Path(value).exists():
                msg = f"{label}: model '{model.name}': init_args.{key} not found: {value}"
                raise ConfigError(msg)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-")


def expand_jobs(config: BenchmarkConfig, only: str | None = None) -> list[JobSpec]:
    """Models × dataset settings × seeds; ``only`` keeps jobs whose id matches (glob, or substring)."""
    jobs = []
    for model in config.models:
        if model.skip:
            continue
        for dataset in config.datasets:
            if model.datasets is not None and dataset.name not in model.datasets:
                continue
            spec = model.for_dataset(dataset.name)
            for mode in dataset.modes:
                groups = [[c] for c in dataset.categories] if mode == "per_category" else [dataset.categories]
                for categories in groups:
                    for seed in config.seeds:
                        scope = categories[0] if mode == "per_category" else "all"
                        job_id = _slug(f"{model.name}__{dataset.name}__{mode}__{scope}__seed{seed}")
                        jobs.append(
                            JobSpec(
                                job_id=job_id,
                                model=spec,
                                dataset=dataset,
                                mode=mode,
                                categories=list(categories),
                                seed=seed,
                                accelerator=config.accelerator,
                                precision=str(spec.trainer.get("precision", config.precision)),
                                threads=config.threads,
                                offline=config.offline,
                                timing=config.timing,
                                save_predictions=config.save_predictions,
                                logger=config.logger,
                            )
                        )
    if only:
        pattern = only if any(ch in only for ch in "*?[") else f"*{only}*"
        jobs = [job for job in jobs if fnmatch.fnmatchcase(job.job_id, pattern)]
    return jobs
