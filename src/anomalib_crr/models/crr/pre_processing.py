# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""CRR's pre-processor: the default resize/crop per encoder and the size check of a given one.

CRR's encoders cut the image into tokens (a ViT's 14 or 16 px patches; a CNN's coarsest target stage and token
stride), so every input side must be a multiple of that size. Both the default pre-processor and a user's are
checked here, with messages that name the encoder and the nearest valid sides, because a wrong size would
otherwise fail deep inside the encoder with a shape error. No ``Normalize``: CRR synthesises anomalies on [0, 1]
images and normalises inside the model (:meth:`PluginModule.pre_processor_transforms` rejects it).
"""

from __future__ import annotations

from collections.abc import Sequence

from anomalib.pre_processing import PreProcessor
from torchvision.transforms.v2 import CenterCrop, Compose, Resize, Transform

from anomalib_crr.models.components import transform_output_size

from .components.cnn_encoder import cnn_input_multiple, is_cnn_encoder
from .components.encoder import encoder_family, encoder_patch_size

DEFAULT_IMAGE_SIZE = 448
DEFAULT_CROP_SIZE = 392
CNN_IMAGE_SIZE = 256  # the CNN path's default: a plain resize (no crop), as PaDiM and PatchCore use
DEFAULT_ENCODER = "vit_base_patch14_reg4_dinov2"


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


def default_pre_processor(
    image_size: tuple[int, int] | None = None,
    crop_size: int | None = None,
    encoder_name: str = DEFAULT_ENCODER,
    target_layers: Sequence | None = None,
    token_stride: int | None = None,
) -> PreProcessor:
    """The pre-processor ``CRR.configure_pre_processor`` returns (and ``CRR`` builds when given ``True``).

    ViTs get Dinomaly's resize (448²) and centre crop (392², rounded down to the patch size); CNNs a plain 256²
    resize, as anomalib's CNN models (PaDiM, PatchCore) use.

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


def check_pre_processor_size(
    transforms: list[Transform] | None,
    encoder_name: str,
    target_layers: Sequence | None = None,
    token_stride: int | None = None,
) -> None:
    """Reject a pre-processor whose output size does not tile into the encoder's patches.

    Checked when the module is built, so a bad size fails before a fit starts rather than in the first forward.

    Args:
        transforms: The pre-processor's leaf transforms (``PluginModule.pre_processor_transforms``); ``None`` (a
            custom pre-processor) and sizes that cannot be read are not checked.
        encoder_name: The encoder the images are for.
        target_layers: CNN encoders: the target stages.
        token_stride: CNN encoders: the token grid's stride.

    Raises:
        ValueError: Naming the produced size, the encoder's multiple and valid sizes.
    """
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
