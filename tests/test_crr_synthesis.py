"""CRR synthesis as the official recipe: foreground restriction, op order, strip shuffle, Perlin size, textures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from anomalib_crr.models.components.synthesis.augmentation import AUGMENTATIONS, BatchedRandomAugment
from anomalib_crr.models.components.synthesis.foreground import ForegroundMaskFolder, estimate_foreground
from anomalib_crr.models.components.synthesis.inputs import open_foreground_masks
from anomalib_crr.models.components.synthesis.perlin import perlin_noise
from anomalib_crr.models.crr.components import CrrAnomalySynthesizer, grid_shuffle

from .helpers import tiny_crr


def _discs(batch: int = 6, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Bright discs of random centre/radius on a flat dark background with mild noise; images and true masks."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, masks = [], []
    for _ in range(batch):
        cy, cx = torch.randint(size // 3, 2 * size // 3, (2,)).tolist()
        radius = int(torch.randint(size // 8, size // 4, (1,)))
        disc = (((yy - cy) ** 2 + (xx - cx) ** 2) <= radius**2).float()
        colour = torch.rand(3, 1, 1) * 0.4 + 0.5
        image = 0.1 + disc * (colour - 0.1) + 0.01 * torch.randn(3, size, size)
        images.append(image.clamp(0, 1))
        masks.append(disc.unsqueeze(0))
    return torch.stack(images), torch.stack(masks)


# ------------------------------------------------------------------ foreground
def test_auto_foreground_puts_every_anomaly_pixel_on_the_object() -> None:
    images, objects = _discs()
    foreground = estimate_foreground(images)
    # The estimate is the disc (not the whole image): it covers the object, and little more (smoothing adds ~1 px).
    intersection = (foreground * objects).flatten(1).sum(1)
    union = ((foreground + objects) > 0).float().flatten(1).sum(1)
    assert torch.all(intersection / objects.flatten(1).sum(1) > 0.95)
    assert torch.all(intersection / union > 0.7)
    synthetic = CrrAnomalySynthesizer()(images, foreground)
    assert all(mask.sum() > 0 for mask in synthetic.mask)
    assert float((synthetic.mask * (1 - foreground)).sum()) == 0.0
    outside = (synthetic.mask == 0).expand_as(images)
    assert torch.equal(synthetic.image[outside], images[outside])


def test_auto_foreground_falls_back_to_the_whole_image_when_degenerate() -> None:
    flat = torch.full((2, 3, 32, 32), 0.4) + 0.005 * torch.randn(2, 3, 32, 32)
    assert torch.equal(estimate_foreground(flat), torch.ones(2, 1, 32, 32))


def test_without_foreground_anomalies_also_land_on_the_background() -> None:
    """``foreground=None`` keeps the unrestricted masks (textures): over a batch, some land off the object."""
    images, objects = _discs(batch=16)
    synthetic = CrrAnomalySynthesizer()(images)
    assert float((synthetic.mask * (1 - objects)).sum()) > 0
    import inspect

    from anomalib_crr import CRR

    assert inspect.signature(CRR).parameters["foreground"].default is None  # the default keeps this behaviour


def test_mask_folder_finds_mirrored_and_diffusionad_layouts(tmp_path: Path) -> None:
    from PIL import Image

    image_path = tmp_path / "data" / "bottle" / "train" / "good" / "000.png"
    mirrored = tmp_path / "masks" / "bottle" / "train" / "good" / "000.png"
    diffusionad = tmp_path / "dis" / "bottle" / "DISthresh" / "good" / "000.png"
    for path in (mirrored, diffusionad):
        path.parent.mkdir(parents=True)
        mask = torch.zeros(20, 20, dtype=torch.uint8)
        mask[:, :10] = 255
        Image.fromarray(mask.numpy()).save(path)
    for root in (tmp_path / "masks", tmp_path / "dis"):
        loaded = ForegroundMaskFolder(root)([image_path], (20, 20), torch.device("cpu"))
        assert loaded.shape == (1, 1, 20, 20)
        assert loaded[..., :10].all()
        assert not loaded[..., 10:].any()
    with pytest.raises(FileNotFoundError, match=r"no foreground mask for .*001\.png"):
        ForegroundMaskFolder(tmp_path / "masks").load(image_path.with_name("001.png"), (20, 20))
    with pytest.raises(FileNotFoundError, match="foreground mask folder"):
        ForegroundMaskFolder(tmp_path / "missing")


def test_bad_foreground_argument_is_rejected() -> None:
    with pytest.raises(TypeError, match="foreground"):
        tiny_crr(foreground=3)
    model = tiny_crr(foreground="/no/such/folder")
    with pytest.raises(FileNotFoundError, match="foreground='/no/such/folder'"):
        open_foreground_masks(model.foreground, model.pre_processor)


# ------------------------------------------------------------------ self-augmentation order and shuffle
class Spy(torch.nn.Module):
    """Records the augmenter's input and halves it (so augmented pixels are recognisable)."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.clone())
        return x * 0.5


def test_self_augmentation_applies_the_ops_first_then_shuffles_strips() -> None:
    # 8 x 8 image: one-pixel strips, every value unique (row * 8 + column).
    image = (torch.arange(64.0).view(1, 1, 8, 8) / 64).expand(1, 3, 8, 8).contiguous()
    synthesizer = CrrAnomalySynthesizer(texture_probability=0.0, blend_factor=(1.0, 1.0))
    spy = Spy()
    synthesizer.generator.augmenters = spy
    synthesizer.perlin_masks = lambda batch, h, w, device, foreground=None: torch.ones(batch, 1, h, w)  # type: ignore[method-assign]
    corrupted = synthesizer(image).image[0, 0]
    assert torch.equal(spy.inputs[0], image)  # the ops see the unshuffled image
    augmented = image[0, 0] * 0.5
    # The output is the augmented image with whole rows and whole columns permuted.
    rows = {tuple(sorted(row.tolist())) for row in augmented}
    columns = {tuple(sorted(column.tolist())) for column in augmented.T}
    assert {tuple(sorted(row.tolist())) for row in corrupted} == rows
    assert {tuple(sorted(column.tolist())) for column in corrupted.T} == columns


def test_strip_shuffle_permutes_rows_once_before_the_even_odd_split() -> None:
    image = torch.arange(64.0).view(1, 8, 8)  # value // 8 = row, value % 8 = column
    odd_row_on_top = even_row_at_bottom = False
    for _ in range(40):
        shuffled = grid_shuffle(image, grid=8)[0]
        row_of = (shuffled[:, 0] // 8).long().tolist()
        column_of = (shuffled[0] % 8).long().tolist()
        assert sorted(row_of) == list(range(8))
        assert sorted(column_of) == list(range(8))
        # columns: even strips permuted among themselves and put first, as the official code
        assert all(column % 2 == 0 for column in column_of[:4])
        odd_row_on_top |= any(row % 2 for row in row_of[:4])
        even_row_at_bottom |= any(row % 2 == 0 for row in row_of[4:])
    # rows: shuffled as a whole first, so the top half is not always the even rows
    assert odd_row_on_top
    assert even_row_at_bottom


def test_grid_shuffle_gives_each_image_of_a_batch_its_own_permutation() -> None:
    images = torch.arange(64.0).view(1, 1, 8, 8).repeat(6, 1, 1, 1)
    shuffled = grid_shuffle(images)
    assert len({tuple(s.flatten().tolist()) for s in shuffled}) > 1


# ------------------------------------------------------------------ Perlin noise and textures
def test_perlin_noise_spans_the_image_size_not_the_next_power_of_two() -> None:
    """Perlin noise is 0 at lattice vertices: at scale 2 over 96 px they sit at 0 and 48 (padding to 128: at 64)."""
    noise = perlin_noise(torch.tensor([[2, 2]]), 96, 96)[0]
    for y, x in [(0, 0), (0, 48), (48, 0), (48, 48)]:
        assert abs(float(noise[y, x])) < 1e-6
    assert abs(float(noise[64, 64])) > 1e-3 or abs(float(noise[24, 24])) > 1e-3
    # On a canvas (the official 448 → 392 centre crop), vertices are canvas positions shifted by the crop offset.
    centred = perlin_noise(torch.tensor([[2, 2]]), 96, 96, canvas=(112, 112))[0]
    assert abs(float(centred[56 - 8, 56 - 8])) < 1e-6
    assert 0.05 < float((perlin_noise(torch.tensor([[4, 4]] * 8), 96, 96) > 0.5).float().mean()) < 0.5


def test_coarse_perlin_evaluation_is_exact_at_evaluated_pixels_and_close_elsewhere() -> None:
    scales = torch.tensor([[32, 32], [4, 2]])
    torch.manual_seed(3)
    exact = perlin_noise(scales, 392, 392, canvas=(448, 448))  # the official geometry: 14 px per finest cell
    torch.manual_seed(3)
    coarse = perlin_noise(scales, 392, 392, canvas=(448, 448), step=2)
    torch.testing.assert_close(coarse[:, ::2, ::2], exact[:, ::2, ::2])
    assert ((coarse > 0.5) != (exact > 0.5)).float().mean() < 0.01


def test_perlin_rotation_keeps_the_centre_and_zero_fills_corners() -> None:
    scales = torch.tensor([[1, 1]])
    torch.manual_seed(1)
    rotated = perlin_noise(scales, 64, 64, angles=torch.tensor([45.0]))[0]
    assert float(rotated[0, 0]) == 0.0
    assert float(rotated[32, 32]) != 0.0


def test_batched_augmenter_draws_parameters_per_image() -> None:
    images = torch.rand(1, 3, 24, 24).repeat(16, 1, 1, 1)
    out = BatchedRandomAugment()(images)
    assert out.shape == images.shape
    assert out.min() >= 0
    assert out.max() <= 1
    assert len({tuple(o.flatten()[:50].tolist()) for o in out}) > 8
    for op in AUGMENTATIONS:  # every op keeps shape and range on a sub-batch
        result = op(images[:3]).clamp(0, 1)
        assert result.shape == (3, 3, 24, 24)


def test_sharpen_matches_pil_style_kornia_sharpness() -> None:
    from kornia.enhance import sharpness

    from anomalib_crr.models.components.synthesis.augmentation import sharpen

    images = torch.rand(3, 3, 20, 20)
    torch.manual_seed(5)
    ours = sharpen(images).clamp(0, 1)
    torch.manual_seed(5)
    factors = torch.empty(3).uniform_(0.0, 2.0)
    torch.testing.assert_close(ours, sharpness(images, factors))


def test_textures_are_decoded_once_and_resized_to_the_canvas_before_the_crop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image
    from torchvision import io

    (tmp_path / "images" / "banded").mkdir(parents=True)
    left_red_right_blue = torch.zeros(40, 40, 3, dtype=torch.uint8)
    left_red_right_blue[:, :20, 0] = 255
    left_red_right_blue[:, 20:, 2] = 255
    Image.fromarray(left_red_right_blue.numpy()).save(tmp_path / "images" / "banded" / "t.png")
    decodes = []
    original = io.decode_image
    monkeypatch.setattr(io, "decode_image", lambda *a, **k: decodes.append(1) or original(*a, **k))
    synthesizer = CrrAnomalySynthesizer(dtd_dir=tmp_path, canvas_size=(64, 64))
    textures = synthesizer.texture_batch(5, 16, 16, torch.device("cpu"))
    synthesizer.texture_batch(5, 16, 16, torch.device("cpu"))
    assert len(decodes) == 1
    assert textures.shape == (5, 3, 16, 16)
    # 40 px resized to the 64 px canvas, centre 16 px: left half red, right half blue (not squeezed into 16 px).
    assert textures[0, 0, :, :6].mean() > 0.9
    assert textures[0, 2, :, -6:].mean() > 0.9
