# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Losses of CRR's two training stages.

Stage I (reconstruction + repair): ``L_I = L_gc(E(x), D(x)) + L_gc(E(x), D(x̃))`` where ``L_gc`` is
Dinomaly's global cosine loss with hard mining (anomalib's ``CosineHardMiningLoss``) and the target
is always the *clean* image's encoder features, detached: the decoder learns to reconstruct normal
features and to repair synthetic defects back to normal ones.

Stage II (segmentation): focal loss (γ = 2, no α) with label smoothing 1e-5 between the seg head's
softmax and the synthetic mask, as in DRAEM and the official CRR code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812
from anomalib.models.image.dinomaly.components import CosineHardMiningLoss
from torch import nn


class CrrReconstructionRepairLoss(nn.Module):
    """Stage-I loss: reconstruction term plus repair term, weighted 1:1.

    Args:
        p_final: Final fraction of well-reconstructed points whose gradient is scaled down.
        p_schedule_steps: Steps over which that fraction ramps up linearly from 0.
        factor: Gradient factor for the well-reconstructed points.
    """

    def __init__(self, p_final: float = 0.9, p_schedule_steps: int = 1000, factor: float = 0.1) -> None:
        super().__init__()
        self.cosine_loss = CosineHardMiningLoss(p_final=p_final, p_schedule_steps=p_schedule_steps, factor=factor)

    def reconstruction(
        self,
        clean_encoder: list[torch.Tensor],
        decoder: list[torch.Tensor],
        step: int,
    ) -> torch.Tensor:
        """Hard-mined global cosine loss of ``decoder`` against the detached clean encoder features.

        Features are cast to float32 (a no-op in float32 training): in fp16, ``CosineSimilarity``'s eps
        rounds to 0 (a zero feature vector gives NaN) and the squared norms of flattened maps overflow.
        """
        return self.cosine_loss(
            encoder_features=[feature.detach().float() for feature in clean_encoder],
            decoder_features=[feature.float() for feature in decoder],
            global_step=step,
        )

    def forward(
        self,
        clean_encoder: list[torch.Tensor],
        clean_decoder: list[torch.Tensor],
        repaired_decoder: list[torch.Tensor],
        step: int,
    ) -> torch.Tensor:
        """``L_gc(E(x), D(x)) + L_gc(E(x), D(x̃))``.

        Args:
            clean_encoder: Grouped encoder maps of the clean images ``E(x)``.
            clean_decoder: Grouped decoder maps of the clean images ``D(x)``.
            repaired_decoder: Grouped decoder maps of the synthetic-anomaly images ``D(x̃)``.
            step: Stage-I step, drives the hard-mining schedule.
        """
        return self.reconstruction(clean_encoder, clean_decoder, step) + self.reconstruction(
            clean_encoder, repaired_decoder, step
        )


class CrrFocalLoss(nn.Module):
    """Focal loss ``−mean((1 − p_t)^γ log p_t)`` on softmax probabilities with one-hot label smoothing.

    ``p_t = Σ_c y_c P_c + smooth`` with ``y`` the one-hot target clamped to ``[smooth, 1 − smooth]``.

    Args:
        gamma: Focusing parameter.
        smooth: Label smoothing and log guard.
    """

    def __init__(self, gamma: float = 2.0, smooth: float = 1e-5) -> None:
        super().__init__()
        self.gamma = gamma
        self.smooth = smooth

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            logits: Class logits (B, K, H, W).
            target: Integer class map (B, H, W) or (B, 1, H, W), values in [0, K).
        """
        probabilities = torch.softmax(logits.float(), dim=1)
        target = target.long().view(logits.shape[0], *logits.shape[2:])
        one_hot = F.one_hot(target, num_classes=logits.shape[1]).permute(0, 3, 1, 2).float()
        one_hot = one_hot.clamp(self.smooth, 1.0 - self.smooth)
        p_t = (one_hot * probabilities).sum(dim=1) + self.smooth
        return (-((1 - p_t) ** self.gamma) * p_t.log()).mean()
