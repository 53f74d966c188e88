"""MFRNet ``repair=True`` (issue 33, item 3): the restorer also maps synthetic anomalies back to clean features."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from anomalib.engine import Engine
from torchvision.io import write_png

from anomalib_crr import MFRNet
from anomalib_crr.models.components.synthesis import CrrAnomalySynthesizer, SyntheticAnomalies

from .helpers import tiny_datamodule, tiny_mfrnet


class RecordingSynthesizer(torch.nn.Module):
    """CRR's synthesiser, recording every batch it corrupts."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = CrrAnomalySynthesizer(dtd_dir=None, canvas_size=None)
        self.calls: list[tuple[torch.Tensor, SyntheticAnomalies]] = []

    def forward(self, images: torch.Tensor) -> SyntheticAnomalies:
        synthetic = self.inner(images)
        self.calls.append((images.detach().clone(), synthetic))
        return synthetic


def _fit(model: MFRNet, root: Path, dataset: Path) -> Engine:
    engine = Engine(default_root_dir=root, max_epochs=1, accelerator="cpu", devices=1, logger=False)
    engine.fit(model=model, datamodule=tiny_datamodule(dataset))
    return engine


def _record_loss(model: MFRNet) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Wrap the hybrid loss to keep its (target, restored) arguments."""
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = model.model.loss.forward

    def recording(target: torch.Tensor, restored: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        seen.append((target.detach().clone(), restored.detach().clone()))
        return original(target, restored, *args, **kwargs)

    model.model.loss.forward = recording  # type: ignore[method-assign]
    return seen


def test_repair_restores_synthetic_anomalies_toward_the_clean_features(tiny_dataset: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tiny_mfrnet(repair=True, cache_features=False)
    model.synthesizer = RecordingSynthesizer()  # on_fit_start keeps a synthesiser that is already there
    seen = _record_loss(model)
    engine = _fit(model, tmp_path, tiny_dataset)
    assert engine.trainer.global_step == 2  # 8 images, batch 4
    assert len(model.synthesizer.calls) == 2
    images, synthetic = model.synthesizer.calls[0]
    target, restored = seen[0]
    batch = images.shape[0]
    assert target.shape[0] == restored.shape[0] == 2 * batch  # clean copies and synthetic copies
    torch.testing.assert_close(target[:batch], target[batch:])  # both halves are restored toward the clean features
    clean = model.model.aggregator(images)
    torch.testing.assert_close(target[:batch], clean, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(model.model.aggregator(synthetic.image), clean)  # the inputs did differ
    assert all(p.grad is None for p in model.model.aggregator.parameters())


def test_without_repair_the_synthesiser_is_never_built(tiny_dataset: Path, tmp_path: Path) -> None:
    model = tiny_mfrnet()
    seen = _record_loss(model)
    _fit(model, tmp_path, tiny_dataset)
    assert model.synthesizer is None
    assert seen[0][0].shape[0] == 4


def test_repair_checkpoint_scores_as_the_trained_model(tiny_dataset: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = tiny_mfrnet(repair=True, dtd_dir=None)
    _fit(model, tmp_path, tiny_dataset)
    loaded = MFRNet.load_from_checkpoint(next(tmp_path.rglob("*.ckpt")))
    assert loaded.hparams["repair"] is True
    assert not any(key.startswith("synthesizer") for key in loaded.state_dict())
    images = torch.rand(2, 3, 64, 64)
    model.eval()
    loaded.eval()
    torch.testing.assert_close(loaded.model(images).anomaly_map, model.model(images).anomaly_map)


def test_repair_draws_textures_from_the_given_folder(tmp_path: Path) -> None:
    folder = tmp_path / "textures" / "banded"
    folder.mkdir(parents=True)
    write_png((torch.rand(3, 40, 40) * 255).to(torch.uint8), str(folder / "banded_0001.png"))
    model = tiny_mfrnet(repair=True, dtd_dir=tmp_path / "textures")
    model.on_fit_start()  # a folder with images: nothing is downloaded
    assert model.synthesizer is not None
    assert [path.name for path in model.synthesizer.texture_paths] == ["banded_0001.png"]
