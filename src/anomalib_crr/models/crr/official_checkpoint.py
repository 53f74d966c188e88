# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Load the checkpoints released with the official CRR-MUAD code into :class:`CrrModel`.

The official code (https://github.com/Qiqigeww/CRR-MUAD) saves two plain ``state_dict`` files:

* the stage-I model (``ViTill``; released as ``dinov2_vitb14_reg4_pretrain.pth``, a misleading name), with
  ``encoder.*`` (the frozen DINOv2-R ViT in Meta's own key layout, all 12 blocks), ``bottleneck.0.*``
  (``bMlp6``: ``fc1``, ``fc2``) and ``decoder.<i>.*`` (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``,
  ``mlp.fc1``, ``mlp.fc2``);
* the segmentation network (``DecoderReconstructive``; released as ``Seg_model_7999.pth``) with
  ``up<k>.1`` (conv) / ``up<k>.2`` (BatchNorm) after an ``nn.Upsample`` at index 0, ``db<k>.{0,1,3,4}``
  (conv, BN, conv, BN) for k = 1..4, and ``fin_out.0`` (conv).

Key names are remapped to ours; the encoder part goes through timm's DINOv2 converter (``register_tokens``,
the class-token position embedding) and the blocks CRR prunes are dropped. Any key the model needs but the
file lacks, any key the file has but the model does not, and any shape difference refuse the file, naming
it and the first mismatches in the official names.

:class:`OfficialCheckpoint` is the glue ``CRR`` uses: it reads the files once at construction (the
``official_checkpoint`` / ``official_seg_checkpoint`` arguments, so every CLI subcommand can rebuild the model
from its init arguments), decides whether the encoder must still be downloaded, loads the weights and says how
many training steps the files stand for (stage I done; both stages with the segmentation file).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from .components.cnn_encoder import is_cnn_encoder
from .components.encoder import timm_checkpoint_filter

if TYPE_CHECKING:
    from .torch_model import CrrModel

MAX_LISTED = 5
_UP = re.compile(r"^up(\d)\.([12])\.(.+)$")
_DB = re.compile(r"^db(\d)\.([0134])\.(.+)$")
_FIN = re.compile(r"^fin_out\.0\.(.+)$")
_BOTTLENECK = re.compile(r"^bottleneck\.0\.(fc[12]\..+)$")
_DECODER = re.compile(r"^decoder\.(\d+)\.(.+)$")
ModelT = TypeVar("ModelT")  # CRR, without importing it (it imports this module)


def read_official_state_dict(path: str | Path, role: str) -> dict[str, torch.Tensor]:
    """Read a plain ``state_dict`` file (``torch.save(model.state_dict())``), without unpickling code.

    A ``module.`` prefix (``DataParallel``) is removed.

    Args:
        path: The file.
        role: What the file should be (for messages), e.g. ``"model"`` or ``"segmentation"``.

    Raises:
        FileNotFoundError: If the file does not exist.
        ValueError: If it cannot be read or holds no tensor state dict.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        msg = f"Official CRR {role} checkpoint not found: '{path}'"
        raise FileNotFoundError(msg)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        msg = f"Could not read the official CRR {role} checkpoint '{path}': {type(exc).__name__}: {exc}"
        raise ValueError(msg) from exc
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        msg = f"'{path}' is not a state dict of tensors (expected the official CRR {role} checkpoint)"
        raise ValueError(msg)
    if all(key.startswith("module.") for key in state):
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def official_seg_key(key: str) -> str | None:
    """Our ``seg_head`` key for an official ``DecoderReconstructive`` key (``None`` if it has no counterpart)."""
    if match := _UP.match(key):
        stage, index, rest = int(match.group(1)), int(match.group(2)), match.group(3)
        return f"seg_head.stages.{2 * (stage - 1)}.conv.{index - 1}.{rest}"
    if match := _DB.match(key):
        stage, index, rest = int(match.group(1)), match.group(2), match.group(3)
        return f"seg_head.stages.{2 * (stage - 1) + 1}.{index}.{rest}"
    if match := _FIN.match(key):
        return f"seg_head.fin_out.{match.group(1)}"
    return None


def official_model_key(key: str) -> str | None:
    """Our key for an official ``ViTill`` bottleneck/decoder key (``None`` for others, encoder keys included)."""
    if match := _BOTTLENECK.match(key):
        return f"bottleneck.mlp.{match.group(1)}"
    if _DECODER.match(key):
        return key
    return None


def _convert_encoder(official: dict[str, torch.Tensor], model: CrrModel) -> dict[str, torch.Tensor]:
    """Meta's DINOv2 keys (``encoder.`` stripped) → our pruned timm encoder's keys, through timm's converter."""
    vit = model.encoder.feature_extractor
    converted = timm_checkpoint_filter(vit)(dict(official), vit)
    depth = len(vit.blocks)
    kept = {}
    for key, value in converted.items():
        if (match := re.match(r"^blocks\.(\d+)\.", key)) and int(match.group(1)) >= depth:
            continue  # blocks after the deepest target layer: pruned in CRR
        if key.startswith(("norm.", "head.", "fc_norm.", "mask_token")):
            continue  # final norm/head are pruned; the mask token is only used in DINOv2 pre-training
        kept[f"encoder.feature_extractor.{key}"] = value
    return kept


def _mismatches(
    converted: dict[str, torch.Tensor],
    official_names: dict[str, str],
    unmapped: list[str],
    expected: dict[str, torch.Tensor],
) -> list[str]:
    """Missing keys, unexpected keys and shape differences, in official names where there are any."""
    problems = [f"unexpected key '{key}'" for key in unmapped]
    problems += [f"unexpected key '{official_names.get(key, key)}'" for key in converted if key not in expected]
    problems += [
        f"'{official_names.get(key, key)}' has shape {tuple(converted[key].shape)}, CRR expects {tuple(value.shape)}"
        for key, value in expected.items()
        if key in converted and converted[key].shape != value.shape
    ]
    problems += [f"missing key for CRR's '{key}'" for key in expected if key not in converted]
    return problems


def _refuse(path: Path, role: str, problems: list[str], total: int) -> None:
    listed = "; ".join(problems[:MAX_LISTED])
    more = f" (and {len(problems) - MAX_LISTED} more)" if len(problems) > MAX_LISTED else ""
    msg = (
        f"'{path}' does not match this CRR model as an official CRR-MUAD {role} checkpoint: {len(problems)} of "
        f"{total} keys differ: {listed}{more}. The released checkpoints are for ViT-B/14 DINOv2-R "
        "(encoder_name='vit_base_patch14_reg4_dinov2'), 8 decoder blocks and seg_base_width=192 (the defaults)."
    )
    raise ValueError(msg)


def convert_official_checkpoint(
    model: CrrModel,
    model_state: dict[str, torch.Tensor],
    seg_state: dict[str, torch.Tensor] | None = None,
    model_path: str | Path = "<model state dict>",
    seg_path: str | Path = "<segmentation state dict>",
) -> dict[str, torch.Tensor]:
    """Remap official state dicts to ``model``'s keys, refusing any key or shape mismatch.

    Args:
        model: The CRR network the weights are for (its architecture decides the expected keys/shapes).
        model_state: The official stage-I ``ViTill`` state dict (``encoder.*`` optional).
        seg_state: The official ``DecoderReconstructive`` state dict, or ``None``.
        model_path: Name of the model file, for messages.
        seg_path: Name of the segmentation file, for messages.

    Returns:
        A partial state dict of ``model``: bottleneck and decoder, the encoder when ``model_state`` has it,
        the segmentation head when ``seg_state`` is given.

    Raises:
        ValueError: If a file's keys or shapes do not match, naming the file and the first mismatches.
    """
    ours = model.state_dict()
    converted: dict[str, torch.Tensor] = {}
    names: dict[str, str] = {}
    unmapped: list[str] = []
    encoder_state = {k.removeprefix("encoder."): v for k, v in model_state.items() if k.startswith("encoder.")}
    for key, value in model_state.items():
        if key.startswith("encoder."):
            continue
        if (target := official_model_key(key)) is None:
            unmapped.append(key)
        else:
            converted[target], names[target] = value, key
    expected = {k: v for k, v in ours.items() if k.startswith(("bottleneck.", "decoder."))}
    if encoder_state:
        try:
            encoder = _convert_encoder(encoder_state, model)
        except Exception as exc:  # timm's converter fails on shapes it cannot resample
            unmapped.append(f"encoder.* ({type(exc).__name__}: {exc})")
            encoder = {}
        converted.update(encoder)
        names.update({key: "encoder." + key.removeprefix("encoder.feature_extractor.") for key in encoder})
        expected.update({k: v for k, v in ours.items() if k.startswith("encoder.")})
    if problems := _mismatches(converted, names, unmapped, expected):
        _refuse(Path(model_path), "model (stage I)", problems, len(model_state))

    if seg_state is not None:
        seg_converted: dict[str, torch.Tensor] = {}
        seg_names: dict[str, str] = {}
        seg_unmapped = []
        for key, value in seg_state.items():
            if (target := official_seg_key(key)) is None:
                seg_unmapped.append(key)
            else:
                seg_converted[target], seg_names[target] = value, key
        seg_expected = {k: v for k, v in ours.items() if k.startswith("seg_head.")}
        if problems := _mismatches(seg_converted, seg_names, seg_unmapped, seg_expected):
            _refuse(Path(seg_path), "segmentation", problems, len(seg_state))
        converted.update(seg_converted)
    return converted


class OfficialCheckpoint:
    """The official files, read once: whether they embed the encoder decides if CRR must fetch DINOv2 weights.

    Args:
        model_path: The official stage-I model file.
        seg_path: The official segmentation-network file, or ``None``.
    """

    def __init__(self, model_path: str | Path, seg_path: str | Path | None = None) -> None:
        self.model_path = Path(model_path).expanduser()
        self.seg_path = None if seg_path is None else Path(seg_path).expanduser()
        self.model_state = read_official_state_dict(self.model_path, "model (stage I)")
        self.seg_state = read_official_state_dict(self.seg_path, "segmentation") if self.seg_path else None

    @classmethod
    def from_paths(cls, model_path: str | Path | None, seg_path: str | Path | None) -> OfficialCheckpoint | None:
        """``None`` when no official file is given; a segmentation file alone is refused."""
        if model_path is None:
            if seg_path is not None:
                msg = (
                    f"official_seg_checkpoint '{seg_path}' needs official_checkpoint (the stage-I model file): the "
                    "segmentation head reads the features of that model's decoder."
                )
                raise ValueError(msg)
            return None
        return cls(model_path, seg_path)

    @classmethod
    def for_encoder(
        cls, model_path: str | Path | None, seg_path: str | Path | None, encoder_name: str
    ) -> OfficialCheckpoint | None:
        """:meth:`from_paths`, refusing the files for a CNN-encoder CRR (they hold a DINOv2 ViT-B CRR).

        Raises:
            ValueError: If files are given for a CNN encoder (after they were read, so a missing file is named
                first).
        """
        official = cls.from_paths(model_path, seg_path)
        if official is not None and is_cnn_encoder(encoder_name):
            msg = "official_checkpoint holds a DINOv2 ViT-B CRR; it cannot be loaded into a CNN-encoder CRR"
            raise ValueError(msg)
        return official

    @property
    def has_encoder(self) -> bool:
        """Whether the model file embeds the (frozen DINOv2) encoder weights."""
        return any(key.startswith("encoder.") for key in self.model_state)

    def steps_done(self, stage1_steps: int, stage2_steps: int) -> int:
        """Training steps the files stand for: stage I is done, and stage II too when the seg file is given.

        ``CRR`` starts its step counter there, so a ``fit`` continues with the stage that is still missing.
        """
        return stage1_steps + stage2_steps if self.seg_state is not None else stage1_steps

    def load_into(self, model: CrrModel) -> None:
        """Remap, check and load into ``model``; with a segmentation file, inference fuses the seg map."""
        converted = convert_official_checkpoint(
            model, self.model_state, self.seg_state, self.model_path, self.seg_path or ""
        )
        model.load_state_dict(converted, strict=False)
        if self.seg_state is not None:
            model.mark_seg_head_trained()


def encoder_weights_for(official: OfficialCheckpoint | None, encoder_weights: str | Path | None) -> str | Path | None:
    """The encoder weights to build with: none when the official model file embeds the encoder (no download)."""
    return None if official is not None and official.has_encoder else encoder_weights


def from_official_checkpoint(
    cls: Callable[..., ModelT],
    model_path: str | Path,
    seg_path: str | Path | None = None,
    **kwargs: Any,
) -> ModelT:
    """Build CRR from the checkpoints released with the official CRR-MUAD code (``CRR.from_official_checkpoint``).

    The official names are remapped to ours (``bottleneck.0.fc1`` → ``bottleneck.mlp.fc1``, ``up2.1`` →
    ``seg_head.stages.2.conv.0``, ...); the frozen encoder comes from the DINOv2 weights embedded in the
    model file (or, if a file lacks them, from ``encoder_weights``). A file whose keys or shapes do not
    match the model is refused with a message naming it and the first mismatches. The released files are
    for the defaults (ViT-B/14 DINOv2-R, 8 decoder blocks, ``seg_base_width=192``, Resize 448 → crop 392).
    The result has no thresholds yet: run ``Engine.validate`` (or ``fit`` with more steps) on normal data
    before ``predict``. CLI: ``--model.official_checkpoint FILE --model.official_seg_checkpoint FILE`` (the same
    two init arguments this builds with, so every subcommand can rebuild the model).

    Args:
        cls: ``CRR`` (or a subclass): this function is bound as its classmethod.
        model_path: The stage-I model file (``ViTill`` state dict).
        seg_path: The segmentation-network file; ``None`` leaves the head untrained (reconstruction map only).
        **kwargs: Other ``CRR`` arguments (e.g. ``mask_at_inference="random"`` for the official stochastic
            inference, ``inference_dtype``).

    Example:
        >>> model = CRR.from_official_checkpoint(  # doctest: +SKIP
        ...     "dinov2_vitb14_reg4_pretrain.pth", "Seg_model_7999.pth", stage1_steps=50_000)
    """
    return cls(official_checkpoint=model_path, official_seg_checkpoint=seg_path, **kwargs)
