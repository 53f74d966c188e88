# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""MFRNet: Multi-feature Reconstruction Network using crossed-mask restoration.

Paper: J. Wang, G. Xu, C. Li, G. Gao, Y. Cheng, B. Lu, *Multi-feature Reconstruction Network using
Crossed-mask Restoration for Unsupervised Industrial Anomaly Detection*, arXiv:2404.13273. Neither the
method section nor code is public; the open choices follow ``shared/specs/MFRNet.md`` and are listed in
this model's README.

A frozen CNN gives multi-scale features, resized to one grid and concatenated. Complementary ("crossed")
masks hide the grid's cells in ``n`` copies; a conv-transformer restores each copy, and each position is
taken from the copy that hid it. A pixel + structural (MSE + 1 − SSIM) discrepancy trains the restorer
and, per position, is the anomaly map.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_crr import MFRNet
    >>> model = MFRNet()  # EfficientNet-Lite0 blocks.2 + blocks.4 on a stride-8 grid, residual restorer
    >>> Engine(max_epochs=30).fit(model, datamodule=MVTecAD(category="bottle"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.utils.serialization import anomalib_safe_globals
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT, OptimizerLRScheduler
from torchvision.transforms.v2 import Resize

from anomalib_crr.models.base import PluginModule
from anomalib_crr.models.components import transform_output_size
from anomalib_crr.models.components.lr_schedule import check_schedule_arguments, lr_factor_schedule
from anomalib_crr.models.components.synthesis import CrrAnomalySynthesizer
from anomalib_crr.models.components.synthesis.inputs import resolve_texture_dir, synthesis_canvas

from .anomaly_map import ScoreMode
from .checkpoint_migration import legacy_overrides, migrate_checkpoint
from .components import FeatureNorm, ImageScore
from .components.statistics import feature_statistics, map_statistics
from .feature_cache import FeatureCache, deterministic_training_images
from .torch_model import MapNorm, MFRNetModel, Partition, TestGrid

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = (256, 256)


class MFRNet(PluginModule, AnomalibModule):
    """MFRNet Lightning module.

    Defaults are the best configuration measured on MVTec 3D-AD ``tire`` (see the model README's ablation
    table): EfficientNet-Lite0 ``blocks.2`` + ``blocks.4`` on a stride-8 grid, structured crossed masks with
    k ∈ {2, 4}, a small residual restorer on top of a visible-neighbour inpainting, per-k map normalisation.
    ``configs/model/mfrnet_paper.yaml`` holds the paper-scale configuration (VGG16, large restorer, 200 epochs).

    Args:
        backbone: timm CNN: ``tf_efficientnet_lite0`` (default), ``vgg16``, ``resnet18``, ``wide_resnet50_2``, or
            any timm CNN together with ``layers``.
        layers: timm ``feature_info`` module names; ``None`` = the backbone's default list (its stride-8 and
            stride-16 stages).
        pre_trained: Download the backbone's ImageNet weights with timm.
        weights_path: Local timm-format ``.pth``/``.safetensors`` backbone weights (for offline use); overrides
            ``pre_trained``.
        feature_stride: Input pixels per feature position; ``None`` = the finest stride among ``layers``.
        feature_norm: ``"channel_zscore"`` (training-set statistics, stored in the checkpoint) or ``"none"``.
        mask_cell_size: Side(s) ``k`` of a mask cell, in feature positions.
        num_masks: Number ``n`` of complementary masks.
        mask_seed: Seed of the fixed test-time partitions (``partition="random"``).
        partition: ``"structured"`` (``(i ± j + offset) mod n``: every hidden cell has visible edge neighbours) or
            ``"random"`` (a uniformly random split, the first release's behaviour).
        test_grid: Phase of the structured test partition's cell grid. ``"shifted"`` (default): half a cell off the
            training grid, at no extra cost: the map no longer responds to the image border and tire's pixel AUPRO
            is higher (README ablation); ``"aligned"``: as in training (checkpoints from before this option load
            with it); ``"average"``: mean over four half-cell phases, 4x the restorer cost, no better on tire.
        stem_dim: Restorer stem/head width.
        embed_dim: Restorer transformer width.
        depth: Restorer transformer blocks.
        num_heads: Attention heads.
        mlp_ratio: Feed-forward expansion of the hybrid blocks.
        patch_size: Restorer token size in feature positions.
        residual: The restorer predicts a correction to a parameter-free visible-neighbour inpainting (its last
            layer starts at zero, so training starts from that inpainting).
        inpaint_sigma: σ of the inpainting's Gaussian, in feature positions.
        lambda_pix: Weight of the MSE term (training and map).
        lambda_ssim: Weight of the (1 − SSIM) term (training and map).
        whiten_residual: In the map, measure the restoration error as the Mahalanobis distance of the residual
            under its covariance on the normal training images (computed with the map statistics, stored in the
            checkpoint); training keeps the plain MSE.
        ssim_window: SSIM window size.
        ssim_data_range: SSIM dynamic range ``L``.
        map_norm: ``"train_mean"``: each k's two terms are divided by their means over the normal training images
            (computed before every validation and at the end of training, stored in the checkpoint); ``"none"``.
        blur_sigma: σ of the Gaussian smoothing of the upsampled map.
        score_mode: How ``image_score="map"`` reads the smoothed map: ``"max"`` or ``"top1_mean"``.
        image_score: ``"envelope"`` (default): the image score is the mean of the top ``envelope_top_fraction``
            of the discrepancy's margin over its per-position maximum on the normal training images (the *normal
            envelope*, fitted with the map statistics and stored in the checkpoint); it ranks images where the
            map's maximum does not (README, rows W26-W29). The map is unchanged. ``"map"``: the score is read
            from the smoothed map (``score_mode``), as before the envelope; checkpoints without the option load
            with it.
        envelope_sigma: Gaussian σ, in feature positions, on the discrepancy before the envelope is taken.
        envelope_top_fraction: Fraction of the feature positions averaged into the envelope score.
        lr: Adam peak learning rate.
        weight_decay: Adam weight decay.
        warmup_fraction: Fraction of the optimizer steps with a linear warm-up to ``lr``.
        final_lr_ratio: Learning rate at the last step, relative to ``lr`` (cosine decay in between).
        lr_decay_at: Legacy step schedule: when set, ×0.1 after this fraction of the steps instead of warm-up +
            cosine. Both schedules count optimizer steps (``trainer.estimated_stepping_batches``), so they are
            correct for any ``max_epochs``/``max_steps``.
        cache_features: Keep each training image's frozen features in memory after the first epoch (only when the
            training set has no augmentation, so the features cannot change).
        repair: Also train the restorer to *repair*: each batch is doubled with CRR's synthetic anomalies of the same
            images (:mod:`anomalib_crr.models.components.synthesis`), whose restoration target is the clean image's
            features, so the restorer learns not to reproduce defects (the identity mapping CRR was written against).
            The map, its statistics and the envelope are fitted on clean images as before. ``False`` (default):
            plain restoration of normal features. See the README's repair rows for what it measures.
        dtd_dir: Texture folder for ``repair`` (DTD layout, downloaded when empty). ``None`` (default): Perlin-noise
            textures and the image itself, nothing to download.
        pre_processor: Pre-processor; it must resize only (no ``Normalize``: the backbone's normalisation is applied
            inside the model).
        post_processor: Post-processor.
        evaluator: Evaluator.
        visualizer: Visualizer.
    """

    # INT8_PTQ / INT8_ACQ quantise these modules; the error terms (SSIM, whitening), the envelope, the map blur and
    # the post-processing stay in float. benchmarks/int8.py measures the choice. Quantising only the layers with
    # weights (the backbone and the restorer's convolutions, attention and MLPs) was 2-6 % faster on tire with the same
    # accuracy, but agreed worse with torch on the tiny test models (score 0.29 vs 0.17, map correlation 0.75 vs 0.89).
    int8_quantized_modules = ("model.aggregator", "model.restorer")
    checkpoint_enums = (FeatureNorm, ScoreMode, Partition, MapNorm, TestGrid, ImageScore)
    # The Lightning checkpoint holds the backbone's weights: nothing to download or read.
    checkpoint_load_defaults: ClassVar[dict[str, Any]] = {"pre_trained": False, "weights_path": None}
    normalize_reason = (
        "the model normalises images with its backbone's own statistics (ImageNet for VGG/ResNet, 0.5/0.5 for "
        "EfficientNet-Lite)."
    )

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
        lr: float = 3e-4,
        weight_decay: float = 1e-5,
        warmup_fraction: float = 0.05,
        final_lr_ratio: float = 0.01,
        lr_decay_at: float | None = None,
        cache_features: bool = True,
        repair: bool = False,
        dtd_dir: str | Path | None = None,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
    ) -> None:
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        check_schedule_arguments(warmup_fraction, final_lr_ratio, lr_decay_at)
        image_size = self._check_pre_processor()
        self.model: MFRNetModel = MFRNetModel(
            backbone=backbone,
            layers=layers,
            pre_trained=pre_trained,
            weights_path=weights_path,
            feature_stride=feature_stride,
            feature_norm=feature_norm,
            mask_cell_size=mask_cell_size,
            num_masks=num_masks,
            mask_seed=mask_seed,
            partition=partition,
            test_grid=test_grid,
            image_size=image_size,
            stem_dim=stem_dim,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            patch_size=patch_size,
            residual=residual,
            inpaint_sigma=inpaint_sigma,
            lambda_pix=lambda_pix,
            lambda_ssim=lambda_ssim,
            whiten_residual=whiten_residual,
            ssim_window=ssim_window,
            ssim_data_range=ssim_data_range,
            map_norm=map_norm,
            blur_sigma=blur_sigma,
            score_mode=score_mode,
            image_score=image_score,
            envelope_sigma=envelope_sigma,
            envelope_top_fraction=envelope_top_fraction,
        )
        self.lr, self.weight_decay = lr, weight_decay
        self.warmup_fraction, self.final_lr_ratio, self.lr_decay_at = warmup_fraction, final_lr_ratio, lr_decay_at
        self.cache_features = cache_features
        self.repair, self.dtd_dir = repair, dtd_dir
        self.synthesizer: CrrAnomalySynthesizer | None = None  # built at fit start (repair only); holds no state
        self.feature_cache = FeatureCache(enabled=cache_features)
        self._map_stats_step = -1

    # ------------------------------------------------------------------ configuration
    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize to 256x256 (by default); no ``Normalize``, the model applies the backbone's own statistics."""
        image_size = tuple(image_size) if image_size is not None else DEFAULT_IMAGE_SIZE
        return PreProcessor(transform=Resize(image_size, antialias=True))

    def _check_pre_processor(self) -> tuple[int, int]:
        """Reject a normalising pre-processor; return the size it produces (256x256 if it does not fix one)."""
        transforms = self.pre_processor_transforms()
        if transforms is None:
            return DEFAULT_IMAGE_SIZE
        return transform_output_size(transforms) or DEFAULT_IMAGE_SIZE

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args, **kwargs) -> MFRNet:  # type: ignore[override]
        """Rebuild from a checkpoint without downloading or reading backbone weights: the checkpoint holds them.

        Checkpoints of the first release (before the residual restorer) are rebuilt with that release's meaning of
        their hyper-parameters (stride-4 default layers, random partitions, plain restorer), so they load unchanged.
        """
        with anomalib_safe_globals(extra=cls.checkpoint_safe_globals()):
            checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=kwargs.get("weights_only", True))
        for key, value in legacy_overrides(checkpoint.get("hyper_parameters", {})).items():
            kwargs.setdefault(key, value)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)  # type: ignore[return-value]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Fail with the names of the hyper-parameters that differ, and fill buffers older checkpoints lack.

        ``anomalib test/predict --ckpt_path`` builds the model from the CLI/config and then loads only the state
        dict; a mismatch would otherwise surface as a list of tensor shapes (:mod:`.checkpoint_migration`).
        """
        super().on_load_checkpoint(checkpoint)  # anomalib restores the pre/post-processor configuration
        migrate_checkpoint(checkpoint, self.model, self.hparams)

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No gradient clipping and no sanity validation (the feature statistics do not exist yet)."""
        return {"gradient_clip_val": 0, "num_sanity_val_steps": 0}

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """Adam on the restorer; a per-step schedule over the whole run (any ``max_epochs`` or ``max_steps``)."""
        optimizer = torch.optim.Adam(self.model.restorer.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        total = int(self.trainer.estimated_stepping_batches) if self.trainer is not None else 1
        factor = lr_factor_schedule(total, self.warmup_fraction, self.final_lr_ratio, self.lr_decay_at)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        """Build the anomaly synthesiser for ``repair`` (and fetch DTD when a folder is given and empty)."""
        if self.repair and self.synthesizer is None:
            canvas = synthesis_canvas(self.pre_processor)
            self.synthesizer = CrrAnomalySynthesizer(dtd_dir=resolve_texture_dir(self.dtd_dir), canvas_size=canvas)

    def on_train_start(self) -> None:
        """Compute the per-channel feature statistics once, before the first step (kept when resuming)."""
        self.feature_cache.clear()
        aggregator = self.model.aggregator
        if aggregator.feature_norm is FeatureNorm.NONE or bool(aggregator.stats_ready):
            return
        self.compute_feature_statistics(self.trainer.train_dataloader)

    @torch.no_grad()
    def compute_feature_statistics(self, dataloader: Any) -> None:
        """Per-channel mean/std of the aggregated features over every training image and position.

        The batches come straight from the dataloader, before the pre-processor callback runs, so its
        transform is applied here (:func:`~.components.statistics.feature_statistics` does the math).
        """
        aggregator = self.model.aggregator
        batches = (aggregator.raw_features(self.raw_batch_images(batch)) for batch in dataloader)
        mean, std, count = feature_statistics(batches, aggregator.num_channels, self.device, self.reduce_across_ranks)
        aggregator.set_statistics(mean, std)
        logger.info("MFRNet feature statistics from %d positions", count)

    def _can_cache(self) -> bool:
        """Whether this fit's training images are the same every epoch, so their features can be cached."""
        return self._trainer is not None and deterministic_training_images(self.trainer.train_dataloader)

    def _training_features(self, batch: Batch) -> torch.Tensor:
        """Standardised features of a training batch, from the cache when every image in it is cached."""
        paths = getattr(batch, "image_path", None)
        return self.feature_cache.features_of(batch.image, paths, self._can_cache(), self.model.aggregator)

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Restore randomly masked features and return the hybrid loss.

        With ``repair``, the synthetic-anomaly copies of the batch are restored too, toward the clean features.
        """
        del args, kwargs
        features = self._training_features(batch)
        targets = features
        if self.repair:
            assert self.synthesizer is not None, "on_fit_start builds the synthesiser"
            features, targets = self.model.repair_batch(features, self.synthesizer(batch.image).image)
        feature_size = (features.shape[-2], features.shape[-1])
        hidden = self.model.train_masks(features.shape[0], feature_size, features.device)
        loss = self.model.loss(targets, self.model.restore(features, hidden))
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch.image.shape[0])
        return {"loss": loss}

    # ------------------------------------------------------------------ per-k map statistics
    @torch.no_grad()
    def compute_map_statistics(self, dataloader: Any) -> None:
        """Residual covariance, each k's mean terms and (``image_score="envelope"``) the normal envelope.

        Over the training images, under the test partitions (:func:`~.components.statistics.map_statistics`).
        """

        def batches() -> Iterator[torch.Tensor]:
            return (self._statistics_features(batch) for batch in dataloader)

        map_statistics(self.model, batches, self.device, self.reduce_across_ranks)

    def _statistics_features(self, batch: Batch) -> torch.Tensor:
        """Standardised features of a training batch for the statistics passes (cached when possible)."""
        cached = self.feature_cache.lookup(getattr(batch, "image_path", None), self._can_cache(), self.device)
        return cached if cached is not None else self.model.aggregator(self.raw_batch_images(batch))

    def on_validation_epoch_start(self) -> None:
        """Validation scores (and the post-processor's thresholds) use the current restorer's map statistics."""
        if self.trainer is not None and self.trainer.state.fn == "fit":
            self._refresh_map_statistics()

    def on_train_epoch_end(self) -> None:
        """Map statistics of the final restorer, before the checkpoint callback saves it."""
        self._refresh_map_statistics()

    def _refresh_map_statistics(self) -> None:
        """Recompute the per-k means if the restorer changed since the last computation (during ``fit`` only)."""
        needed = (
            self.model.map_norm is not MapNorm.NONE
            or self.model.whiten_residual
            or self.model.image_score is ImageScore.ENVELOPE
        )
        if not needed or self.trainer is None or self.trainer.train_dataloader is None:
            return
        if self._map_stats_step == self.global_step and bool(self.model.map_stats_ready):
            return
        self.compute_map_statistics(self.trainer.train_dataloader)
        self._map_stats_step = self.global_step
