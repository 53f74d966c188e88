# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""``PluginModule``: what CRR and MFRNet do the same way, written once.

Both are one-class ``AnomalibModule`` subclasses with the plugin's export defaults (:mod:`anomalib_crr.deploy.export`)
and its fit-end validation, resume and input checks (:class:`~.components.ValidatesAtFitEnd`). On top of those, this
base holds the behaviour that was written twice, word for word: the validation step, the learning type, the
pre-processor check that rejects ``Normalize``, and checkpoint loading that never downloads weights.

Each model *declares* what differs, as class attributes, instead of overriding:

* ``checkpoint_enums``: enums its saved hyper-parameters may hold (registered for ``weights_only`` loading of every
  plugin checkpoint, see :func:`~.components.input_checks.allow_plugin_enums`);
* ``checkpoint_load_defaults``: init arguments ``load_from_checkpoint`` sets unless given (weights sources set to
  ``None``: the checkpoint holds the weights);
* ``normalize_reason``: why its pre-processor must not normalise (the model applies its encoder's statistics).

It lives in ``models`` (not ``models/components``) because it inherits the export mixins from ``deploy``: shared
components never import ``deploy``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from anomalib import LearningType
from anomalib.data import Batch
from anomalib.pre_processing import PreProcessor
from lightning.pytorch.utilities.types import STEP_OUTPUT
from torchvision.transforms.v2 import Normalize, Transform

from anomalib_crr.deploy.export import Opset18OnnxExport

from .components import ValidatesAtFitEnd, flatten_transforms


class PluginModule(Opset18OnnxExport, ValidatesAtFitEnd):
    """Shared base of the plugin's Lightning modules (see the module docstring).

    A mixin, not an ``AnomalibModule`` subclass: each model still names ``AnomalibModule`` as a direct base
    (``class CRR(PluginModule, AnomalibModule)``), because anomalib finds models through
    ``AnomalibModule.__subclasses__()``, which lists direct subclasses only (``get_model("crr")``, ``--model CRR``).
    """

    checkpoint_enums: ClassVar[tuple[Any, ...]] = ()
    checkpoint_load_defaults: ClassVar[dict[str, Any]] = {}
    normalize_reason: ClassVar[str] = "the model normalises images itself."

    @classmethod
    def checkpoint_safe_globals(cls) -> Sequence[Any]:
        """Enums that may appear in saved hyper-parameters (``checkpoint_enums``)."""
        return tuple(cls.checkpoint_enums)

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: str | Path, *args, **kwargs) -> Any:  # type: ignore[override]
        """Rebuild from a checkpoint with ``checkpoint_load_defaults`` (no download: the checkpoint has the weights)."""
        for name, value in cls.checkpoint_load_defaults.items():
            kwargs.setdefault(name, value)
        return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)

    @property
    def learning_type(self) -> LearningType:
        """Both models learn from normal images only."""
        return LearningType.ONE_CLASS

    def pre_processor_transforms(self) -> list[Transform] | None:
        """The pre-processor's leaf transforms, after rejecting ``Normalize``; ``None`` for a custom pre-processor.

        Raises:
            ValueError: If the pre-processor normalises, naming the model and ``normalize_reason``.
        """
        if not isinstance(self.pre_processor, PreProcessor):
            return None
        transforms = list(flatten_transforms(self.pre_processor.transform))
        if any(isinstance(transform, Normalize) for transform in transforms):
            name = type(self).__name__
            msg = (
                f"{name}'s pre-processor must not contain Normalize: {self.normalize_reason} Use "
                f"{name}.configure_pre_processor(...) or a transform with only Resize/CenterCrop."
            )
            raise ValueError(msg)
        return transforms

    def raw_batch_images(self, batch: Batch) -> torch.Tensor:
        """A raw dataloader batch's images, through the pre-processor's transform.

        Why: hooks that loop over a dataloader themselves (statistics passes at fit start or epoch end) get batches
        before anomalib's pre-processor callback has run.
        """
        images = batch.image.to(self.device)
        if isinstance(self.pre_processor, PreProcessor) and self.pre_processor.transform is not None:
            images = self.pre_processor.transform(images)
        return images

    def reduce_across_ranks(self, tensor: torch.Tensor, op: str) -> torch.Tensor:
        """Sum or max ``tensor`` across DDP ranks (the identity on one process or without a trainer)."""
        if self._trainer is not None and self.trainer.world_size > 1:
            return self.trainer.strategy.reduce(tensor, reduce_op=op)
        return tensor

    def validation_step(self, batch: Batch, *args, **kwargs) -> STEP_OUTPUT:
        """Predict scores and maps for the validation batch (the post-processor calibrates on them)."""
        del args, kwargs
        predictions = self.model(batch.image)
        return batch.update(pred_score=predictions.pred_score, anomaly_map=predictions.anomaly_map)
