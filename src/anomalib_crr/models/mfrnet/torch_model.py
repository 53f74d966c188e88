# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""PyTorch model of MFRNet: aggregated CNN features, crossed masks, parallel restorations, hybrid discrepancy."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from enum import Enum
from pathlib import Path

import torch
from anomalib.data import InferenceBatch
from torch import nn

from anomalib_crr.models.components.export import nearest_sizes_phrase

from .anomaly_map import AnomalyMapGenerator, ScoreMode
from .components import (
    FeatureNorm,
    ImageScore,
    MfrRestorer,
    MultiScaleFeatureAggregator,
    NormalEnvelope,
    check_divisible,
    crossed_masks,
    fixed_masks,
    fixed_structured_masks,
    structured_masks,
)
from .loss import HybridLoss

logger = logging.getLogger(__name__)


class Partition(str, Enum):
    """How the cells are split into the ``n`` complementary masks."""

    STRUCTURED = "structured"  # (i ± j + offset) mod n: every hidden cell has visible edge neighbours
    RANDOM = "random"  # a uniformly random balanced split (RIAD; the first release's default)


class TestGrid(str, Enum):
    """Where the cell grid of the fixed test partition lies (structured partition only)."""

    SHIFTED = "shifted"  # offset by half a cell (k // 2 positions) along both axes
    ALIGNED = "aligned"  # cells start at position 0, as in training (checkpoints before test_grid existed)
    AVERAGE = "average"  # mean of the four half-cell phases {0, k // 2}²: smoother, 4x the restorer cost


class MapNorm(str, Enum):
    """How the per-``k`` maps are weighted before averaging."""

    TRAIN_MEAN = "train_mean"  # divide each k's terms by their means over the normal training images
    NONE = "none"  # plain average (the largest-error k dominates)


# Ridge added to the residual covariance before inverting it, relative to its mean variance: 90 training images
# give ~10^5 residual vectors for C = 152 channels, so little is needed; 0.01-0.1 measured alike on tire.
WHITEN_RIDGE = 0.03


def as_cell_sizes(mask_cell_size: int | Sequence[int]) -> tuple[int, ...]:
    """Normalise ``mask_cell_size`` to a non-empty tuple of positive ints."""
    sizes = (mask_cell_size,) if isinstance(mask_cell_size, int) else tuple(int(k) for k in mask_cell_size)
    if not sizes or any(k < 1 for k in sizes):
        msg = f"mask_cell_size must be a positive int or a non-empty list of them, got {mask_cell_size!r}"
        raise ValueError(msg)
    return sizes


class MFRNetModel(nn.Module):
    """MFRNet: restore every feature position from context and score the hybrid discrepancy.

    Args:
        backbone: timm CNN (``tf_efficientnet_lite0`` default; ``vgg16``, ``resnet18``, ``wide_resnet50_2`` have
            default layers; others need ``layers``).
        layers: timm ``feature_info`` module names to aggregate.
        pre_trained: Download ImageNet weights for the backbone.
        weights_path: Local timm-format backbone weights (overrides ``pre_trained``).
        feature_stride: Input pixels per feature position (``None``: the finest stride among ``layers``).
        feature_norm: ``"channel_zscore"`` or ``"none"``.
        mask_cell_size: Cell side(s) ``k`` in feature positions; training samples one per batch, test averages all.
        num_masks: Number ``n`` of complementary masks.
        mask_seed: Seed of the fixed test partitions (``partition="random"`` only).
        partition: ``"structured"`` (diagonal, every hidden cell has visible edge neighbours) or ``"random"``.
        test_grid: Phase of the structured test partition's cell grid: ``"shifted"`` (half a cell), ``"aligned"``
            or ``"average"`` (mean over the half-cell phases).
        image_size: Input size the pre-processor produces; validated here, so a size that does not tile fails early.
        stem_dim: Restorer stem/head width ``d``.
        embed_dim: Restorer transformer width ``D``.
        depth: Number of hybrid blocks ``L``.
        num_heads: Attention heads.
        mlp_ratio: Feed-forward expansion.
        patch_size: Restorer token size ``p`` in feature positions.
        residual: The restorer predicts a correction to a parameter-free visible-neighbour inpainting.
        inpaint_sigma: σ of that inpainting, in feature positions.
        lambda_pix: Weight of the MSE term.
        lambda_ssim: Weight of the (1 − SSIM) term.
        whiten_residual: Score the squared-error term as the Mahalanobis distance of the residual ``F − F̂`` under
            its covariance on the normal training images (training keeps the plain MSE).
        ssim_window: SSIM Gaussian window size.
        ssim_data_range: SSIM dynamic range ``L``.
        map_norm: ``"train_mean"`` (each k's two terms divided by their means on the training images) or
            ``"none"``.
        blur_sigma: σ of the Gaussian on the upsampled map (0: none).
        score_mode: ``"max"`` or ``"top1_mean"``: how ``image_score="map"`` reads the smoothed map.
        image_score: ``"envelope"``: the top ``envelope_top_fraction`` of the discrepancy's margin over its
            per-position maximum on the training images (:class:`NormalEnvelope`); ``"map"``: from the map.
        envelope_sigma: Gaussian σ (feature positions) applied to the discrepancy before the envelope.
        envelope_top_fraction: Fraction of the feature positions averaged into the envelope score.
    """

    def __init__(
        self,
        backbone: str = "tf_efficientnet_lite0",
        layers: Sequence[str] | None = None,
        pre_trained: bool = True,
        weights_path: str | Path | None = None,
        feature_stride: int | None = None,
        feature_norm: FeatureNorm | str = FeatureNorm.CHANNEL_ZSCORE,
        mask_cell_size: int | Sequence[int] = (2,),
        num_masks: int = 3,
        mask_seed: int = 0,
        partition: Partition | str = Partition.STRUCTURED,
        test_grid: TestGrid | str = TestGrid.SHIFTED,
        image_size: tuple[int, int] = (256, 256),
        stem_dim: int = 32,
        embed_dim: int = 128,
        depth: int = 2,
        num_heads: int = 4,
        mlp_ratio: float = 4.0,
        patch_size: int = 4,
        residual: bool = True,
        inpaint_sigma: float = 1.0,
        lambda_pix: float = 1.0,
        lambda_ssim: float = 2.0,
        whiten_residual: bool = True,
        ssim_window: int = 11,
        ssim_data_range: float = 1.0,
        map_norm: MapNorm | str = MapNorm.TRAIN_MEAN,
        blur_sigma: float = 4.0,
        score_mode: ScoreMode | str = ScoreMode.MAX,
        image_score: ImageScore | str = ImageScore.ENVELOPE,
        envelope_sigma: float = 0.5,
        envelope_top_fraction: float = 0.01,
    ) -> None:
        super().__init__()
        if num_masks < 2:
            msg = f"num_masks must be >= 2 (one mask hides everything), got {num_masks}"
            raise ValueError(msg)
        self.cell_sizes = as_cell_sizes(mask_cell_size)
        self.num_masks = num_masks
        self.mask_seed = mask_seed
        self.partition = Partition(partition)
        self.test_grid = TestGrid(test_grid)
        self.map_norm = MapNorm(map_norm)
        self.patch_size = patch_size
        self.aggregator = MultiScaleFeatureAggregator(
            backbone=backbone,
            layers=layers,
            pre_trained=pre_trained,
            weights_path=weights_path,
            feature_stride=feature_stride,
            feature_norm=feature_norm,
        )
        self.check_input_size(tuple(image_size))
        coarsest = max(self.aggregator.layer_strides)
        if min(self.cell_sizes) * self.aggregator.feature_stride < coarsest:
            logger.warning(
                "mask_cell_size %s x feature_stride %d is smaller than the coarsest layer stride %d: hidden cells of "
                "that layer are mostly interpolated from their neighbours, which can regenerate anomalies.",
                list(self.cell_sizes),
                self.aggregator.feature_stride,
                coarsest,
            )
        self.restorer = MfrRestorer(
            in_channels=self.aggregator.num_channels,
            stem_dim=stem_dim,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            patch_size=patch_size,
            residual=residual,
            inpaint_sigma=inpaint_sigma,
        )
        self.loss = HybridLoss(lambda_pix, lambda_ssim, window_size=ssim_window, data_range=ssim_data_range)
        self.whiten_residual = whiten_residual
        # (λ_pix, λ_ssim) as a tensor once, not one allocation per forward; not saved (the hparams hold them).
        self.register_buffer("term_weights", torch.tensor([lambda_pix, lambda_ssim]), persistent=False)
        self.anomaly_map_generator = AnomalyMapGenerator(sigma=blur_sigma, score_mode=score_mode)
        self.image_score = ImageScore(image_score)
        # Per-position maximum of the discrepancy on the training images (empty until fitted; in the checkpoint).
        self.normal_envelope = NormalEnvelope(sigma=envelope_sigma, top_fraction=envelope_top_fraction)
        # Mean of each k's (squared-error, 1 - SSIM) terms over the normal training images; in the checkpoint.
        self.register_buffer("map_scale", torch.ones(len(self.cell_sizes), 2))
        self.register_buffer("map_stats_ready", torch.tensor(False))
        # W with W Wᵀ = (residual covariance + ridge)⁻¹ on the normal training images (identity until fitted).
        self.register_buffer("residual_whitener", torch.eye(self.aggregator.num_channels))

    @property
    def num_channels(self) -> int:
        """Channels ``C`` of the aggregated features."""
        return self.aggregator.num_channels

    def check_input_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Validate that an input size tiles into feature strides, mask cells and restorer patches.

        Returns:
            The feature-map size.

        Raises:
            ValueError: Naming the size, what it must be divisible by, and the nearest sizes that work.
        """
        problem = self._size_problem(image_size)
        if problem is not None:
            options = nearest_sizes_phrase(lambda side: self._size_problem((side, side)) is None, *image_size)
            msg = f"{problem.rstrip('.')}. Nearest input sizes MFRNet takes: {options}."
            raise ValueError(msg)
        return self.aggregator.feature_size(*image_size)

    def _size_problem(self, image_size: tuple[int, int]) -> str | None:
        """Why ``image_size`` does not tile (feature stride, mask cells, restorer patches), or ``None``."""
        stride = self.aggregator.feature_stride
        if image_size[0] % stride or image_size[1] % stride:
            return f"Input size {image_size[0]}x{image_size[1]} is not divisible by feature_stride {stride}"
        feature_size = self.aggregator.feature_size(*image_size)
        try:
            check_divisible(
                feature_size, self.cell_sizes, what=f"feature map of a {image_size[0]}x{image_size[1]} input"
            )
            check_divisible(feature_size, (self.patch_size,), what="feature map (restorer patch_size)")
        except ValueError as error:
            return str(error)
        return None

    def test_offsets(self, cell_size: int) -> list[tuple[int, int]]:
        """Grid offsets ``(row, column)`` of the fixed test partitions of one cell size, one per phase.

        Why shifted by default: the shifted split's border cells are one position wide and restore easily, so the
        map stops responding to the image border; on tire its pixel AUPRO is higher with the same restorer
        (README ablation, rows W17-W22). Averaging the four phases costs 4x and scored no better (W21).
        """
        half = cell_size // 2
        if self.partition is not Partition.STRUCTURED or self.test_grid is TestGrid.ALIGNED or half == 0:
            return [(0, 0)]
        if self.test_grid is TestGrid.SHIFTED:
            return [(half, half)]
        return [(half, half), (0, 0), (half, 0), (0, half)]

    @property
    def num_test_phases(self) -> int:
        """Test partitions per cell size (the same for every k: a k = 1 phase is repeated)."""
        return max(len(self.test_offsets(k)) for k in self.cell_sizes)

    def test_masks(self, feature_size: tuple[int, int]) -> list[torch.Tensor]:
        """Hidden masks of the fixed test partitions, one ``(P, n, h, w)`` tensor per cell size (``P`` phases)."""
        phases = self.num_test_phases
        if self.partition is Partition.STRUCTURED:
            masks = []
            for k in self.cell_sizes:
                offsets = self.test_offsets(k)
                offsets = (offsets * phases)[:phases]
                masks.append(torch.cat([self._offset_masks(feature_size, k, offset) for offset in offsets]))
            return masks
        return [fixed_masks(feature_size, k, self.num_masks, self.mask_seed) for k in self.cell_sizes]

    def _offset_masks(self, feature_size: tuple[int, int], cell_size: int, offset: tuple[int, int]) -> torch.Tensor:
        """The structured test split with its cell grid shifted by ``offset`` positions, ``(1, n, h, w)``."""
        return fixed_structured_masks(feature_size, cell_size, self.num_masks, offset)

    def train_masks(self, batch_size: int, feature_size: tuple[int, int], device: torch.device) -> torch.Tensor:
        """Random hidden masks for one training batch: one ``k`` per batch, a fresh partition per image."""
        cell_size = self.cell_sizes[int(torch.randint(len(self.cell_sizes), (1,)).item())]
        if self.partition is Partition.STRUCTURED:
            return structured_masks(batch_size, feature_size, cell_size, self.num_masks, device=device)
        return crossed_masks(batch_size, feature_size, cell_size, self.num_masks, device=device)

    def repair_batch(self, features: torch.Tensor, synthetic_images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of a ``repair`` step: clean and synthetic-anomaly features, both toward the clean ones.

        Args:
            features: Standardised features of the clean images ``(B, C, h, w)``.
            synthetic_images: The same images with synthetic anomalies, ``(B, 3, H, W)`` in [0, 1].

        Returns:
            ``(inputs, targets)``, each ``(2B, C, h, w)``.
        """
        with torch.no_grad():
            anomalous = self.aggregator(synthetic_images)
        return torch.cat([features, anomalous]), torch.cat([features, features])

    def restore(self, features: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """Parallel restorations recombined: ``F̂ = Σ_i R([F ⊙ M_i; M_i]) ⊙ (1 − M_i)``.

        Args:
            features: ``(B, C, h, w)``.
            hidden: ``(B, n, h, w)``, 1 where copy ``i`` hides the position (the masks tile the map).

        Returns:
            ``(B, C, h, w)``: each position comes from the one copy that did not see it.
        """
        batch, num_masks = hidden.shape[:2]
        visible = (1.0 - hidden).to(features.dtype).unsqueeze(2)  # (B, n, 1, h, w)
        copies = (features.unsqueeze(1) * visible).flatten(0, 1)
        restored = self.restorer(copies, visible.flatten(0, 1)).view(batch, num_masks, *features.shape[1:])
        return (restored * hidden.to(restored.dtype).unsqueeze(2)).sum(dim=1)

    def test_restorations(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The features repeated once per ``k`` and test phase, and their restorations under the fixed partitions.

        All ``K·P·n`` masked copies of the batch go through the restorer in one call (one large matrix product is
        faster than ``K`` small ones at batch 1 on a CPU).

        Returns:
            ``(features, restored)``, each ``(K·P·B, C, h, w)``: ``k``-major, then phase, then image.
        """
        feature_size = (features.shape[-2], features.shape[-1])
        batch = features.shape[0]
        masks = self.test_masks(feature_size)
        phases = masks[0].shape[0]
        hidden = torch.cat(
            [m.to(features.device)[:, None].expand(-1, batch, -1, -1, -1).flatten(0, 1) for m in masks], dim=0
        )
        repeated = features.repeat(len(self.cell_sizes) * phases, 1, 1, 1)
        return repeated, self.restore(repeated, hidden)

    def discrepancy_terms(self, features: torch.Tensor) -> torch.Tensor:
        """Both discrepancy terms per fixed test partition (mean over its phases), unnormalised: ``(K, B, 2, h, w)``."""
        repeated, restored = self.test_restorations(features)
        whitener = self.residual_whitener if self.whiten_residual else None
        terms = self.loss.per_term(repeated, restored, whitener)
        batch = features.shape[0]
        return terms.view(len(self.cell_sizes), -1, batch, 2, *terms.shape[-2:]).mean(dim=1)

    def combine(self, terms: torch.Tensor) -> torch.Tensor:
        """Terms ``(K, B, 2, h, w)`` → map ``(B, h, w)``: ÷ training means, λ-weighted sum, mean over k.

        Normalising each term separately puts the Mahalanobis term (mean ≈ 1) and the SSIM term (mean ≈ 0.3 on
        tire) on the same footing, so the λ are their relative weights on normal images.
        """
        if self.map_norm is MapNorm.TRAIN_MEAN:
            terms = terms / self.map_scale.to(terms.dtype).view(len(self.cell_sizes), 1, 2, 1, 1)
        return (terms * self.term_weights.to(terms.dtype).view(1, 1, 2, 1, 1)).sum(dim=2).mean(dim=0)

    @torch.no_grad()
    def set_map_statistics(self, term_means: torch.Tensor) -> None:
        """Store each k's mean terms on normal training images (floored, so a perfect fit cannot divide by 0)."""
        self.map_scale.copy_(term_means.view_as(self.map_scale).clamp_min(1e-6))
        self.map_stats_ready.fill_(True)

    @torch.no_grad()
    def set_residual_statistics(self, second_moments: torch.Tensor) -> torch.Tensor:
        """Fit the whitener from each k's residual second moment ``E[r rᵀ]`` on normal images, ``(K, C, C)``.

        One whitener for all k (their pooled moment). Returns each k's mean squared-error term under it,
        ``trace(W Wᵀ Σ_k) / C``, i.e. the training mean of the term that :meth:`discrepancy_terms` reports.
        """
        moments = second_moments.double()
        channels = moments.shape[-1]
        if not self.whiten_residual:
            return torch.diagonal(moments, dim1=-2, dim2=-1).sum(-1).div(channels).float()
        pooled = moments.mean(dim=0)
        ridge = WHITEN_RIDGE * torch.trace(pooled).clamp_min(1e-12) / channels
        identity = torch.eye(channels, dtype=pooled.dtype, device=pooled.device)
        precision = torch.linalg.inv(pooled + ridge * identity)
        precision = 0.5 * (precision + precision.T)  # exact symmetry for the Cholesky factorisation
        self.residual_whitener.copy_(torch.linalg.cholesky(precision).to(self.residual_whitener.dtype))
        return torch.einsum("cd,kdc->k", precision, moments).div(channels).float()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | InferenceBatch:
        """Training: ``(features, restored)`` for the loss, with random masks. Eval: ``InferenceBatch``."""
        image_size = (images.shape[-2], images.shape[-1])
        feature_size = self.check_input_size(image_size)
        features = self.aggregator(images)
        if self.training:
            return features, self.restore(features, self.train_masks(images.shape[0], feature_size, images.device))
        return self.score(features, image_size)

    def score(self, features: torch.Tensor, image_size: tuple[int, int]) -> InferenceBatch:
        """Anomaly map and score from standardised features."""
        discrepancy = self.discrepancy(features)
        anomaly_map, pred_score = self.anomaly_map_generator(discrepancy, image_size)
        if self.image_score is ImageScore.ENVELOPE:
            pred_score = self.normal_envelope(discrepancy)
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)

    def discrepancy(self, features: torch.Tensor) -> torch.Tensor:
        """The combined per-position discrepancy ``(B, h, w)`` of standardised features (before upsampling)."""
        return self.combine(self.discrepancy_terms(features))
