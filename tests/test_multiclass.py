"""Multi-class datamodules and per-category evaluation: one fit on several categories, one row per category + mean."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from anomalib.cli import AnomalibCLI
from anomalib.data import MVTecAD
from anomalib.engine import Engine

from anomalib_crr.data import MultiClassFolder, MultiClassMVTecAD, MultiClassVisA, make_synthetic_mvtec

from .helpers import TINY_IMAGE, tiny_crr, tiny_mfrnet

CATEGORIES = ["weave", "washer"]


@pytest.fixture(scope="module")
def multiclass_root(module_tmp_dir: Callable[[str], Path]) -> Path:
    root = module_tmp_dir("multiclass")
    return make_synthetic_mvtec(
        root, categories=CATEGORIES, num_train=6, num_test_good=3, num_test_defect=2, image_size=TINY_IMAGE, seed=1
    )


def _datamodule(root: Path, **kwargs: Any) -> MultiClassMVTecAD:
    return MultiClassMVTecAD(
        root=root, categories=CATEGORIES, train_batch_size=4, eval_batch_size=4, num_workers=0, **kwargs
    )


@pytest.fixture(scope="module")
def crr_run(multiclass_root: Path, module_tmp_dir: Callable[[str], Path]) -> dict[str, Any]:
    """One CRR fit on all categories, then a multi-class test and one single-category test per category."""
    out = module_tmp_dir("crr_multiclass")
    torch.manual_seed(0)
    model = tiny_crr()
    engine = Engine(default_root_dir=out, accelerator="cpu", devices=1, logger=False)
    datamodule = _datamodule(multiclass_root)
    engine.fit(model=model, datamodule=datamodule)
    results = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
    single = {}
    for category in CATEGORIES:
        alone = MVTecAD(root=multiclass_root, category=category, eval_batch_size=4, num_workers=0)
        single[category] = engine.test(model=model, datamodule=alone, verbose=False)[0]
    return {"results": results, "single": single, "out": out, "datamodule": datamodule}


def test_one_fit_sees_every_category_and_keeps_each_samples_category(crr_run: dict[str, Any]) -> None:
    datamodule = crr_run["datamodule"]
    train = datamodule.train_data.samples
    assert sorted(train["category"].unique()) == sorted(CATEGORIES)
    assert (train.groupby("category").size() == 6).all()
    test = datamodule.test_data.samples
    assert datamodule.category_of(list(test["image_path"])) == list(test["category"])
    assert all(Path(p).parts[-4] == c for p, c in zip(test["image_path"], test["category"], strict=True))


def test_each_category_row_equals_the_metric_on_that_category_alone(crr_run: dict[str, Any]) -> None:
    results = crr_run["results"]
    for category, alone in crr_run["single"].items():
        for metric in ("image_AUROC", "pixel_AUROC", "image_F1Score", "pixel_F1Score"):
            assert results[f"{category}/{metric}"] == pytest.approx(alone[metric], abs=1e-5), (category, metric)


def test_mean_row_is_the_mean_of_the_category_rows_and_files_are_written(crr_run: dict[str, Any]) -> None:
    results = crr_run["results"]
    for metric in ("image_AUROC", "pixel_AUROC"):
        expected = sum(results[f"{c}/{metric}"] for c in CATEGORIES) / len(CATEGORIES)
        assert results[f"mean/{metric}"] == pytest.approx(expected)
    csv_file = next(crr_run["out"].rglob("MultiClassMVTecAD/multiclass/*/per_category_metrics.csv"))
    lines = csv_file.read_text().strip().splitlines()
    assert lines[0].startswith("category,image_AUROC")
    assert [line.split(",")[0] for line in lines[1:]] == [*CATEGORIES, "mean"]
    table = json.loads(csv_file.with_suffix(".json").read_text())
    assert table["mean"]["pixel_AUROC"] == pytest.approx(results["mean/pixel_AUROC"])


def test_mfrnet_and_a_builtin_model_use_the_same_datamodule(multiclass_root: Path, tmp_path: Path) -> None:
    from anomalib.models import Padim

    for model in (tiny_mfrnet(), Padim(backbone="resnet18", pre_trained=False, layers=["layer1", "layer2"])):
        engine = Engine(default_root_dir=tmp_path, accelerator="cpu", devices=1, max_epochs=1, logger=False)
        datamodule = _datamodule(multiclass_root)
        engine.fit(model=model, datamodule=datamodule)
        results = engine.test(model=model, datamodule=datamodule, verbose=False)[0]
        assert {f"{c}/image_AUROC" for c in [*CATEGORIES, "mean"]} <= set(results), type(model).__name__


def test_cli_train_with_categories(multiclass_root: Path, tmp_path: Path) -> None:
    config = tmp_path / "mfrnet.yaml"
    model_args = {
        "backbone": "tf_efficientnet_lite0", "pre_trained": False, "stem_dim": 16, "embed_dim": 32, "depth": 1,
        "num_heads": 2, "mask_cell_size": [2, 4],
        "pre_processor": {
            "class_path": "anomalib.pre_processing.PreProcessor",
            "init_args": {
                "transform": {"class_path": "torchvision.transforms.v2.Resize", "init_args": {"size": [64, 64]}}
            },
        },
    }  # fmt: skip
    config.write_text(yaml.safe_dump({"model": {"class_path": "anomalib_crr.MFRNet", "init_args": model_args}}))
    AnomalibCLI(
        args=[
            "train", "--config", str(config),
            "--data", "anomalib_crr.data.MultiClassMVTecAD", "--data.root", str(multiclass_root),
            "--data.categories", "[weave, washer]", "--data.num_workers", "0", "--data.train_batch_size", "4",
            "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu", "--trainer.logger", "false",
            "--default_root_dir", str(tmp_path / "results"),
        ]
    )  # fmt: skip
    csv_file = next((tmp_path / "results").rglob("per_category_metrics.csv"))
    assert [line.split(",")[0] for line in csv_file.read_text().splitlines()[1:]] == [*CATEGORIES, "mean"]


def test_shipped_data_and_experiment_configs_parse(capsys: pytest.CaptureFixture[str]) -> None:
    from anomalib_crr.cli import main

    configs = Path(__file__).resolve().parents[1] / "configs"
    with pytest.raises(SystemExit):
        main(["train", "--config", str(configs / "experiment" / "crr_mvtec_multiclass.yaml"), "--print_config"])
    out = capsys.readouterr().out
    parsed = yaml.safe_load(out[out.index("seed_everything:") :])
    assert parsed["data"]["class_path"] == "anomalib_crr.data.MultiClassMVTecAD"
    assert parsed["data"]["init_args"]["categories"] is None  # all 15
    assert parsed["data"]["init_args"]["train_batch_size"] == 16
    assert parsed["model"]["init_args"]["encoder_name"] == "vit_base_patch14_reg4_dinov2"
    assert (parsed["model"]["init_args"]["stage1_steps"], parsed["model"]["init_args"]["stage2_steps"]) == (10000, 8000)
    for name, class_path in [
        ("mvtec_multiclass.yaml", "MultiClassMVTecAD"),
        ("visa_multiclass.yaml", "MultiClassVisA"),
    ]:
        with pytest.raises(SystemExit):
            main(["train", "--model", "CRR", "--config", str(configs / "data" / name), "--print_config"])
        out = capsys.readouterr().out
        assert yaml.safe_load(out[out.index("seed_everything:") :])["data"]["class_path"].endswith(class_path)


# ------------------------------------------------------------------ bad input
def test_unknown_category_is_named(multiclass_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown category \['bottel'\]"):
        MultiClassMVTecAD(root=multiclass_root, categories=["washer", "bottel"])
    with pytest.raises(ValueError, match=r"unknown category \['candel'\]"):
        MultiClassVisA(root=tmp_path, categories=["candle", "candel"])
    with pytest.raises(ValueError, match=r"unknown category \['nope'\]"):
        MultiClassFolder(root=multiclass_root, categories=["washer", "nope"])
    assert MultiClassMVTecAD(root=tmp_path).categories[:2] == ["bottle", "cable"]  # default: all categories


def test_empty_category_folder_is_named(multiclass_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(multiclass_root, root)
    for image in (root / "washer" / "train" / "good").iterdir():
        image.unlink()
    with pytest.raises(ValueError, match=r"'washer'.*no training images"):
        _datamodule(root).setup()
    with pytest.raises(ValueError, match=r"'washer'.*no training images"):
        MultiClassFolder(root=root, categories=CATEGORIES, num_workers=0).setup()


def test_category_without_test_anomalies_is_named(multiclass_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(multiclass_root, root)
    for defect in (root / "weave" / "test").iterdir():
        if defect.name != "good":
            shutil.rmtree(defect)
    with pytest.raises(ValueError, match="'weave' has no anomalous test images"):
        _datamodule(root).setup()


def test_multiclass_folder_reads_jpeg_categories_with_auto_defect_folders(multiclass_root: Path) -> None:
    datamodule = MultiClassFolder(root=multiclass_root, num_workers=0)  # categories: every folder with train/good
    assert datamodule.categories == sorted(CATEGORIES)
    datamodule.setup()
    test = datamodule.test_data.samples
    assert sorted(test["category"].unique()) == sorted(CATEGORIES)
    assert (test.groupby("category")["label_index"].sum() == 4).all()  # 2 scratch + 2 stain per category
    assert test.loc[test["label_index"] == 1, "mask_path"].str.endswith("_mask.png").all()
