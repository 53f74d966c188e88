"""Registration with anomalib: get_model/list_models, the start-up hook and the anomalib-crr wrapper."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from anomalib.models import get_model, list_models

from anomalib_crr import CRR, MFRNet
from anomalib_crr.cli import main as crr_main

from .helpers import PRINT_CONFIG_ARGS, TINY_CRR, TINY_MFRNET


@pytest.mark.parametrize("name", ["crr", "CRR"])
def test_get_model_finds_crr(name: str) -> None:
    model = get_model(name, **dict(TINY_CRR.items()))
    assert isinstance(model, CRR)


@pytest.mark.parametrize("name", ["mfrnet", "MFRNet"])
def test_get_model_finds_mfrnet(name: str) -> None:
    assert isinstance(get_model(name, **TINY_MFRNET), MFRNet)


@pytest.mark.parametrize("model", ["MFRNet", "anomalib_crr.MFRNet"])
def test_cli_resolves_mfrnet_by_short_name_and_class_path(model: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        crr_main(["train", "--model", model, "--data", "anomalib.data.MVTecAD", "--print_config"])
    assert exit_info.value.code == 0
    assert "class_path: anomalib_crr.MFRNet" in capsys.readouterr().out


def test_list_models_includes_crr_and_mfrnet() -> None:
    names = set(list_models())
    assert {"crr", "c_r_r"} & names
    assert {"mfrnet", "m_f_r_net", "mfr_net"} & names


def test_startup_hook_is_installed_and_imports_nothing_heavy() -> None:
    code = (
        "import sys, _anomalib_crr_hook as h; "
        "print(any(isinstance(f, h._LoadAfterAnomalibModels) for f in sys.meta_path), "
        "'torch' in sys.modules, 'anomalib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "False", "False"]


def test_wrapper_prints_config_with_plugin_loaded(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        crr_main(PRINT_CONFIG_ARGS)
    assert exit_info.value.code == 0
    assert "class_path: anomalib_crr.CRR" in capsys.readouterr().out


def test_demo_runs_offline_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from anomalib_crr.demo import run_demo

    args = ["--output", str(tmp_path), "--encoder-weights", "none", "--categories", "washer"]
    args += ["--stage1-steps", "1", "--stage2-steps", "1", "--image-size", "56"]
    results = run_demo(args)
    assert results[0]["category"] == "washer"
    assert 0.0 <= results[0]["image_AUROC"] <= 1.0
    assert "image_AUROC" in capsys.readouterr().out
    assert list((tmp_path / "results").rglob("images/*/*.png"))
    # a second run reuses the dataset and writes a new results version instead of overwriting
    run_demo(args)
    assert len(list((tmp_path / "results" / "CRR" / "MVTecAD" / "washer").glob("v*"))) == 2


def test_demo_without_weights_offline_fails_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SystemExit) as exit_info:
        crr_main(["demo", "--output", str(tmp_path), "--categories", "washer", "--image-size", "56"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "hf-hub:timm/vit_small_patch14_reg4_dinov2.lvd142m" in err
    assert "--encoder-weights none" in err
    assert "Traceback" not in err


def test_mfrnet_demo_runs_offline_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from anomalib_crr.demo import run_demo

    args = ["--model", "MFRNet", "--output", str(tmp_path), "--weights", "none", "--categories", "washer"]
    results = run_demo([*args, "--epochs", "1", "--image-size", "64"])
    assert results[0]["category"] == "washer"
    assert 0.0 <= results[0]["pixel_AUROC"] <= 1.0
    assert "MFRNet/MVTecAD" in capsys.readouterr().out
    assert list((tmp_path / "results" / "MFRNet").rglob("images/*/*.png"))


def test_demo_rejects_a_size_mfrnet_cannot_tile(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        crr_main(["demo", "--model", "MFRNet", "--weights", "none", "--output", str(tmp_path), "--image-size", "72"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "72x72" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("crr.yaml", {"encoder_name": "vit_base_patch14_reg4_dinov2", "stage1_steps": 10000, "stage2_steps": 8000}),
        ("crr_smoke.yaml", {"encoder_name": "vit_small_patch14_reg4_dinov2", "encoder_weights": None}),
        ("mfrnet.yaml", {"backbone": "tf_efficientnet_lite0", "mask_cell_size": [2], "num_masks": 3, "depth": 2}),
        ("mfrnet_paper.yaml", {"backbone": "vgg16", "mask_cell_size": [2, 4, 8], "num_masks": 3, "depth": 8}),
        ("mfrnet_smoke.yaml", {"backbone": "tf_efficientnet_lite0", "pre_trained": False}),
    ],
)
def test_shipped_configs_parse(config: str, expected: dict, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    path = Path(__file__).resolve().parents[1] / "configs" / "model" / config
    with pytest.raises(SystemExit):
        crr_main(["train", "--config", str(path), "--data", "anomalib.data.MVTecAD", "--print_config"])
    out = capsys.readouterr().out
    parsed = yaml.safe_load(out[out.index("seed_everything:") :])
    assert parsed["model"]["class_path"] == ("anomalib_crr.MFRNet" if "mfrnet" in config else "anomalib_crr.CRR")
    for key, value in expected.items():
        assert parsed["model"]["init_args"][key] == value


# ---------------------------------------------------------------- every name form anomalib accepts (issue 13)
# Small, offline init args per model, and one value each form must pass through to the instance.
NAME_FORM_ARGS = {
    "CRR": ({**TINY_CRR, "stage1_steps": 7, "stage2_steps": 3}, lambda model: model.stage1_steps == 7),
    "MFRNet": ({**TINY_MFRNET, "lr": 3e-4}, lambda model: model.hparams.lr == 3e-4),
}
MODEL_CLASSES = {"CRR": CRR, "MFRNet": MFRNet}


def _dict_form(class_path: str, init_args: dict) -> dict:
    return {"class_path": class_path, "init_args": dict(init_args)}


@pytest.mark.parametrize("name", sorted(NAME_FORM_ARGS))
@pytest.mark.parametrize(
    "form",
    [
        _dict_form,
        lambda name, args: _dict_form(f"anomalib_crr.{name}", args),
        lambda name, args: _dict_form(f"anomalib.models.{name}", args),
        lambda name, args: __import__("omegaconf").OmegaConf.create(_dict_form(name, args)),
        lambda name, args: __import__("jsonargparse").Namespace(class_path=name, init_args=dict(args)),
    ],
    ids=["dict", "dict-plugin-path", "dict-anomalib-path", "DictConfig", "Namespace"],
)
def test_get_model_config_forms_find_the_plugin_models(name: str, form) -> None:
    init_args, applied = NAME_FORM_ARGS[name]
    model = get_model(form(name, init_args))
    assert type(model) is MODEL_CLASSES[name]
    assert applied(model)


def test_unknown_class_path_is_still_refused() -> None:
    from anomalib.models import UnknownModelError

    with pytest.raises(UnknownModelError):
        get_model({"class_path": "anomalib_crr.models.crr.lightning_model.CRR"})  # only the top-level module


def test_from_anomalib_models_import_in_a_fresh_interpreter() -> None:
    code = "from anomalib.models import CRR, MFRNet; print(CRR.__module__, MFRNet.__module__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == [
        "anomalib_crr.models.crr.lightning_model",
        "anomalib_crr.models.mfrnet.lightning_model",
    ]


@pytest.mark.parametrize("name", sorted(NAME_FORM_ARGS))
def test_anomalib_cli_yaml_with_short_class_path(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml
    from anomalib.cli.cli import AnomalibCLI

    init_args = dict(NAME_FORM_ARGS[name][0])
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"model": {"class_path": name, "init_args": init_args}}))
    with pytest.raises(SystemExit) as exit_info:
        AnomalibCLI(args=["train", "--config", str(config), "--data", "anomalib.data.MVTecAD", "--print_config"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    parsed = yaml.safe_load(out[out.index("seed_everything:") :])
    assert parsed["model"]["class_path"] == f"anomalib_crr.{name}"


@pytest.mark.parametrize("name", sorted(NAME_FORM_ARGS))
def test_anomalib_benchmark_pipeline_builds_jobs_for_short_class_paths(name: str, tiny_dataset: Path) -> None:
    from anomalib.pipelines.benchmark.generator import BenchmarkJobGenerator

    init_args, applied = NAME_FORM_ARGS[name]
    args = {
        "seed": 0,
        "model": _dict_form(name, init_args),
        "data": {"class_path": "MVTecAD", "init_args": {"root": str(tiny_dataset), "category": "washer"}},
    }
    jobs = list(BenchmarkJobGenerator(accelerator="cpu").generate_jobs(args, None))
    assert len(jobs) == 1
    assert type(jobs[0].model) is MODEL_CLASSES[name]
    assert applied(jobs[0].model)
