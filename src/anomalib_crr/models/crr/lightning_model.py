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
bottleneck and decoder, the next ``stage2_steps`` train the segmentation head.

Example:
    >>> from anomalib.data import MVTecAD
    >>> from anomalib.engine import Engine
    >>> from anomalib_crr import CRR
    >>> model = CRR(stage1_steps=10_000, stage2_steps=8_000)
    >>> Engine().fit(model, datamodule=MVTecAD(category="bottle"))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import Batch
from anomalib.metrics import Evaluator
from anomalib.models.components import AnomalibModule
from anomalib.models.image.dinomaly.components import StableAdamW, WarmCosineScheduler
from anomalib.post_processing import PostProcessor
from anomalib.pre_processing import PreProcessor
from anomalib.visualization import Visualizer
from lightning.pytorch.utilities.types import STEP_OUTPUT, OptimizerLRScheduler
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torchvision.transforms.v2 import CenterCrop, Compose, Resize

from anomalib_crr.models.base import PluginModule
from anomalib_crr.models.components import transform_output_size
from anomalib_crr.models.components.synthesis import ForegroundMaskFolder, estimate_foreground
from anomalib_crr.models.components.synthesis.inputs import (
    open_foreground_masks,
    resolve_texture_dir,
    synthesis_canvas,
)

from .components import CrrAnomalySynthesizer, MaskAtInference, MaskGranularity
from .components.cnn_encoder import cnn_input_multiple, is_cnn_encoder
from .components.encoder import encoder_family, encoder_patch_size
from .loss import CrrFocalLoss, CrrReconstructionRepairLoss
from .official_checkpoint import OfficialCheckpoint
from .torch_model import CrrModel, resolve_inference_dtype

logger = logging.getLogger(__name__)


def _family_label(encoder_name: str) -> str:
    """``"DINOv2"``, ``"DINOv3"`` or ``"CNN"``, for messages."""
    if is_cnn_encoder(encoder_name):
        return "CNN"
    return encoder_family(encoder_name).replace("dino", "DINO")


def input_multiple(encoder_name: str, target_layers: Sequence | None = None, token_stride: int | None = None) -> int:
    """The side every input must be a multiple of: the ViT's patch, or (CNN) the coarsest stage and token stride."""
    if is_cnn_encoder(encoder_name):
        return cnn_input_multiple(encoder_name, target_layers, token_stride)
    return encoder_patch_size(encoder_name)


def multiple_phrase(encoder_name: str, multiple: int) -> str:
    """``"DINOv2 patch size 14"`` or ``"CNN encoder's input multiple 16"``, for messages."""
    if is_cnn_encoder(encoder_name):
        return f"CNN encoder's input multiple {multiple} (its coarsest target stage and token stride)"
    return f"{_family_label(encoder_name)} patch size {multiple}"


def nearest_sizes(size: int, multiple: int) -> str:
    """The valid sides next to ``size``, for messages (``"224 or 238"``)."""
    below = max(1, size // multiple) * multiple
    return f"{below} or {below + multiple}" if below != size else str(size)


DEFAULT_IMAGE_SIZE = 448
DEFAULT_CROP_SIZE = 392
CNN_IMAGE_SIZE = 256  # the CNN path's default: a plain resize (no crop), as PaDiM and PatchCore use
DEFAULT_ENCODER = "vit_base_patch14_reg4_dinov2"


class CRR(PluginModule, AnomalibModule):
    """CRR Lightning module.

    Args:
        encoder_name: timm DINOv2-R ViT (``vit_small|base|large_patch14_reg4_dinov2``), DINOv3 ViT, or a timm CNN
            such as ``tf_efficientnet_lite0`` (each target stage one group; see the model README).
        encoder_weights: ``"pretrained"`` (download with timm), a local checkpoint path, or ``None`` (random init:
            tests and offline smoke runs only).
        stage1_steps: Optimizer steps of stage I (reconstruction + repair; bottleneck and decoder).
        repair: Train the decoder to repair synthetic anomalies in stage I (CRR). ``False``: reconstruction only
            (clean images, no synthesis in stage I: Dinomaly's recipe). The paper's ablation rows are
            ``repair=False, stage2_steps=0`` (reconstruction only), ``stage2_steps=0`` (repair without the
            segmentation head) and the defaults (full CRR).
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
        foreground: Where synthetic anomalies may land. ``None``: anywhere (textures); ``"auto"``: on a foreground
            estimated from each image (difference to the border colour above the border's own noise level,
            morphological clean-up; the whole image where the estimate is degenerate); a folder: per-image
            masks mirroring the dataset tree (e.g. DiffusionAD's DIS masks), brought to the crop by the
            pre-processor's transform.
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
        inference_dtype: ``None`` (float32, default) or ``"bfloat16"``/``"float16"``: opt-in reduced-precision
            autocast of encoder, decoder and segmentation head in eval forwards (maps and score stay float32).
            Fast on GPUs and CPUs with native bf16 (AVX512-BF16/AMX); slower where bf16 is emulated. ONNX export
            always runs in float32.
        seg_channels_last: Run the segmentation head's eval path in channels-last memory format.
        official_checkpoint: A stage-I model file released with the official code (``ViTill`` state dict, e.g.
            the Real-IAD ``dinov2_vitb14_reg4_pretrain.pth``), loaded into bottleneck, decoder and (when the
            file embeds it, as the released one does) encoder. See :meth:`from_official_checkpoint`.
        official_seg_checkpoint: The matching official segmentation-network file (e.g. ``Seg_model_7999.pth``).
        decoder_dim: CNN encoders only: width of the bottleneck output and decoder (``None``: 256).
        token_stride: CNN encoders only: input pixels per token (``None``: the finest target stage's stride).
    """

    # INT8_PTQ / INT8_ACQ quantise these modules; the segmentation head (its logits are fused into the map), the
    # encoder-decoder distances, their fusion and the post-processing stay in float. Not measured on real weights (none
    # here); benchmarks/int8.py measures agreement and speed with a random encoder. A never-validated CRR (NaN
    # post-processor statistics) is refused before quantisation: OpenVINO 2026.4 cannot compile its quantised IR.
    int8_quantized_modules = ("model.encoder", "model.bottleneck", "model.decoder")
    checkpoint_enums = (MaskAtInference, MaskGranularity)
    # The Lightning checkpoint holds the encoder's and the official files' weights: nothing to download or read.
    checkpoint_load_defaults: ClassVar[dict[str, Any]] = {
        "encoder_weights": None,
        "official_checkpoint": None,
        "official_seg_checkpoint": None,
    }
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
        if stage1_steps < 0 or stage2_steps < 0 or stage1_steps + stage2_steps == 0:
            msg = f"stage1_steps and stage2_steps must be >= 0 and not both 0, got {stage1_steps}, {stage2_steps}"
            raise ValueError(msg)
        if stage2_batch_size is not None and (isinstance(stage2_batch_size, bool) or stage2_batch_size < 1):
            msg = f"stage2_batch_size must be a positive integer or None (the whole batch), got {stage2_batch_size!r}"
            raise ValueError(msg)
        if foreground is not None and not isinstance(foreground, str | Path):
            msg = f"foreground must be None, 'auto' or a folder of masks, got {foreground!r}"
            raise TypeError(msg)
        super().__init__(
            pre_processor=pre_processor,
            post_processor=post_processor,
            evaluator=evaluator,
            visualizer=visualizer,
        )
        self._check_pre_processor(encoder_name, cnn_layers, token_stride)
        official = OfficialCheckpoint.from_paths(official_checkpoint, official_seg_checkpoint)
        if official is not None and is_cnn_encoder(encoder_name):
            msg = "official_checkpoint holds a DINOv2 ViT-B CRR; it cannot be loaded into a CNN-encoder CRR"
            raise ValueError(msg)
        self.model: CrrModel = CrrModel(
            encoder_name=encoder_name,
            # The official model file embeds the frozen DINOv2 encoder: no download then.
            encoder_weights=None if official is not None and official.has_encoder else encoder_weights,
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
            self.train_step_count.fill_(self.total_steps if official.seg_state is not None else self.stage1_steps)
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

        Args:
            image_size: Resize target (height, width).
            crop_size: Side of the square centre crop, a multiple of the encoder's patch size (14 for DINOv2,
                16 for DINOv3). Default: 392 rounded down to a multiple of it (392 for DINOv2, 384 for DINOv3);
                CNN encoders: no crop unless one is given.
            encoder_name: The encoder the images are for; it sets the patch size.
            target_layers: CNN encoders: the target stages (their coarsest stride sets the size multiple).
            token_stride: CNN encoders: the token grid's stride.

        Raises:
            ValueError: If a size is not a multiple of the patch size or the crop is larger than the resized image.
        """
        multiple = input_multiple(encoder_name, target_layers, token_stride)
        if is_cnn_encoder(encoder_name):
            image_size = tuple(image_size) if image_size is not None else (CNN_IMAGE_SIZE, CNN_IMAGE_SIZE)
            sides = [crop_size] if crop_size else list(image_size)
        else:
            image_size = tuple(image_size) if image_size is not None else (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
            crop_size = crop_size or DEFAULT_CROP_SIZE // multiple * multiple
            sides = [crop_size]
        for side in sides:
            if side % multiple:
                what = "crop_size" if crop_size else "image_size"
                msg = (
                    f"{what} {side} is not a multiple of the {multiple_phrase(encoder_name, multiple)} "
                    f"('{encoder_name}'); use e.g. {nearest_sizes(side, multiple)}"
                )
                raise ValueError(msg)
        if crop_size and crop_size > min(image_size):
            msg = f"crop_size {crop_size} cannot be larger than image_size {image_size}"
            raise ValueError(msg)
        resize = Resize(image_size, antialias=True)
        return PreProcessor(transform=Compose([resize, CenterCrop(crop_size)]) if crop_size else Compose([resize]))

    def _check_pre_processor(
        self, encoder_name: str, target_layers: Sequence | None = None, token_stride: int | None = None
    ) -> None:
        """Reject pre-processors that normalise or produce sizes that do not tile into the encoder's patches."""
        transforms = self.pre_processor_transforms()
        if transforms is None:
            return
        size = transform_output_size(transforms)
        patch = input_multiple(encoder_name, target_layers, token_stride)
        if size is not None and (size[0] % patch or size[1] % patch):
            msg = (
                f"The pre-processor produces {size[0]}x{size[1]} images, which is not a multiple of the "
                f"{multiple_phrase(encoder_name, patch)} of '{encoder_name}'; use a crop/resize "
                f"size such as {nearest_sizes(size[0], patch)} (CRR.configure_pre_processor(crop_size=..., "
                f"encoder_name='{encoder_name}'))."
            )
            raise ValueError(msg)

    @classmethod
    def from_official_checkpoint(
        cls,
        model_path: str | Path,
        seg_path: str | Path | None = None,
        **kwargs: Any,
    ) -> CRR:
        """Build CRR from the checkpoints released with the official CRR-MUAD code.

        The official names are remapped to ours (``bottleneck.0.fc1`` → ``bottleneck.mlp.fc1``, ``up2.1`` →
        ``seg_head.stages.2.conv.0``, ...); the frozen encoder comes from the DINOv2 weights embedded in the
        model file (or, if a file lacks them, from ``encoder_weights``). A file whose keys or shapes do not
        match the model is refused with a message naming it and the first mismatches. The released files are
        for the defaults (ViT-B/14 DINOv2-R, 8 decoder blocks, ``seg_base_width=192``, Resize 448 → crop 392).
        The result has no thresholds yet: run ``Engine.validate`` (or ``fit`` with more steps) on normal data
        before ``predict``. CLI: ``--model.official_checkpoint FILE --model.official_seg_checkpoint FILE``.

        Args:
            model_path: The stage-I model file (``ViTill`` state dict).
            seg_path: The segmentation-network file; ``None`` leaves the head untrained (reconstruction map only).
            **kwargs: Other ``CRR`` arguments (e.g. ``mask_at_inference="random"`` for the official stochastic
                inference, ``inference_dtype``).

        Example:
            >>> model = CRR.from_official_checkpoint(  # doctest: +SKIP
            ...     "dinov2_vitb14_reg4_pretrain.pth", "Seg_model_7999.pth", stage1_steps=50_000)
        """
        return cls(official_checkpoint=model_path, official_seg_checkpoint=seg_path, **kwargs)

    @property
    def total_steps(self) -> int:
        """Optimizer steps of a full fit (stage I + stage II)."""
        return self.stage1_steps + self.stage2_steps

    @property
    def trainer_arguments(self) -> dict[str, Any]:
        """Run exactly ``stage1_steps + stage2_steps`` steps and validate once, at the end.

        Clipping is done manually in stage I only; validation costs a full seg-head pass per image, and
        thresholds come from the last validation, so validating once at the end is enough. A fit that the
        trainer ends earlier (``max_epochs``, ``max_time``, early stopping, Ctrl-C) is validated once when it
        ends, by :class:`~anomalib_crr.models.components.ValidateAtFitEnd`.
        """
        return {
            "max_steps": self.total_steps,
            "gradient_clip_val": None,
            "num_sanity_val_steps": 0,
            "val_check_interval": self.total_steps,
            "check_val_every_n_epoch": None,
        }

    def configure_optimizers(self) -> OptimizerLRScheduler:
        """StableAdamW + warm cosine for bottleneck/decoder (stage I); constant Adam for the seg head (stage II)."""
        reconstruction_params = [param for part in self.model.reconstruction_modules() for param in part.parameters()]
        stage1_optimizer = StableAdamW(
            reconstruction_params,
            lr=self.lr,
            betas=(0.9, 0.999),
            weight_decay=self.weight_decay,
            amsgrad=True,
            eps=1e-10,
        )
        stage1_total = max(self.stage1_steps, 1)
        scheduler = WarmCosineScheduler(
            stage1_optimizer,
            base_value=self.lr,
            final_value=self.final_lr,
            total_iters=stage1_total,
            warmup_iters=min(self.warmup_steps, stage1_total),
        )
        stage2_optimizer = torch.optim.Adam(self.model.seg_head.parameters(), lr=self.seg_lr)
        return [stage1_optimizer, stage2_optimizer], [scheduler]

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
        in_eval = [name for name, module in self.named_modules() if not module.training]
        encoder_prefix = "model.encoder"
        if all(name == encoder_prefix or name.startswith(encoder_prefix + ".") for name in in_eval):
            message = f"Found {len(in_eval)} module(s) in eval mode at the start of training."
            warnings.filterwarnings("ignore", message=re.escape(message), category=PossibleUserWarning)

    def _foreground(self, batch: Batch, images: torch.Tensor) -> torch.Tensor | None:
        """Foreground masks (B, 1, H, W) for the images of ``batch`` (``images`` may be its first rows)."""
        if self.foreground is None:
            return None
        if self.foreground == "auto":
            return estimate_foreground(images)
        if self.foreground_masks is None:
            self.foreground_masks = open_foreground_masks(self.foreground, self.pre_processor)
        paths = getattr(batch, "image_path", None)
        if paths is None:
            msg = "foreground is a mask folder, but the training batches carry no image_path to find the masks by"
            raise ValueError(msg)
        assert self.foreground_masks is not None
        return self.foreground_masks(list(paths)[: images.shape[0]], tuple(images.shape[-2:]), images.device)

    def on_train_start(self) -> None:
        """Continue counting from the checkpoint's step (0 for a new model)."""
        self._step = int(self.train_step_count)

    def training_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """One optimizer step of stage I or stage II, chosen by the step counter."""
        del args, kwargs
        step = self._step
        if step < self.stage1_steps:
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
        return images if self.stage2_batch_size is None else images[: self.stage2_batch_size]

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
        self.manual_backward(self._with_idle_parameters(loss, [self.model.seg_head]))
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

    def _with_idle_parameters(self, loss: torch.Tensor, idle_modules: list[torch.nn.Module]) -> torch.Tensor:
        """Give the parameters this stage does not train a zero gradient when training with DDP.

        DDP (without ``find_unused_parameters``) waits for a gradient of every trainable parameter in every
        step; the seg head is idle in stage I, bottleneck and decoder in stage II. Their optimizer is not
        stepped in that stage, so the zero gradients change nothing. Single-process runs skip this.
        """
        if self.trainer.world_size <= 1:
            return loss
        return loss + 0.0 * sum(param.sum() for module in idle_modules for param in module.parameters())

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
        self.manual_backward(self._with_idle_parameters(loss, self.model.reconstruction_modules()))
        optimizer.step()
        return loss.detach()

    @staticmethod
    def stage2_target(mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The synthetic mask at the seg head's size, binarised as the official code does (``< 0.5`` → 0)."""
        return F.interpolate(mask, size=size, mode="bilinear", align_corners=False) >= 0.5

    def unfinished_fit_message(self) -> str | None:
        """How far the two stages got, when the fit ended before ``stage1_steps + stage2_steps``.

        Read by :class:`~anomalib_crr.models.components.ValidateAtFitEnd` (which then validates once, so the
        cut-short run still has thresholds and a checkpoint); ``None`` once both stages are done.
        """
        done = self._step
        if done >= self.total_steps:
            return None
        if done <= self.stage1_steps:
            stage = (
                f"stage I (reconstruction + repair) reached step {done} of {self.stage1_steps} and stage II "
                "(segmentation head) never ran, so anomaly maps use the reconstruction map only"
            )
        else:
            stage = (
                f"stage II (segmentation head) reached step {done - self.stage1_steps} of {self.stage2_steps}; "
                "anomaly maps fuse the partly trained segmentation head"
            )
        return (
            f"training stopped after {done} of {self.total_steps} configured optimizer steps "
            f"(stage1_steps={self.stage1_steps}, stage2_steps={self.stage2_steps}): {stage}."
        )
