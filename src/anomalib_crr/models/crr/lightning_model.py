# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""CRR: Collaborative Reconstruction and Repair for (multi-class) industrial anomaly detection.

Paper: Q. Wang et al., *Collaborative Reconstruction and Repair for Multi-class Industrial Anomaly
Detection*, arXiv:2512.11401. Official code: https://github.com/Qiqigeww/CRR-MUAD (a Dinomaly fork).

CRR extends Dinomaly in three ways: the decoder also receives synthetic-anomaly images and must
output the *clean* image's encoder features (repair); 40 % of the fused feature elements are masked
before the bottleneck; and a segmentation head, trained in a second stage with everything else
frozen, is fused into the anomaly map.

Both stages run inside a single ``Engine.fit``: the first ``stage1_steps`` optimizer steps train the
bottleneck and decoder, the next ``stage2_steps`` train the segmentation head. This module holds the
training loop and anomalib's hooks; the step accounting and optimizers are in :mod:`.two_stage_schedule`,
the pre-processor in :mod:`.pre_processing`, the stages' inputs in :mod:`.stage_inputs`, argument checks in
:mod:`.arguments` and the released checkpoints in :mod:`.official_checkpoint`.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_crr import CRR
    >>> model = CRR(stage1_steps=10_000, stage2_steps=8_000)
    >>> Engine().fit(model, datamodule=MVTecAD(category="bottle"))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT, OptimizerLRScheduler

from anomalib_crr.models.base import PluginModule
from anomalib_crr.models.components.synthesis import ForegroundMaskFolder
from anomalib_crr.models.components.synthesis.inputs import open_foreground_masks, resolve_texture_dir, synthesis_canvas

from . import stage_inputs
from .arguments import check_training_arguments
from .components import CrrAnomalySynthesizer, MaskAtInference, MaskGranularity
from .components.cnn_encoder import is_cnn_encoder
from .loss import CrrFocalLoss, CrrReconstructionRepairLoss
from .official_checkpoint import OfficialCheckpoint, encoder_weights_for
from .official_checkpoint import from_official_checkpoint as _from_official_checkpoint
from .pre_processing import DEFAULT_ENCODER, check_pre_processor_size, default_pre_processor
from .torch_model import CrrModel, resolve_inference_dtype
from .two_stage_schedule import TwoStageSchedule, ignore_frozen_eval_warning, with_idle_parameters


class CRR(PluginModule, AnomalibModule):
    """CRR Lightning module.

    Args:
        encoder_name: timm DINOv2-R ViT (``vit_small|base|large_patch14_reg4_dinov2``), DINOv3 ViT, or a timm CNN
            such as ``tf_efficientnet_lite0`` (each target stage one group; see the model README).
        encoder_weights: ``"pretrained"`` (download with timm), a local checkpoint path, or ``None`` (random init:
            tests and offline smoke runs only).
        stage1_steps: Optimizer steps of stage I (reconstruction + repair; bottleneck and decoder).
        repair: Train the decoder to repair synthetic anomalies in stage I (CRR). ``False``: reconstruction only
            (Dinomaly's recipe). Ablation rows: ``repair=False, stage2_steps=0`` (reconstruction only),
            ``stage2_steps=0`` (repair without the segmentation head), the defaults (full CRR).
        stage2_steps: Optimizer steps of stage II (segmentation head; everything else frozen).
        mask_ratio: Fraction λ of fused feature elements masked before the bottleneck during training.
        mask_at_inference: ``"expectation"`` (deterministic), ``"random"`` (official) or ``"off"``.
        mask_granularity: ``"element"`` (official) or ``"token"``.
        bottleneck_dropout: Dropout of the bottleneck MLP.
        decoder_depth: Number of decoder blocks.
        target_layers: Encoder blocks to reconstruct (default per encoder size).
        fuse_layer_encoder: Encoder layer groups (default ``[[0, 1, 2, 3], [4, 5, 6, 7]]``).
        fuse_layer_decoder: Decoder layer groups, on reversed decoder outputs (same default).
        seg_base_width: Base width of the segmentation head.
        seg_output_size: Side of the segmentation output and of the map the score is computed on.
        fusion_alpha: Weight of the reconstruction map in the fused map (1: reconstruction only, 0: seg only).
        dtd_dir: Texture folder for synthesis (DTD layout); downloaded at fit start if missing. ``None``: Perlin-noise
            textures, no download.
        foreground: Where synthetic anomalies may land. ``None``: anywhere; ``"auto"``: on a foreground estimated
            from each image (the README's *Foreground*); a folder: per-image masks mirroring the dataset tree
            (e.g. DiffusionAD's DIS masks), brought to the crop by the pre-processor's transform.
        stage2_batch_size: Images of each batch that stage II trains the segmentation head on (the first ones of
            the shuffled batch; official: 8 while stage I uses 16). ``None``: the whole batch.
        lr: Peak stage-I learning rate (StableAdamW, warm-up then cosine).
        final_lr: Final stage-I learning rate.
        warmup_steps: Stage-I warm-up steps.
        weight_decay: Stage-I weight decay.
        grad_clip: Stage-I gradient-norm clip.
        seg_lr: Stage-II learning rate (Adam, constant).
        pre_processor: Pre-processor; must not normalise (CRR normalises inside the model after synthesis).
        post_processor: Post-processor.
        evaluator: Evaluator.
        visualizer: Visualizer.
        inference_dtype: ``None`` (float32) or ``"bfloat16"``/``"float16"``: opt-in autocast of encoder, decoder
            and seg head in eval forwards (maps and score stay float32); fast where bf16 is native (GPUs,
            AVX512-BF16/AMX), slow where emulated. ONNX export always runs in float32.
        seg_channels_last: Run the segmentation head's eval path in channels-last memory format.
        official_checkpoint: A stage-I model file released with the official code (e.g. the Real-IAD
            ``dinov2_vitb14_reg4_pretrain.pth``); see :meth:`from_official_checkpoint`.
        official_seg_checkpoint: The matching official segmentation-network file (e.g. ``Seg_model_7999.pth``).
        decoder_dim: CNN encoders only: width of the bottleneck output and decoder (``None``: 256).
        token_stride: CNN encoders only: input pixels per token (``None``: the finest target stage's stride).
    """

    # INT8_PTQ / INT8_ACQ quantise these modules; seg head, encoder-decoder distances, fusion and post-processing stay
    # in float. Why, and what was measured (random encoder only): the README's *INT8 deployment*.
    int8_quantized_modules = ("model.encoder", "model.bottleneck", "model.decoder")
    checkpoint_enums = (MaskAtInference, MaskGranularity)
    # The Lightning checkpoint holds the encoder's and the official files' weights: nothing to download or read.
    checkpoint_load_defaults: ClassVar[dict[str, Any]] = dict.fromkeys(
        ("encoder_weights", "official_checkpoint", "official_seg_checkpoint")
    )
    normalize_reason = (
        "CRR synthesises anomalies on [0, 1] images and applies the encoder's normalisation inside the model."
    )

    def __init__(
        self,
        encoder_name: str = DEFAULT_ENCODER,
        encoder_weights: str | Path | None = "pretrained",
        stage1_steps: int = 10_000,
        stage2_steps: int = 8_000,
        mask_ratio: float = 0.4,
        mask_at_inference: MaskAtInference | str = MaskAtInference.EXPECTATION,
        mask_granularity: MaskGranularity | str = MaskGranularity.ELEMENT,
        bottleneck_dropout: float = 0.4,
        decoder_depth: int = 8,
        target_layers: list[int] | list[str] | None = None,
        fuse_layer_encoder: list[list[int]] | None = None,
        fuse_layer_decoder: list[list[int]] | None = None,
        seg_base_width: int = 192,
        seg_output_size: int = 256,
        fusion_alpha: float = 0.7,
        dtd_dir: str | Path | None = "./datasets/dtd",
        foreground: str | Path | None = None,
        stage2_batch_size: int | None = 8,
        lr: float = 2e-3,
        final_lr: float = 2e-4,
        warmup_steps: int = 100,
        weight_decay: float = 1e-4,
        grad_clip: float = 0.1,
        seg_lr: float = 1e-4,
        pre_processor: PreProcessor | bool = True,
        post_processor: PostProcessor | bool = True,
        evaluator: Evaluator | bool = True,
        visualizer: Visualizer | bool = True,
        inference_dtype: str | None = None,
        seg_channels_last: bool = False,
        official_checkpoint: str | Path | None = None,
        official_seg_checkpoint: str | Path | None = None,
        repair: bool = True,
        decoder_dim: int | None = None,
        token_stride: int | None = None,
    ) -> None:
        resolve_inference_dtype(inference_dtype)  # bad values fail before anything is built
        cnn_layers = target_layers if is_cnn_encoder(encoder_name) else None
        if pre_processor is True:  # the default crop must tile into the encoder's patches (14 or 16 px)
            pre_processor = self.configure_pre_processor(
                encoder_name=encoder_name, target_layers=cnn_layers, token_stride=token_stride
            )
        check_training_arguments(stage1_steps, stage2_steps, stage2_batch_size, foreground)
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        check_pre_processor_size(self.pre_processor_transforms(), encoder_name, cnn_layers, token_stride)
        official = OfficialCheckpoint.for_encoder(official_checkpoint, official_seg_checkpoint, encoder_name)
        self.model: CrrModel = CrrModel(
            encoder_name=encoder_name,
            encoder_weights=encoder_weights_for(official, encoder_weights),  # none if the official file has them
            target_layers=target_layers,
            fuse_layer_encoder=fuse_layer_encoder,
            fuse_layer_decoder=fuse_layer_decoder,
            decoder_depth=decoder_depth,
            bottleneck_dropout=bottleneck_dropout,
            mask_ratio=mask_ratio,
            mask_at_inference=mask_at_inference,
            mask_granularity=mask_granularity,
            seg_base_width=seg_base_width,
            seg_output_size=seg_output_size,
            fusion_alpha=fusion_alpha,
            inference_dtype=inference_dtype,
            seg_channels_last=seg_channels_last,
            decoder_dim=decoder_dim,
            token_stride=token_stride,
        )
        self.repair = bool(repair)
        self.stage1_steps = stage1_steps
        self.stage2_steps = stage2_steps
        self.dtd_dir = dtd_dir
        self.foreground = None if foreground is None else str(foreground)
        self.stage2_batch_size = stage2_batch_size
        self.foreground_masks: ForegroundMaskFolder | None = None
        self.lr, self.final_lr, self.warmup_steps = lr, final_lr, warmup_steps
        self.weight_decay, self.grad_clip, self.seg_lr = weight_decay, grad_clip, seg_lr
        self.loss = CrrReconstructionRepairLoss()
        self.seg_loss = CrrFocalLoss()
        self.synthesizer: CrrAnomalySynthesizer | None = None
        # Steps taken so far; a buffer so it is saved in checkpoints and resumes the right stage. Mirrored in
        # a Python int during training, so choosing the stage never waits for the device.
        self.register_buffer("train_step_count", torch.tensor(0, dtype=torch.long))
        self._step = 0
        self.automatic_optimization = False
        if official is not None:  # a released CRR-MUAD model: stage I (and stage II with the seg file) done
            official.load_into(self.model)
            self.train_step_count.fill_(official.steps_done(self.stage1_steps, self.stage2_steps))
            self._step = int(self.train_step_count)

    # ------------------------------------------------------------------ configuration
    @classmethod
    def configure_pre_processor(
        cls,
        image_size: tuple[int, int] | None = None,
        crop_size: int | None = None,
        encoder_name: str = DEFAULT_ENCODER,
        target_layers: Sequence | None = None,
        token_stride: int | None = None,
    ) -> PreProcessor:
        """ViT: resize (448² by default) and centre-crop (392²); CNN: resize to 256² (no crop). No ``Normalize``.

        The arguments and size checks are those of :func:`~.pre_processing.default_pre_processor`: ``crop_size``
        defaults to 392 rounded down to the encoder's patch size (14 DINOv2, 16 DINOv3); ``target_layers`` and
        ``token_stride`` set a CNN encoder's size multiple.
        """
        return default_pre_processor(image_size, crop_size, encoder_name, target_layers, token_stride)

    # A classmethod whose body and documentation live with the rest of the official-checkpoint glue.
    from_official_checkpoint = classmethod(_from_official_checkpoint)

    @property
    def schedule(self) -> TwoStageSchedule:
        """The two stages as the module's attributes (its saved hyper-parameters) set them now."""
        return TwoStageSchedule.of(self)

    @property
    def total_steps(self) -> int:
        """Optimizer steps of a full fit (stage I + stage II)."""
        return self.schedule.total_steps

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Run exactly ``stage1_steps + stage2_steps`` steps and validate once, at the end.

        A fit that the trainer ends earlier (``max_epochs``, ``max_time``, early stopping, Ctrl-C) is validated
        once when it ends, by :class:`~anomalib_crr.models.components.ValidateAtFitEnd`.
        """
        return self.schedule.trainer_arguments()

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """StableAdamW + warm cosine for bottleneck/decoder (stage I); constant Adam for the seg head (stage II)."""
        reconstruction_params = [param for part in self.model.reconstruction_modules() for param in part.parameters()]
        return self.schedule.optimizers(reconstruction_params, self.model.seg_head.parameters())

    # ------------------------------------------------------------------ training
    def on_fit_start(self) -> None:
        """Create the anomaly synthesiser (and fetch DTD if requested) before the first step.

        Also puts every trainable part in train mode and the frozen encoder in eval mode, and silences
        Lightning's "modules in eval mode" warning when the encoder's modules are the only ones in eval.
        """
        self.foreground_masks = open_foreground_masks(self.foreground, self.pre_processor)
        canvas = synthesis_canvas(self.pre_processor)
        self.synthesizer = CrrAnomalySynthesizer(dtd_dir=resolve_texture_dir(self.dtd_dir), canvas_size=canvas)
        self.train()
        self.model.encoder.eval()
        ignore_frozen_eval_warning(self, "model.encoder")

    def _foreground(self, batch: Batch, images: torch.Tensor) -> torch.Tensor | None:
        """Foreground masks (B, 1, H, W) for the images of ``batch`` (mask folders opened on first use)."""
        if self.foreground not in {None, "auto"} and self.foreground_masks is None:
            self.foreground_masks = open_foreground_masks(self.foreground, self.pre_processor)
        return stage_inputs.batch_foreground(self.foreground, self.foreground_masks, batch, images)

    def on_train_start(self) -> None:
        """Continue counting from the checkpoint's step (0 for a new model)."""
        self._step = int(self.train_step_count)

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """One optimizer step of stage I or stage II, chosen by the step counter."""
        del args, kwargs
        step = self._step
        if self.schedule.in_stage1(step):
            loss = self._stage1_step(batch.image, step, self._foreground(batch, batch.image))
            self.log("train_loss_stage1", loss, on_step=True, prog_bar=False)
        else:
            images = self.stage2_images(batch.image)
            loss = self._stage2_step(images, self._foreground(batch, images))
            self.log("train_loss_stage2", loss, on_step=True, prog_bar=False)
        self._step += 1
        self.train_step_count += 1
        self.log("train_loss", loss, on_step=True, prog_bar=True)
        return {"loss": loss}

    def stage2_images(self, images: torch.Tensor) -> torch.Tensor:
        """The first ``stage2_batch_size`` images of a (shuffled) batch, which stage II trains on."""
        return stage_inputs.stage2_images(images, self.stage2_batch_size)

    def _stage1_step(self, images: torch.Tensor, step: int, foreground: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruction + repair: ``L(E(x), D(x)) + L(E(x), D(x̃))`` with one encoder/decoder pass on [x; x̃].

        Bottleneck and decoder are put in train mode here (masking and dropout on): Lightning does not call
        ``train()`` when a fit starts, and stage II leaves them in eval mode. Gradient-norm clipping happens in
        :meth:`on_before_optimizer_step`, where mixed-precision gradients are already unscaled.
        """
        optimizer = self.optimizers()[0]
        scheduler = self.lr_schedulers()
        for module in self.model.reconstruction_modules():
            module.train()
        if self.repair:
            assert self.synthesizer is not None
            synthetic = self.synthesizer(images, foreground)
            encoder_maps, decoder_maps = self.model.extract_features(torch.cat([images, synthetic.image]))
            batch_size = images.shape[0]
            loss = self.loss(
                clean_encoder=[feature[:batch_size] for feature in encoder_maps],
                clean_decoder=[feature[:batch_size] for feature in decoder_maps],
                repaired_decoder=[feature[batch_size:] for feature in decoder_maps],
                step=step,
            )
        else:  # reconstruction only (ablation): Dinomaly's recipe, the synthesiser is never called
            encoder_maps, decoder_maps = self.model.extract_features(images)
            loss = self.loss.reconstruction(encoder_maps, decoder_maps, step)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(with_idle_parameters(loss, [self.model.seg_head], self.trainer.world_size))
        optimizer.step()
        scheduler.step()
        return loss.detach()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Clip the stage-I gradient norm to ``grad_clip``.

        Lightning calls this hook inside ``optimizer.step()`` after the precision plugin has unscaled the
        gradients (``16-mixed``'s GradScaler), so the clip sees the true gradient norm; clipping before
        ``step()`` would clip the scaled gradients and shrink every update by the loss scale.
        """
        stage1_optimizer = self.optimizers()[0].optimizer
        if optimizer is stage1_optimizer and self.grad_clip:
            self.clip_gradients(optimizer, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")

    def freeze_reconstruction(self) -> None:
        """Stage II: bottleneck and decoder in eval mode (dropout off, inference-mode mask), run without grad.

        Their parameters keep ``requires_grad`` (DDP fixes the set of synchronised parameters when it wraps
        the model), but they get no gradient and their optimizer is not stepped, so they stay bit-identical.
        """
        for module in self.model.reconstruction_modules():
            module.eval()

    def _stage2_step(self, images: torch.Tensor, foreground: torch.Tensor | None = None) -> torch.Tensor:
        """Segmentation: focal loss of the seg head on the synthetic image against its mask.

        ``images`` are the ``stage2_batch_size`` images chosen by :meth:`stage2_images`.
        """
        optimizer = self.optimizers()[1]
        self.freeze_reconstruction()
        if not self.model.seg_head_active:
            self.model.mark_seg_head_trained()
        assert self.synthesizer is not None
        with torch.no_grad():
            synthetic = self.synthesizer(images, foreground)
            encoder_maps, decoder_maps = self.model.extract_features(synthetic.image)
        logits = self.model.segment(encoder_maps, decoder_maps)
        loss = self.seg_loss(logits, self.stage2_target(synthetic.mask, logits.shape[-2:]))
        optimizer.zero_grad(set_to_none=True)
        idle = self.model.reconstruction_modules()
        self.manual_backward(with_idle_parameters(loss, idle, self.trainer.world_size))
        optimizer.step()
        return loss.detach()

    @staticmethod
    def stage2_target(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The synthetic mask at the seg head's size, binarised as the official code does (``< 0.5`` → 0)."""
        return stage_inputs.stage2_target(mask, size)

    def unfinished_fit_message(self) -> str | None:
        """How far the two stages got, when the fit ended before ``stage1_steps + stage2_steps``.

        Read by :class:`~anomalib_crr.models.components.ValidateAtFitEnd` (which then validates once, so the
        cut-short run still has thresholds and a checkpoint); ``None`` once both stages are done.
        """
        return self.schedule.unfinished_fit_message(self._step)
