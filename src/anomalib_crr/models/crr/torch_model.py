# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""PyTorch model of CRR (Collaborative Reconstruction and Repair).

Data flow for an image batch ``x`` in [0, 1] (B, 3, H, W), H and W multiples of the encoder's patch size
(14 for DINOv2, 16 for DINOv3):

1. ImageNet normalisation (inside the model, because anomaly synthesis needs [0, 1] images).
2. Frozen DINOv2-R or DINOv3 encoder → tokens of the target blocks ``f_l`` (B, N, C), N = 1 + registers + patches.
3. Fusion ``f̄ = mean_l f_l`` → masked noisy bottleneck → linear-attention decoder blocks ``g_1..g_L``.
4. Groups ``E_g = mean(f_l, l ∈ group)``, ``D_g = mean(g_l, l ∈ group)`` (decoder outputs reversed), patch tokens
   reshaped to (B, C, h, w).
   With a timm CNN encoder (:mod:`.components.cnn_encoder`), each target stage resized to the token grid is one
   group ``E_g``; the bottleneck takes their concatenation, and a linear head per group maps the decoder's group
   output back to ``C_g`` channels (``D_g``).
5. Eval: ``A_rec = mean_g up(1 − cos(E_g, D_g))``, ``A_seg = softmax(Seg(S))[1]`` with
   ``S = concat_g[−norm(E_g)·norm(D_g)]``, ``A = α·A_rec + (1 − α)·A_seg``, Gaussian blur, score = mean of the top 1 %.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.data import InferenceBatch
from anomalib.models.components import GaussianBlur2d
from torch import nn

from .components import (
    CnnGroupEncoder,
    CrrSegHead,
    GroupHeads,
    MaskAtInference,
    MaskedNoisyBottleneck,
    MaskGranularity,
    build_encoder,
    dino_architecture,
    is_cnn_encoder,
)
from .components.decoder import build_decoder
from .components.fusion import fuse_maps, reconstruction_map, segmentation_input, top_fraction_score
from .components.precision import resolve_inference_dtype

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_GROUPS = [[0, 1, 2, 3], [4, 5, 6, 7]]
DEFAULT_CNN_DECODER_DIM = 256
CNN_HEAD_DIM = 32  # decoder attention heads of the CNN path: decoder_dim // 32


def _sync_after_load(module: CrrModel, incompatible_keys: object) -> None:
    """``load_state_dict`` post-hook (a module-level function, so the model stays picklable for torch export)."""
    del incompatible_keys
    module.sync_seg_state()


def even_groups(num_groups: int, depth: int) -> list[list[int]]:
    """``depth`` consecutive decoder positions split into ``num_groups`` groups as evenly as possible."""
    if depth < num_groups:
        msg = f"decoder_depth={depth} must be at least the number of groups ({num_groups})"
        raise ValueError(msg)
    bounds = [round(depth * g / num_groups) for g in range(num_groups + 1)]
    return [list(range(bounds[g], bounds[g + 1])) for g in range(num_groups)]


def _validate_groups(groups: list[list[int]], num_layers: int, name: str) -> list[list[int]]:
    flat = [index for group in groups for index in group]
    if not groups or not all(groups) or any(not 0 <= index < num_layers for index in flat):
        msg = f"{name}={groups} must be non-empty groups of indices in [0, {num_layers - 1}]"
        raise ValueError(msg)
    return [list(group) for group in groups]


class CrrModel(nn.Module):
    """CRR network: frozen encoder, masked noisy bottleneck, linear-attention decoder and segmentation head.

    Args:
        encoder_name: timm DINOv2 ViT (``vit_small|base|large_patch14_reg4_dinov2``), DINOv3 ViT
            (``vit_small|base|large_patch16_dinov3``, ...) or timm CNN (``tf_efficientnet_lite0``, ``resnet18``, ...).
        encoder_weights: ``"pretrained"`` (download), a local checkpoint path, or ``None`` (random init).
        target_layers: ViT: encoder blocks whose tokens are reconstructed; ``None``: 2..9 for 12-block encoders,
            4..18 step 2 for 24 blocks (Dinomaly's choice, scaled to the depth). CNN: ``feature_info`` stage names,
            one group each; ``None``: the stride-8 and stride-16 stages.
        fuse_layer_encoder: Groups of target-layer positions averaged into ``E_g``.
        fuse_layer_decoder: Groups of (reversed) decoder-block positions averaged into ``D_g``.
        decoder_depth: Number of decoder blocks.
        bottleneck_dropout: Dropout of the bottleneck MLP.
        mask_ratio: Fraction λ of fused-token elements zeroed before the bottleneck in training.
        mask_at_inference: ``"expectation"``, ``"random"`` or ``"off"``, see :class:`MaskAtInference`.
        mask_granularity: ``"element"`` (official) or ``"token"``.
        seg_base_width: Base width of the segmentation head (192 in the paper).
        seg_output_size: Side of the segmentation logits and of the map the score is taken on (256).
        fusion_alpha: Weight α of the reconstruction map in the fused map.
        max_ratio: Fraction of the highest map values averaged into the image score.
        inference_dtype: ``None`` (float32) or ``"bfloat16"``/``"float16"``: eval forwards run the encoder,
            decoder and segmentation head under autocast in that dtype; maps, fusion and score stay float32.
            Opt-in: it changes the output slightly (see the README), and ONNX export always uses float32.
        seg_channels_last: Run the segmentation head's eval path in channels-last memory format.
        decoder_dim: CNN path only: width of the bottleneck output and decoder (``None``: 256). The ViT path uses
            the encoder's width.
        token_stride: CNN path only: input pixels per token (``None``: the finest target stage's stride).
    """

    # Long on purpose: assigns the parts in the official order, so the state-dict keys match the official model.
    def __init__(  # noqa: PLR0915
        self,
        encoder_name: str = "vit_base_patch14_reg4_dinov2",
        encoder_weights: str | Path | None = "pretrained",
        target_layers: list[int] | list[str] | None = None,
        fuse_layer_encoder: list[list[int]] | None = None,
        fuse_layer_decoder: list[list[int]] | None = None,
        decoder_depth: int = 8,
        bottleneck_dropout: float = 0.4,
        mask_ratio: float = 0.4,
        mask_at_inference: MaskAtInference | str = MaskAtInference.EXPECTATION,
        mask_granularity: MaskGranularity | str = MaskGranularity.ELEMENT,
        seg_base_width: int = 192,
        seg_output_size: int = 256,
        fusion_alpha: float = 0.7,
        max_ratio: float = 0.01,
        inference_dtype: str | torch.dtype | None = None,
        seg_channels_last: bool = False,
        decoder_dim: int | None = None,
        token_stride: int | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= fusion_alpha <= 1.0:
            msg = f"fusion_alpha must be in [0, 1], got {fusion_alpha}"
            raise ValueError(msg)
        if not 0.0 < max_ratio <= 1.0:
            msg = f"max_ratio must be in (0, 1], got {max_ratio}"
            raise ValueError(msg)
        self.inference_dtype = resolve_inference_dtype(inference_dtype)
        self.is_cnn = is_cnn_encoder(encoder_name)
        self.fusion_alpha = fusion_alpha
        self.max_ratio = max_ratio
        self.seg_output_size = seg_output_size
        bottleneck_args = {
            "dropout": bottleneck_dropout,
            "mask_ratio": mask_ratio,
            "mask_at_inference": mask_at_inference,
            "granularity": mask_granularity,
        }
        if self.is_cnn:
            self._build_cnn(encoder_name, encoder_weights, target_layers, token_stride, decoder_dim, decoder_depth)
            self._check_cnn_groups(fuse_layer_encoder, fuse_layer_decoder, decoder_depth)
            feature_dim = self.encoder.embed_dim
            self.bottleneck = MaskedNoisyBottleneck(
                dim=feature_dim, hidden_dim=self.decoder_dim * 4, out_dim=self.decoder_dim, **bottleneck_args
            )
            self.decoder = build_decoder(self.decoder_dim, self.decoder_dim // CNN_HEAD_DIM, decoder_depth)
            self.group_heads: GroupHeads | None = GroupHeads(self.decoder_dim, self.encoder.group_channels)
            seg_in_channels = feature_dim
            mean, std = self.encoder.image_mean, self.encoder.image_std
        else:
            if decoder_dim is not None or token_stride is not None:
                msg = "decoder_dim and token_stride apply to CNN encoders only (a ViT decodes at its own width/patch)"
                raise ValueError(msg)
            arch = dino_architecture(encoder_name)
            embed_dim, num_heads = arch["embed_dim"], arch["num_heads"]
            self.target_layers = list(target_layers) if target_layers is not None else arch["target_layers"]
            self.fuse_layer_encoder = _validate_groups(
                fuse_layer_encoder or DEFAULT_GROUPS, len(self.target_layers), "fuse_layer_encoder"
            )
            self.fuse_layer_decoder = _validate_groups(
                fuse_layer_decoder or DEFAULT_GROUPS, decoder_depth, "fuse_layer_decoder"
            )
            if len(self.fuse_layer_encoder) != len(self.fuse_layer_decoder):
                msg = "fuse_layer_encoder and fuse_layer_decoder must have the same number of groups"
                raise ValueError(msg)
            self.encoder = build_encoder(encoder_name, encoder_weights, self.target_layers)
            self.patch_size: int = self.encoder.patch_size
            self.num_prefix_tokens: int = self.encoder.num_prefix_tokens
            self.decoder_dim = embed_dim
            self.bottleneck = MaskedNoisyBottleneck(dim=embed_dim, hidden_dim=embed_dim * 4, **bottleneck_args)
            self.decoder = build_decoder(embed_dim, num_heads, decoder_depth)
            self.group_heads = None
            seg_in_channels = embed_dim * len(self.fuse_layer_encoder)
            mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
        self.seg_head = CrrSegHead(
            in_channels=seg_in_channels,
            base_width=seg_base_width,
            out_channels=2,
            output_size=seg_output_size,
            channels_last=seg_channels_last,
        )
        self.gaussian_blur = GaussianBlur2d(sigma=4, channels=1, kernel_size=5)
        self.register_buffer("image_mean", mean.clone(), persistent=False)
        self.register_buffer("image_std", std.clone(), persistent=False)
        # Whether stage II has trained the seg head. A buffer so it travels in checkpoints; mirrored in a
        # Python bool because a branch on a tensor value cannot be exported.
        self.register_buffer("seg_head_trained", torch.tensor(False))
        self._seg_active = False
        self.register_load_state_dict_post_hook(_sync_after_load)
        self._init_trainable_weights()

    def _build_cnn(
        self,
        encoder_name: str,
        encoder_weights: str | Path | None,
        target_layers: list | None,
        token_stride: int | None,
        decoder_dim: int | None,
        decoder_depth: int,
    ) -> None:
        """The CNN path's frozen encoder, groups (one per stage) and decoder width."""
        self.encoder = CnnGroupEncoder(encoder_name, encoder_weights, target_layers, token_stride)
        self.target_layers = list(self.encoder.layers)
        self.patch_size = self.encoder.patch_size
        self.num_prefix_tokens = 0
        self.decoder_dim = int(decoder_dim or DEFAULT_CNN_DECODER_DIM)
        if self.decoder_dim % CNN_HEAD_DIM:
            msg = f"decoder_dim={decoder_dim} must be a multiple of {CNN_HEAD_DIM} (the width of one attention head)"
            raise ValueError(msg)
        self.fuse_layer_encoder = [[group] for group in range(len(self.target_layers))]
        self.fuse_layer_decoder = even_groups(len(self.target_layers), decoder_depth)

    def _check_cnn_groups(
        self, fuse_layer_encoder: list | None, fuse_layer_decoder: list | None, decoder_depth: int
    ) -> None:
        """A CNN's groups are its stages; explicit decoder groups must match their number."""
        if fuse_layer_encoder is not None and fuse_layer_encoder != self.fuse_layer_encoder:
            msg = (
                f"fuse_layer_encoder={fuse_layer_encoder} does not apply to a CNN encoder: each target stage is one "
                f"group ({self.fuse_layer_encoder}); choose the stages with target_layers"
            )
            raise ValueError(msg)
        if fuse_layer_decoder is not None:
            groups = _validate_groups(fuse_layer_decoder, decoder_depth, "fuse_layer_decoder")
            if len(groups) != len(self.target_layers):
                msg = f"fuse_layer_decoder={fuse_layer_decoder} needs one group per target stage ({self.target_layers})"
                raise ValueError(msg)
            self.fuse_layer_decoder = groups

    def reconstruction_modules(self) -> list[nn.Module]:
        """What stage I trains: bottleneck, decoder and (CNN path) the per-group output heads."""
        modules: list[nn.Module] = [self.bottleneck, self.decoder]
        return [*modules, self.group_heads] if self.group_heads is not None else modules

    def _init_trainable_weights(self) -> None:
        """Official init of bottleneck and decoder: Linear trunc_normal(0.01, ±0.03), bias 0; LayerNorm 1/0."""
        for module in (module for part in self.reconstruction_modules() for module in part.modules()):
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.01, a=-0.03, b=0.03)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ state of the seg head
    def sync_seg_state(self) -> None:
        """Refresh the Python mirror of ``seg_head_trained`` (after loading a state dict)."""
        self._seg_active = bool(self.seg_head_trained)

    @property
    def seg_head_active(self) -> bool:
        """Whether inference fuses the seg head's map (stage II has started)."""
        return self._seg_active

    def mark_seg_head_trained(self) -> None:
        """Switch inference to the fused map; called when stage II starts updating the seg head."""
        self.seg_head_trained.fill_(True)
        self._seg_active = True

    # ------------------------------------------------------------------ features
    def check_input_size(self, height: int, width: int) -> None:
        """Raise if the image does not tile into whole patches."""
        if height % self.patch_size or width % self.patch_size:
            msg = (
                f"Input size {height}x{width} is not a multiple of the encoder patch size {self.patch_size}: "
                f"use a crop size such as {max(1, height // self.patch_size) * self.patch_size} "
                "(CRR.configure_pre_processor(crop_size=...))."
            )
            raise ValueError(msg)

    def encode(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Normalise [0, 1] images and return the frozen encoder's targets.

        ViT: the target blocks' tokens, each (B, N, C). CNN: the target stages on the token grid, each
        (B, C_g, h, w), already one group each.
        """
        self.check_input_size(images.shape[-2], images.shape[-1])
        images = (images - self.image_mean) / self.image_std
        dtype = next(self.encoder.parameters()).dtype
        if self.is_cnn:
            return self.encoder(images.to(dtype))
        features = self.encoder(images.to(dtype))
        return [features[f"blocks.{index}"] for index in self.target_layers]

    def decode(self, encoder_tokens: list[torch.Tensor]) -> list[torch.Tensor]:
        """Fuse, mask and restore the encoder tokens; returns decoder block outputs, deepest first.

        ViT: the fused tokens are the mean of the target blocks. CNN: the concatenation of the stages' channels.
        """
        fused = torch.cat(encoder_tokens, dim=-1) if self.is_cnn else torch.stack(encoder_tokens, dim=1).mean(dim=1)
        x = self.bottleneck(fused)
        outputs = []
        for block in self.decoder:
            x = block(x)
            outputs.append(x)
        return outputs[::-1]

    def _groups(self, tokens: list[torch.Tensor], groups: list[list[int]], grid: tuple[int, int]) -> list[torch.Tensor]:
        maps = []
        for group in groups:
            fused = torch.stack([tokens[index] for index in group], dim=1).mean(dim=1)
            patches = fused[:, self.num_prefix_tokens :, :]
            maps.append(patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], *grid))
        return maps

    def extract_features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Return the grouped encoder and decoder feature maps ``E_g``, ``D_g``, each (B, C, h, w)."""
        if self.is_cnn:
            return self._extract_cnn_features(images)
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        encoder_tokens = self.encode(images)
        decoder_tokens = self.decode(encoder_tokens)
        encoder_maps = self._groups(encoder_tokens, self.fuse_layer_encoder, grid)
        decoder_maps = self._groups(decoder_tokens, self.fuse_layer_decoder, grid)
        return encoder_maps, decoder_maps

    def _extract_cnn_features(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """CNN path: ``E_g`` are the stages on the grid; ``D_g`` = head_g(mean of the group's decoder outputs)."""
        encoder_maps = self.encode(images)
        batch, _, height, width = encoder_maps[0].shape
        decoder_tokens = self.decode([feature.flatten(2).transpose(1, 2) for feature in encoder_maps])
        grouped = [
            torch.stack([decoder_tokens[index] for index in group], dim=1).mean(dim=1)
            for group in self.fuse_layer_decoder
        ]
        assert self.group_heads is not None
        decoder_maps = [
            tokens.transpose(1, 2).reshape(batch, tokens.shape[-1], height, width)
            for tokens in self.group_heads(grouped)
        ]
        return encoder_maps, decoder_maps

    @staticmethod
    def segmentation_input(encoder_maps: list[torch.Tensor], decoder_maps: list[torch.Tensor]) -> torch.Tensor:
        """``S = concat_g[−norm(E_g)·norm(D_g)]`` (:func:`~.components.fusion.segmentation_input`)."""
        return segmentation_input(encoder_maps, decoder_maps)

    def segment(self, encoder_maps: list[torch.Tensor], decoder_maps: list[torch.Tensor]) -> torch.Tensor:
        """Segmentation logits (B, 2, S, S) from the grouped features (float32 also under ``inference_dtype``)."""
        seg_input = self.segmentation_input(encoder_maps, decoder_maps)
        with self.inference_autocast(seg_input):
            return self.seg_head(seg_input).float()

    def inference_autocast(self, reference: torch.Tensor) -> contextlib.AbstractContextManager:
        """Autocast to ``inference_dtype`` in eval forwards; a no-op in training, in export and in float32."""
        if self.training or self.inference_dtype is None or torch.compiler.is_exporting():
            return contextlib.nullcontext()
        return torch.autocast(device_type=reference.device.type, dtype=self.inference_dtype)

    # ------------------------------------------------------------------ maps and scores
    def reconstruction_map(self, encoder_maps: list[torch.Tensor], decoder_maps: list[torch.Tensor]) -> torch.Tensor:
        """``A_rec`` at the seg size (B, 1, S, S) (:func:`~.components.fusion.reconstruction_map`)."""
        return reconstruction_map(encoder_maps, decoder_maps, (self.seg_output_size, self.seg_output_size))

    def fused_map(self, encoder_maps: list[torch.Tensor], decoder_maps: list[torch.Tensor]) -> torch.Tensor:
        """``α·A_rec + (1 − α)·A_seg`` before smoothing; ``A_rec`` alone until stage II has started."""
        alpha = self.fusion_alpha if self._seg_active else 1.0
        if alpha == 1.0:
            return self.reconstruction_map(encoder_maps, decoder_maps)
        seg_map = torch.softmax(self.segment(encoder_maps, decoder_maps), dim=1)[:, 1:2]
        if alpha == 0.0:
            return seg_map
        return fuse_maps(self.reconstruction_map(encoder_maps, decoder_maps), seg_map, alpha)

    def score(self, smoothed_map: torch.Tensor) -> torch.Tensor:
        """Image score: mean of the top ``max_ratio`` fraction of the smoothed map's values (B,)."""
        return top_fraction_score(smoothed_map, self.max_ratio)

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]] | InferenceBatch:
        """Training: grouped features ``(E, D)`` for the losses. Eval: ``InferenceBatch(pred_score, anomaly_map)``.

        Args:
            images: Images in [0, 1], (B, 3, H, W), H and W multiples of the patch size.
        """
        if self.training:
            return self.extract_features(images)
        with self.inference_autocast(images):
            encoder_maps, decoder_maps = self.extract_features(images)
        # Maps, fusion and score in float32: 1 − cos of nearly equal bf16 vectors would lose most digits.
        encoder_maps = [feature.float() for feature in encoder_maps]
        decoder_maps = [feature.float() for feature in decoder_maps]
        smoothed = self.gaussian_blur(self.fused_map(encoder_maps, decoder_maps).float())
        pred_score = self.score(smoothed)
        anomaly_map = F.interpolate(smoothed, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return InferenceBatch(pred_score=pred_score, anomaly_map=anomaly_map)
