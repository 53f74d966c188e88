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
    >>> model = MFRNet(backbone="vgg16")
    >>> Engine(max_epochs=200).fit(model, datamodule=MVTecAD(category="bottle"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT, OptimizerLRScheduler
from torchvision.transforms.v2 import Normalize, Resize

from anomalib_crr.models.components import ValidatesAtFitEnd, flatten_transforms, transform_output_size
from anomalib_crr.models.components.export import Opset18OnnxExport

from .anomaly_map import ScoreMode
from .components import FeatureNorm
from .torch_model import MFRNetModel

logger = logging.getLogger(__name__)

DEFAULT_IMAGE_SIZE = (256, 256)


class MFRNet(Opset18OnnxExport, ValidatesAtFitEnd, AnomalibModule):
    """MFRNet Lightning module.

    Args:
        backbone: timm CNN: ``vgg16`` (default), ``tf_efficientnet_lite0``, ``resnet18``, ``wide_resnet50_2``, or any
            timm CNN together with ``layers``.
        layers: timm ``feature_info`` module names; ``None`` = the backbone's default list.
        pre_trained: Download the backbone's ImageNet weights with timm.
        weights_path: Local timm-format ``.pth``/``.safetensors`` backbone weights (for offline use); overrides
            ``pre_trained``.
        feature_stride: Input pixels per feature position (4: 64x64 features at 256x256).
        feature_norm: ``"channel_zscore"`` (training-set statistics, stored in the checkpoint) or ``"none"``.
        mask_cell_size: Side(s) ``k`` of a mask cell, in feature positions.
        num_masks: Number ``n`` of complementary masks.
        mask_seed: Seed of the fixed test-time partitions.
        stem_dim: Restorer stem/head width.
        embed_dim: Restorer transformer width.
        depth: Restorer transformer blocks.
        num_heads: Attention heads.
        mlp_ratio: Feed-forward expansion of the hybrid blocks.
        patch_size: Restorer token size in feature positions.
        lambda_pix: Weight of the MSE term (training and map).
        lambda_ssim: Weight of the (1 − SSIM) term (training and map).
        ssim_window: SSIM window size.
        ssim_data_range: SSIM dynamic range ``L`` (1 for z-scored features).
        blur_sigma: σ of the Gaussian smoothing of the upsampled map.
        score_mode: ``"max"`` (default) or ``"top1_mean"``.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        lr_decay_at: Fraction of the training after which the learning rate drops ×0.1.
        pre_processor: Pre-processor; it must resize only (no ``Normalize``: the backbone's normalisation is applied
            inside the model).
        post_processor: Post-processor.
        evaluator: Evaluator.
        visualizer: Visualizer.
    """

    def __init__(
        self,
        backbone: str = "vgg16",
        layers: Sequence[str] | None = None,
        pre_trained: bool = True,
        weights_path: str | Path | None = None,
        feature_stride: int = 4,
        feature_norm: FeatureNorm | str = FeatureNorm.CHANNEL_ZSCORE,
        mask_cell_size: int | Sequence[int] = (2, 4, 8),
        num_masks: int = 3,
        mask_seed: int = 0,
        stem_dim: int = 256,
        embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 8,
        mlp_ratio: float = 4.0,
        patch_size: int = 4,
        lambda_pix: float = 1.0,
        lambda_ssim: float = 1.0,
        ssim_window: int = 11,
        ssim_data_range: float = 1.0,
        blur_sigma: float = 4.0,
        score_mode: ScoreMode | str = ScoreMode.MAX,
        lr: float = 1e-4,
        weight_decay: float = 1e-5,
        lr_decay_at: float = 0.8,
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
            image_size=image_size,
            stem_dim=stem_dim,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=mlp_ratio,
            patch_size=patch_size,
            lambda_pix=lambda_pix,
            lambda_ssim=lambda_ssim,
            ssim_window=ssim_window,
            ssim_data_range=ssim_data_range,
            blur_sigma=blur_sigma,
            score_mode=score_mode,
        )
        self.lr, self.weight_decay, self.lr_decay_at = lr, weight_decay, lr_decay_at

    # ------------------------------------------------------------------ configuration
    @classmethod
    def configure_pre_processor(cls, image_size: tuple[int, int] | None = None) -> PreProcessor:
        """Resize to 256x256 (by default); no ``Normalize``, the model applies the backbone's own statistics."""
        image_size = tuple(image_size) if image_size is not None else DEFAULT_IMAGE_SIZE
        return PreProcessor(transform=Resize(image_size, antialias=True))

    def _check_pre_processor(self) -> tuple[int, int]:
        """Reject a normalising pre-processor; return the size it produces (256x256 if it does not fix one)."""
        if not isinstance(self.pre_processor, PreProcessor):
            return DEFAULT_IMAGE_SIZE
        transforms = list(flatten_transforms(self.pre_processor.transform))
        if any(isinstance(transform, Normalize) for transform in transforms):
            msg = (
                "MFRNet's pre-processor must not contain Normalize: the model normalises images with its backbone's "
                "own statistics (ImageNet for VGG/ResNet, 0.5/0.5 for EfficientNet-Lite). Use "
                "MFRNet.configure_pre_processor(image_size=...) or a transform with only Resize/CenterCrop."
            )
            raise ValueError(msg)
        return transform_output_size(transforms) or DEFAULT_IMAGE_SIZE

    @classmethod
    def checkpoint_safe_globals(cls) -> Sequence[Any]:
        """Enums that may appear in saved hyper-parameters."""
        return (FeatureNorm, ScoreMode)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args, **kwargs) -> MFRNet:  # type: ignore[override]
        """Rebuild from a checkpoint without downloading or reading backbone weights: the checkpoint holds them."""
        kwargs.setdefault("pre_trained", False)
        kwargs.setdefault("weights_path", None)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)  # type: ignore[return-value]

    @property
    def learning_type(self) -> LearningType:
        """MFRNet learns from normal images only."""
        return LearningType.ONE_CLASS

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """No gradient clipping and no sanity validation (the feature statistics do not exist yet)."""
        return {"gradient_clip_val": 0, "num_sanity_val_steps": 0}

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """Adam on the restorer; learning rate ×0.1 after ``lr_decay_at`` of the epochs (or steps)."""
        optimizer = torch.optim.Adam(self.model.restorer.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        max_epochs = self.trainer.max_epochs if self.trainer is not None else None
        max_steps = self.trainer.max_steps if self.trainer is not None else -1
        if max_steps is not None and max_steps > 0:
            milestone, interval = max(1, int(self.lr_decay_at * max_steps)), "step"
        else:
            milestone, interval = max(1, int(self.lr_decay_at * (max_epochs or 200))), "epoch"
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[milestone], gamma=0.1)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    # ------------------------------------------------------------------ training
    def on_train_start(self) -> None:
        """Compute the per-channel feature statistics once, before the first step (kept when resuming)."""
        aggregator = self.model.aggregator
        if aggregator.feature_norm is FeatureNorm.NONE or bool(aggregator.stats_ready):
            return
        self.compute_feature_statistics(self.trainer.train_dataloader)

    @torch.no_grad()
    def compute_feature_statistics(self, dataloader: Any) -> None:
        """Per-channel mean/std of the aggregated features over every training image and position.

        The batches come straight from the dataloader, before the pre-processor callback runs, so its
        transform is applied here. Sums are float64 and all-reduced across DDP ranks.
        """
        aggregator = self.model.aggregator
        channels = aggregator.num_channels
        total = torch.zeros(channels, dtype=torch.float64, device=self.device)
        total_sq = torch.zeros_like(total)
        count = torch.zeros((), dtype=torch.float64, device=self.device)
        for batch in dataloader:
            images = batch.image.to(self.device)
            if isinstance(self.pre_processor, PreProcessor) and self.pre_processor.transform is not None:
                images = self.pre_processor.transform(images)
            features = aggregator.raw_features(images).double()
            total += features.sum(dim=(0, 2, 3))
            total_sq += features.pow(2).sum(dim=(0, 2, 3))
            count += features.shape[0] * features.shape[2] * features.shape[3]
        if self.trainer is not None and self.trainer.world_size > 1:
            total, total_sq, count = (
                self.trainer.strategy.reduce(t, reduce_op="sum") for t in (total, total_sq, count)
            )
        if count == 0:
            msg = "The training dataloader is empty: MFRNet needs normal training images to compute feature statistics."
            raise RuntimeError(msg)
        mean = total / count
        variance = (total_sq / count - mean.pow(2)).clamp_min(0)
        aggregator.set_statistics(mean.float(), variance.sqrt().float())
        logger.info("MFRNet feature statistics from %d positions", int(count))

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Restore randomly masked features and return the hybrid loss."""
        del args, kwargs
        features, restored = self.model(batch.image)
        loss = self.model.loss(features, restored)
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch.image.shape[0])
        return {"loss": loss}

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Predict scores and maps for the validation batch."""
        del args, kwargs
        predictions = self.model(batch.image)
        return batch.update(pred_score=predictions.pred_score, anomaly_map=predictions.anomaly_map)
