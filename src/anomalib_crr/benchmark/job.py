# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""One benchmark job, run in its own process: ``python -m anomalib_crr.benchmark.job_main <job_dir>/job.json``.

Over 400 lines on purpose: a job's whole life in one process (data, model, fit, test, cost, result), read top to bottom.

A job builds its datamodule and model from the config entry, applies the model's offline substitutes, fits
and tests with anomalib's ``Engine`` (the model's evaluator replaced by the seven-metric one, see
:mod:`.metrics`), measures the cost (see :mod:`.cost`) and writes ``result.json`` next to ``job.json``
(atomically, so a half-written file never counts as finished). Running in a separate process means a crash,
an out-of-memory kill or a CUDA error ends this job only; any exception is written to ``result.json`` with
``status: failed`` and the log path, and the process exits with code 1.

Per-category metrics: a multi-class datamodule of :mod:`anomalib_crr.data` adds the project's
``PerCategoryMetrics`` callback, which computes the evaluator's metrics on each category's test images;
a single-category datamodule's pooled test metrics are that category's.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import logging
import math
import os
import shutil
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from .executors.base import EXECUTION_ENV, KEEP_TIMING_ENV, THREADS_ENV
from .logs import build_logger
from .samples import SampleRecorder

RESULT = "result.json"
PREDICTIONS = "predictions.pt"
TIMING_MODEL = "timing_model.pt"  # kept by a ``pool`` job on CPU until the runner re-times it alone
logger = logging.getLogger("anomalib_crr.benchmark.job")


def instantiate(value: Any) -> Any:
    """Recursively build ``{"class_path": ..., "init_args": {...}}`` specs (as in anomalib's YAML)."""
    if isinstance(value, list):
        return [instantiate(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "class_path" not in value:
        return {k: instantiate(v) for k, v in value.items()}
    module_name, _, attr = str(value["class_path"]).rpartition(".")
    cls = getattr(importlib.import_module(module_name), attr)
    return cls(**{k: instantiate(v) for k, v in (value.get("init_args") or {}).items()})


def _resolve(path: str, modules: tuple[str, ...]) -> type:
    if "." in path:
        module_name, _, attr = path.rpartition(".")
        return getattr(importlib.import_module(module_name), attr)
    for module_name in modules:
        module = importlib.import_module(module_name)
        if hasattr(module, path):
            return getattr(module, path)
    msg = f"unknown class {path}"
    raise ValueError(msg)


def build_datamodule(job: dict[str, Any]) -> Any:
    """The job's datamodule: the entry's init args, the model's overrides, and its category or categories."""
    dataset, model = job["dataset"], job["model"]
    cls = _resolve(dataset["class_path"], ("anomalib.data", "anomalib_crr.data"))
    kwargs = {**instantiate(dataset["init_args"]), **model["datamodule"]}
    params = inspect.signature(cls.__init__).parameters
    if "categories" in params:
        kwargs["categories"] = list(job["categories"])
    elif "category" in params:
        kwargs["category"] = job["categories"][0]
    return cls(**kwargs)


def build_model(job: dict[str, Any]) -> Any:
    """The job's model with the seven-metric evaluator and no visualiser (images are not part of the benchmark)."""
    from .metrics import build_evaluator

    spec = job["model"]
    cls = _resolve(spec["class_path"], ("anomalib.models", "anomalib_crr"))
    kwargs = instantiate(spec["init_args"])
    if spec.get("image_size"):
        kwargs["pre_processor"] = cls.configure_pre_processor(image_size=tuple(spec["image_size"]))
    return cls(**kwargs, evaluator=build_evaluator(), visualizer=False)


class PredictionRecorder:
    """Keeps the post-processed test outputs (score, label, map, mask, path) for checks outside the job.

    Batches are read at epoch end: the model's post-processor updates each batch object in place after the
    trainer's own callbacks ran, so by then every batch holds exactly what the evaluator saw.
    """

    def __init__(self) -> None:
        from lightning.pytorch import Callback

        recorder = self

        class _Callback(Callback):
            def on_test_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, *args: Any) -> None:
                del trainer, pl_module, outputs, args
                recorder.batches.append(batch)

        self.batches: list[Any] = []
        self.callback = _Callback()

    def save(self, path: Path) -> None:
        """Write the recorded fields, concatenated over batches, with ``torch.save``."""
        import torch

        out: dict[str, Any] = {"image_path": [p for b in self.batches for p in b.image_path]}
        for name in ("pred_score", "gt_label", "anomaly_map", "gt_mask"):
            values = [getattr(b, name) for b in self.batches]
            if all(v is not None for v in values):
                out[name] = torch.cat([v.detach().cpu() for v in values])
        torch.save(out, path)


def _time_metric_compute() -> dict[str, float]:
    """Accumulate the wall time of every metric ``compute`` (AUPRO separately), to show what dominates."""
    from anomalib.metrics import AUPRO, AUROC

    from .metrics import AP, F1Max

    totals = {"metrics_compute_s": 0.0, "aupro_compute_s": 0.0}
    for cls in (AUROC, AP, F1Max, AUPRO):
        original = cls.compute

        @functools.wraps(original)
        def timed(self: Any, _original: Any = original, _cls: type = cls) -> Any:
            start = time.perf_counter()
            try:
                return _original(self)
            finally:
                elapsed = time.perf_counter() - start
                totals["metrics_compute_s"] += elapsed
                if _cls is AUPRO:
                    totals["aupro_compute_s"] += elapsed

        cls.compute = timed
    return totals


def _real_optimizers(trainer: Any) -> list[Any]:
    """The trainer's optimizers without Lightning's placeholder for models that return none."""
    return [o for o in getattr(trainer, "optimizers", []) or [] if type(o).__name__ != "_MockOptimizer"]


def _trainable_parameters(trainer: Any) -> int:
    """Parameters the optimizers update (0 for memory-bank models such as PaDiM and PatchCore)."""
    seen: set[int] = set()
    count = 0
    for optimizer in _real_optimizers(trainer):
        for group in optimizer.param_groups:
            for param in group["params"]:
                if id(param) not in seen:
                    seen.add(id(param))
                    count += param.numel()
    return count


def _category_rows(job: dict[str, Any], engine: Any, metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per-category metric rows: the PerCategoryMetrics callback's, or the pooled ones for one category."""
    from anomalib_crr.data import PerCategoryMetrics

    from .metrics import METRICS, with_mad

    callbacks = [cb for cb in engine.trainer.callbacks if isinstance(cb, PerCategoryMetrics)]
    if callbacks and callbacks[0].results:
        results = callbacks[0].results
        return {c: with_mad(results[c]) for c in job["categories"]}
    if len(job["categories"]) != 1:
        msg = "a multi-category job needs a datamodule with per-category metrics (anomalib_crr.data.MultiClass*)"
        raise RuntimeError(msg)
    return {job["categories"][0]: with_mad({name: metrics.get(name, math.nan) for name in METRICS})}


# Long on purpose: a job's life in order (seed, data, model, fit, test, timing, result); splitting hides the order.
def run_job(job_file: Path) -> dict[str, Any]:  # noqa: PLR0915
    """Run the job described by ``job_file``; returns the result written to ``result.json``."""
    import torch
    from anomalib.engine import Engine
    from lightning.pytorch import seed_everything

    from . import cost
    from .offline import apply_offline_patches, weights_provenance

    job = json.loads(job_file.read_text())
    job_dir = job_file.parent
    spec = job["model"]
    threads = os.environ.get(THREADS_ENV) or job.get("threads")  # the executor's share of the cores wins
    if threads:
        torch.set_num_threads(int(threads))
    notes = apply_offline_patches(spec["offline"])
    compute_times = _time_metric_compute()
    seed_everything(job["seed"], workers=True)
    rss_baseline = cost.current_rss_mb()
    datamodule = build_datamodule(job)
    model = build_model(job)
    recorder = PredictionRecorder() if job.get("save_predictions") else None
    samples = SampleRecorder(job["categories"])
    trainer_args = {
        "accelerator": job["accelerator"],
        "devices": 1,
        "precision": job["precision"],
        "logger": build_logger(job.get("logger"), job_dir),  # training curves in <job>/logs (see .logs)
        "enable_progress_bar": False,
        **spec["trainer"],
    }
    engine_root = job_dir / "engine"
    engine = Engine(
        default_root_dir=engine_root,
        callbacks=[samples.callback, *([recorder.callback] if recorder else [])],
        **trainer_args,
    )

    device = (
        torch.device("cuda") if torch.cuda.is_available() and job["accelerator"] in {"gpu", "cuda", "auto"} else None
    )
    cost.reset_peak_memory(device or torch.device("cpu"))
    start = time.perf_counter()
    engine.fit(model=model, datamodule=datamodule)
    fit_s = time.perf_counter() - start
    device = engine.trainer.strategy.root_device
    peak_train = cost.peak_memory_mb(device)
    steps = int(engine.trainer.global_step)
    epochs = int(engine.trainer.current_epoch)
    trainable = _trainable_parameters(engine.trainer)
    if not _real_optimizers(engine.trainer):  # Lightning counts batches as steps even without an optimizer
        steps = 0

    cost.reset_peak_memory(device)
    start = time.perf_counter()
    metrics = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    test_s = time.perf_counter() - start
    rows = _category_rows(job, engine, metrics)
    test_set = evaluated_images_record(job["categories"], datamodule, samples.scores)
    if test_set["moved_to_val"]:
        message = moved_test_images_message(test_set)
        logger.warning("%s", message)
        notes.append(message)
    if recorder is not None:
        recorder.save(job_dir / PREDICTIONS)
    pictures = samples.save(job_dir)

    # Timing runs outside the trainer: Lightning finalised (flushed and closed) the logger when test ended, so
    # no log writer competes with the timed passes.
    model.eval().to(device)
    images = next(iter(datamodule.test_dataloader())).image.to(device)
    batch_size = int(getattr(datamodule, "eval_batch_size", images.shape[0]))
    repeats = math.ceil(batch_size / images.shape[0])
    eval_batch = images.repeat(repeats, 1, 1, 1)[:batch_size]
    single = images[:1]
    forward_context = engine.trainer.precision_plugin.forward_context
    with forward_context():
        pre = model.pre_processor.transform(single) if getattr(model, "pre_processor", None) else single
        try:
            macs = cost.macs_per_image(model.model, pre)
        except Exception as exc:
            macs = math.nan
            notes.append(f"MACs not counted: {type(exc).__name__}: {exc}")
        runs, warmup = job["timing"]["runs"], job["timing"]["warmup"]
        latency_times = cost.timed_seconds(lambda: model(single), runs, warmup, device)
        latency = statistics.median(latency_times)
        batch_time = cost.median_seconds(lambda: model(eval_batch), runs, warmup, device)
    peak_infer = cost.peak_memory_mb(device)
    total, _ = cost.parameter_counts(model)
    if os.environ.get(KEEP_TIMING_ENV):
        _keep_for_timing(job_dir, model, single, eval_batch, notes)

    result: dict[str, Any] = {
        "status": "ok",
        "job_id": job["job_id"],
        "model": spec["name"],
        "dataset": job["dataset"]["name"],
        "mode": job["mode"],
        "seed": job["seed"],
        "categories": rows,
        "test_set": test_set,
        "cost": {
            "params_M": total / 1e6,
            "trainable_params_M": trainable / 1e6,
            "macs_G": macs / 1e9,
            "fit_s": fit_s,
            "optimizer_steps": steps,
            "epochs": epochs,
            "test_s": test_s,
            "metrics_compute_s": compute_times["metrics_compute_s"],
            "aupro_compute_s": compute_times["aupro_compute_s"],
            "latency_ms": latency * 1000,
            "throughput_img_s": batch_size / batch_time,
            "eval_batch_size": batch_size,
            "peak_mem_train_mb": peak_train,
            "peak_mem_infer_mb": peak_infer,
            "rss_baseline_mb": rss_baseline,
            "latency_iqr_ms": cost.iqr(latency_times) * 1000,
            "timing": execution_info()["timing"],
        },
        "settings": {
            "class_path": spec["class_path"],
            "init_args": spec["init_args"],
            "trainer": spec["trainer"],
            "image_size": spec.get("image_size"),
            "input_size": list(pre.shape[-2:]),
            "raw_image_size": list(images.shape[-2:]),
            "datamodule_overrides": spec["datamodule"],
            "weights": weights_provenance(
                spec["init_args"],
                spec["offline"],
                spec.get("weights"),
                set(inspect.signature(type(model).__init__).parameters),
            ),
            "memory_kind": cost.memory_kind(device),
            "macs_counter": "torch.utils.flop_counter.FlopCounterMode (MAC = FLOP / 2)",
            "code": _code_source(),
            **cost.environment(device, str(engine.trainer.precision)),
        },
        "pictures": pictures,
        "notes": [*notes, *spec.get("notes", []), *job["dataset"].get("notes", [])],
        "log": str(job_dir / "log.txt"),
        "spec_hash": job["spec_hash"],
    }
    result["cost"]["latency_measured"] = cost.latency_measured(result["cost"])
    shutil.rmtree(engine_root, ignore_errors=True)  # checkpoints are not part of the benchmark
    return result


def evaluated_images_record(categories: list[str], datamodule: Any, scores: list[dict[str, Any]]) -> dict[str, Any]:
    """How many test images each category's metrics are computed on, and whether validation took any away.

    Why: anomalib's ``val_split_mode=from_test`` (``Folder``'s default) silently moves a seed-dependent share of
    the test images to validation, so metrics would be on a subset of what the user gave. The benchmark defaults
    to a split that leaves the test set whole (see :func:`.config.apply_defaults`); this record makes any other
    choice visible in ``results.csv`` and the report.

    Args:
        categories: The job's categories.
        datamodule: The datamodule after ``fit``/``test`` (its splits are set up).
        scores: The per-image rows of the sample recorder (one per image the evaluator saw), may be empty.

    Returns:
        ``images`` (test images per category), ``moved_to_val`` (per category), ``val_images`` and
        ``val_split_mode``.
    """
    raw_mode = getattr(datamodule, "val_split_mode", "")
    mode = str(getattr(raw_mode, "value", raw_mode))  # anomalib keeps an enum, our multi-class modules may a str
    test_paths = _sample_paths(getattr(datamodule, "test_data", None))
    val_paths = _sample_paths(getattr(datamodule, "val_data", None))
    of_category = _category_lookup(categories, datamodule)
    if scores:  # what the evaluator actually saw
        images = {c: sum(1 for row in scores if row["category"] == c) for c in categories}
    else:
        images = {c: sum(1 for p in test_paths if of_category(p) == c) for c in categories}
    moved = dict.fromkeys(categories, 0)
    if mode == "from_test":
        for path in val_paths:
            category = of_category(path)
            if category in moved:
                moved[category] += 1
    return {
        "images": images,
        "moved_to_val": moved if any(moved.values()) else {},
        "val_images": len(val_paths),
        "val_split_mode": mode,
    }


def moved_test_images_message(test_set: dict[str, Any]) -> str:
    """One line saying how many test images validation took away (for the job log, its notes and the report)."""
    moved = sum(test_set["moved_to_val"].values())
    kept = sum(test_set["images"].values())
    return (
        f"val_split_mode={test_set['val_split_mode']} moved {moved} of {moved + kept} test images to validation; "
        f"the metrics are on the other {kept}"
    )


def _sample_paths(dataset: Any) -> list[str]:
    samples = getattr(dataset, "samples", None)
    return [] if samples is None else [str(p) for p in samples["image_path"]]


def _category_lookup(categories: list[str], datamodule: Any) -> Any:
    """``path -> category``: the multi-class datamodule's own lookup, or the job's one category."""
    if hasattr(datamodule, "category_of") and len(categories) > 1:
        return lambda path: datamodule.category_of([path])[0]
    return lambda path: categories[0]


def execution_info() -> dict[str, Any]:
    """Where and how this job process runs: the executor's record plus host, pid, threads and devices."""
    import socket

    import torch

    record = json.loads(os.environ.get(EXECUTION_ENV) or "{}")
    return {
        "executor": record.pop("executor", "local"),
        "timing": record.pop("timing", "exclusive: one job at a time on this machine"),
        **record,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "threads": torch.get_num_threads(),
        "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }


def _keep_for_timing(job_dir: Path, model: Any, single: Any, eval_batch: Any, notes: list[str]) -> None:
    """Save the trained model and its timing inputs so the runner can re-time inference alone after the run."""
    import torch

    try:
        torch.save(
            {"model": model.cpu(), "single": single.cpu(), "eval_batch": eval_batch.cpu()}, job_dir / TIMING_MODEL
        )
    except Exception as exc:
        (job_dir / TIMING_MODEL).unlink(missing_ok=True)
        notes.append(f"not re-timed alone (the model does not pickle: {type(exc).__name__}); timing is shared")


def _code_source() -> str:
    """Where this process imported ``anomalib_crr`` from (and the commit in ``BENCHMARK_CODE_COMMIT``, if set)."""
    import anomalib_crr

    source = str(Path(anomalib_crr.__file__).parent)
    commit = os.environ.get("BENCHMARK_CODE_COMMIT")
    return f"{source} @ {commit}" if commit else source


def write_result(job_dir: Path, result: dict[str, Any]) -> None:
    """Write ``result.json`` atomically (a crash mid-write never leaves a 'finished' job)."""
    tmp = job_dir / (RESULT + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(job_dir / RESULT)


def main(argv: list[str] | None = None) -> int:
    """Process entry point: run the job and write its result (``failed`` with the error on any exception)."""
    args = sys.argv[1:] if argv is None else argv
    job_file = Path(args[0])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    job = json.loads(job_file.read_text())
    started_at = time.time()
    try:
        result = run_job(job_file)
    except BaseException as exc:
        traceback.print_exc()
        message = str(exc).strip().splitlines()
        result = {
            "status": "failed",
            "job_id": job["job_id"],
            "model": job["model"]["name"],
            "dataset": job["dataset"]["name"],
            "mode": job["mode"],
            "seed": job["seed"],
            "error": f"{type(exc).__name__}: {message[0] if message else ''}"[:500],
            "log": str(job_file.parent / "log.txt"),
            "spec_hash": job["spec_hash"],
        }
        result["execution"] = {**execution_info(), "started_at": started_at, "ended_at": time.time()}
        write_result(job_file.parent, result)
        return 1
    result["execution"] = {**execution_info(), "started_at": started_at, "ended_at": time.time()}
    write_result(job_file.parent, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
