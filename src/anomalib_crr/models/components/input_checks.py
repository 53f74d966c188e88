# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Clear errors for inputs a model cannot use: non-finite image tensors and checkpoints of another model.

Without these checks a NaN pixel turns every score and map into NaN (the post-processor then labels the
image normal or anomalous at random), and loading a checkpoint of another model, or of the same model
with another encoder or width, ends in Lightning's list of hundreds of missing keys and tensor shapes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

MAX_LISTED = 5


class CheckpointMismatchError(ValueError):
    """A checkpoint's weights do not fit the model they are loaded into."""


#: The checkpoint hyper-parameter enums of every plugin model, filled by :func:`register_checkpoint_safe_globals`
#: (each model registers its own at import), so that this shared module never imports a concrete model.
_PLUGIN_SAFE_GLOBALS: list[Any] = []


def register_checkpoint_safe_globals(objects: Sequence[Any]) -> None:
    """Declare a model's checkpoint enums to :func:`allow_plugin_enums` (called once per model class at import)."""
    _PLUGIN_SAFE_GLOBALS.extend(item for item in objects if item not in _PLUGIN_SAFE_GLOBALS)


def allow_plugin_enums() -> None:
    """Let ``weights_only`` loading read the hyper-parameter enums of *every* plugin model.

    Each model lists only its own enums in ``checkpoint_safe_globals``, so loading a CRR checkpoint into MFRNet
    (or the reverse) failed with torch's ``Unsupported global`` message before any check could say which model
    wrote the file. Enums are safe to allowlist: unpickling one only looks a member up by value.
    """
    torch.serialization.add_safe_globals(list(_PLUGIN_SAFE_GLOBALS))


def _groups(keys: Any) -> list[str]:
    """The distinct ``a.b`` prefixes of parameter names, e.g. ``model.encoder``, ``model.aggregator``."""
    return sorted({".".join(key.split(".")[:2]) for key in keys})


def describe_state_dict_mismatch(model: torch.nn.Module, state_dict: Mapping[str, Any]) -> str | None:
    """What differs between ``model``'s own state dict and ``state_dict``; ``None`` when they fit exactly."""
    own = model.state_dict()
    missing = [key for key in own if key not in state_dict]
    unexpected = [key for key in state_dict if key not in own]
    reshaped = [
        f"{key} {tuple(state_dict[key].shape)} in the checkpoint, {tuple(value.shape)} in the model"
        for key, value in own.items()
        if key in state_dict and hasattr(state_dict[key], "shape") and state_dict[key].shape != value.shape
    ]
    if not (missing or unexpected or reshaped):
        return None
    lines = []
    if len(missing) == len(own) or (missing and unexpected and len(missing) > len(own) // 2):
        lines.append(
            f"the checkpoint holds none or few of {type(model).__name__}'s weights; it looks like another model "
            f"(its weight groups: {', '.join(_groups(state_dict)[:8])}; expected: {', '.join(_groups(own)[:8])})"
        )
    if reshaped:
        lines.append(
            f"{len(reshaped)} weights have other shapes (another encoder, backbone or width?): "
            + "; ".join(reshaped[:MAX_LISTED])
        )
    if missing:
        lines.append(f"{len(missing)} weights missing, e.g. {', '.join(missing[:MAX_LISTED])}")
    if unexpected:
        lines.append(f"{len(unexpected)} unexpected weights, e.g. {', '.join(unexpected[:MAX_LISTED])}")
    return "; ".join(lines)


class ChecksInputs:
    """Mixin for ``AnomalibModule`` subclasses: reject non-finite images and explain checkpoint mismatches."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Register the subclass's ``checkpoint_safe_globals`` enums for :func:`allow_plugin_enums`."""
        super().__init_subclass__(**kwargs)
        declared = getattr(cls, "checkpoint_safe_globals", None)
        if callable(declared):
            register_checkpoint_safe_globals(declared())

    def forward(self, batch: torch.Tensor, *args, **kwargs) -> Any:
        """The anomalib forward (pre-processor, model, post-processor) after checking that ``batch`` is finite.

        Skipped while exporting (a data-dependent ``if`` cannot be exported); exported models are fed by
        the inferencers, which read images from files.

        Raises:
            ValueError: If ``batch`` holds NaN or infinite values.
        """
        exporting = torch.compiler.is_exporting() or torch.compiler.is_compiling() or torch.jit.is_tracing()
        if isinstance(batch, torch.Tensor) and not exporting and batch.is_floating_point():
            finite = torch.isfinite(batch)
            if not bool(finite.all()):
                bad = (~finite).flatten(1).any(dim=1).nonzero().flatten().tolist()
                msg = (
                    f"{type(self).__name__} got an input of shape {tuple(batch.shape)} with "
                    f"{int(torch.isnan(batch).sum())} NaN and {int(torch.isinf(batch).sum())} infinite values "
                    f"(batch indices {bad[:MAX_LISTED]}); scores and maps would be NaN. Images must be finite "
                    "floats in [0, 1]."
                )
                raise ValueError(msg)
        return super().forward(batch, *args, **kwargs)  # type: ignore[misc]

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load weights; a strict load that does not fit raises :class:`CheckpointMismatchError` naming the file.

        The file is known when the trainer loads it (``Engine.fit/test/predict(ckpt_path=...)``, CLI
        ``--ckpt_path``); ``load_from_checkpoint`` adds it to the message itself.
        """
        if strict:
            problem = describe_state_dict_mismatch(self, state_dict)  # type: ignore[arg-type]
            if problem is not None:
                trainer = getattr(self, "_trainer", None)
                path = getattr(trainer, "ckpt_path", None) if trainer is not None else None
                source = f"Checkpoint {path}" if path else "The checkpoint"
                msg = (
                    f"{source} does not fit this {type(self).__name__}: {problem}. Build the model from the "
                    f"checkpoint ({type(self).__name__}.load_from_checkpoint(path)) or with the training run's "
                    "arguments (CLI: --config <run>/config.yaml)."
                )
                raise CheckpointMismatchError(msg)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)  # type: ignore[misc]

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args, **kwargs) -> Any:
        """The anomalib ``load_from_checkpoint`` (``weights_only``); a mismatch error names the file."""
        allow_plugin_enums()
        try:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)  # type: ignore[misc]
        except CheckpointMismatchError as exc:
            message = str(exc).replace("The checkpoint", f"Checkpoint {checkpoint_path}", 1)
            raise CheckpointMismatchError(message) from None
