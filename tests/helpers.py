"""Helpers shared by the tests: a tiny CRR configuration."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

TINY_IMAGE = 64
TINY_CROP = 56  # 4 x 4 patches of 14 px

# ViT-S/14 DINOv2-R, random init, pruned to 2 blocks; a 2-block decoder; a narrow seg head.
TINY_CRR: dict[str, Any] = {
    "encoder_name": "vit_small_patch14_reg4_dinov2",
    "encoder_weights": None,
    "target_layers": [0, 1],
    "decoder_depth": 2,
    "fuse_layer_encoder": [[0], [1]],
    "fuse_layer_decoder": [[0], [1]],
    "seg_base_width": 8,
    "seg_output_size": 32,
    "warmup_steps": 1,
    "dtd_dir": None,
}


def tiny_crr(**overrides: Any):
    """A tiny CRR LightningModule with a 64 -> 56 pre-processor."""
    from anomalib_crr import CRR

    kwargs = {**TINY_CRR, "stage1_steps": 2, "stage2_steps": 2, **overrides}
    kwargs.setdefault(
        "pre_processor", CRR.configure_pre_processor(image_size=(TINY_IMAGE, TINY_IMAGE), crop_size=TINY_CROP)
    )
    return CRR(**kwargs)


def tiny_crr_model(**overrides: Any):
    """A tiny CrrModel (torch module only)."""
    from anomalib_crr.models.crr import CrrModel

    kwargs = {k: v for k, v in TINY_CRR.items() if k not in {"warmup_steps", "dtd_dir"}}
    return CrrModel(**{**kwargs, **overrides})


# ``train --print_config`` resolves the model class (by short name) without training anything.
PRINT_CONFIG_ARGS = [
    "train",
    *("--model", "CRR", "--model.encoder_weights", "null"),
    *("--data", "anomalib.data.MVTecAD", "--print_config"),
]


def run_offline(command: list[str], cwd: Path, timeout: int = 300, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in a fresh process that cannot download from the model hub."""
    return subprocess.run(
        command,
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# MFRNet on a random-init EfficientNet-Lite0 (176 channels at 16x16 for a 64 px input) with a 1-block restorer.
TINY_MFRNET: dict[str, Any] = {
    "backbone": "tf_efficientnet_lite0",
    "pre_trained": False,
    "stem_dim": 16,
    "embed_dim": 32,
    "depth": 1,
    "num_heads": 2,
    "mask_cell_size": [2, 4],
}

SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights" / "tf_efficientnet_lite0.in1k.safetensors"


def tiny_mfrnet(**overrides: Any):
    """A tiny MFRNet LightningModule for 64 px inputs."""
    from anomalib_crr import MFRNet

    kwargs = {**TINY_MFRNET, **overrides}
    kwargs.setdefault("pre_processor", MFRNet.configure_pre_processor(image_size=(TINY_IMAGE, TINY_IMAGE)))
    return MFRNet(**kwargs)


def onnx_outputs(onnx_path: Path, images: Any) -> dict[str, Any]:
    """Run an exported anomalib ONNX model with onnxruntime on CPU; outputs by name."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [output.name for output in session.get_outputs()]
    results = session.run(None, {session.get_inputs()[0].name: images.numpy()})
    return dict(zip(names, results, strict=True))


def tiny_datamodule(root: Path):
    """The generated ``washer`` category of ``tiny_dataset``, batches of 4, no workers."""
    from anomalib.data import MVTecAD

    return MVTecAD(root=root, category="washer", train_batch_size=4, eval_batch_size=4, num_workers=0)


def small_benchmark_config(root: Path, models: list[dict]) -> dict:
    """A benchmark config over the tiny dataset's one category (per-category jobs, CPU, 2 threads)."""
    return {
        "name": "small",
        "accelerator": "cpu",
        "threads": 2,
        "datasets": [
            {
                "name": "tiny",
                "class_path": "MVTecAD",
                "init_args": {"root": str(root), "num_workers": 0, "train_batch_size": 4, "eval_batch_size": 4},
                "categories": ["washer"],
                "mode": "per_category",
            }
        ],
        "models": models,
    }


# Benchmark model entries that finish in seconds on the tiny dataset (random-init backbones).
PADIM_ENTRY: dict[str, Any] = {
    "name": "Padim",
    "class_path": "Padim",
    "trainer": {"max_epochs": 1},
    "image_size": [64, 64],
    "init_args": {"backbone": "resnet18", "layers": ["layer1", "layer2"], "pre_trained": False},
}
PATCHCORE_ENTRY: dict[str, Any] = {
    "name": "Patchcore",
    "class_path": "Patchcore",
    "trainer": {"max_epochs": 1},
    "image_size": [64, 64],
    "init_args": {"backbone": "resnet18", "layers": ["layer2"], "pre_trained": False, "coreset_sampling_ratio": 0.1},
}


def as_in_a_terminal() -> None:
    """``preexec_fn`` for a child that a test stops with SIGINT, as Ctrl-C in a terminal would.

    A shell without job control starts background commands (``bash .ci/run &``, a CI runner's script step) with
    SIGINT *ignored*, and children inherit that; Python then installs no ``KeyboardInterrupt`` handler, so the
    test's SIGINT would do nothing. A program started from a terminal has SIGINT's default action, which this
    restores in the child only.
    """
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for(condition: Any, timeout: float, what: str) -> Any:
    """Poll ``condition()`` every 0.2 s until it returns something truthy (returned), failing after ``timeout`` s."""
    import time

    import pytest

    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")
    return None
