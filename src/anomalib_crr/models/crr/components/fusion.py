# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""From grouped encoder and decoder features to CRR's maps and image score (paper Sec. 3.3-3.4).

* ``A_rec``: the mean over groups of ``1 − cos(E_g, D_g)``, upsampled to the segmentation output size;
* the segmentation head's input ``S = concat_g[−norm(E_g)·norm(D_g)]`` (per group, its channel sum is
  ``−cos(E_g, D_g)``);
* the fused map ``α·A_rec + (1 − α)·A_seg``;
* the image score: the mean of the top ``max_ratio`` fraction of the smoothed map.

Pure functions of tensors: the torch model (:class:`~anomalib_crr.models.crr.torch_model.CrrModel`) calls them, the
ablation benchmark and the official-equivalence harness can call them on their own features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

L2_EPS = 1e-12


def segmentation_input(encoder_maps: list[torch.Tensor], decoder_maps: list[torch.Tensor]) -> torch.Tensor:
    """``S = concat_g[−norm(E_g)·norm(D_g)]`` (the encoder side detached: stage II never moves the encoder)."""
    products = []
    for encoder_map, decoder_map in zip(encoder_maps, decoder_maps, strict=True):
        # Norms in float32: in fp16, L2_EPS rounds to 0 and a squared-norm sum can overflow.
        encoder_norm = torch.linalg.vector_norm(encoder_map.detach(), dim=1, keepdim=True, dtype=torch.float32)
        decoder_norm = torch.linalg.vector_norm(decoder_map, dim=1, keepdim=True, dtype=torch.float32)
        encoder_unit = encoder_map.detach() / (encoder_norm + L2_EPS)
        decoder_unit = decoder_map / (decoder_norm + L2_EPS)
        products.append(-encoder_unit * decoder_unit)
    return torch.cat(products, dim=1)


def reconstruction_map(
    encoder_maps: list[torch.Tensor], decoder_maps: list[torch.Tensor], size: tuple[int, int]
) -> torch.Tensor:
    """``A_rec``: mean over groups of ``1 − cos(E_g, D_g)``, bilinearly upsampled to ``size`` (B, 1, *size)."""
    maps = [
        F.interpolate(
            (1 - F.cosine_similarity(encoder_map, decoder_map, dim=1)).unsqueeze(1),
            size=size,
            mode="bilinear",
            align_corners=True,
        )
        for encoder_map, decoder_map in zip(encoder_maps, decoder_maps, strict=True)
    ]
    return torch.stack(maps, dim=0).mean(dim=0)


def fuse_maps(reconstruction: torch.Tensor, segmentation: torch.Tensor, alpha: float) -> torch.Tensor:
    """``α·A_rec + (1 − α)·A_seg`` (``A_seg``: the anomaly-class probability of the segmentation head)."""
    return alpha * reconstruction + (1 - alpha) * segmentation


def top_fraction_score(smoothed_map: torch.Tensor, max_ratio: float) -> torch.Tensor:
    """Image score: mean of the top ``max_ratio`` fraction of each map's values (B,)."""
    flat = smoothed_map.flatten(1)
    k = max(1, int(flat.shape[1] * max_ratio))
    return flat.topk(k, dim=1).values.mean(dim=1)
