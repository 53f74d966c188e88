# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Model-hub access that fails fast and names what it tried to fetch, for users without internet."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from urllib.parse import urlparse

import timm


def hub_id(model_name: str) -> str:
    """The timm hub id of the default pretrained weights, with its web address."""
    cfg = timm.models.get_pretrained_cfg(model_name)
    hub = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not hub:
        return f"timm:{model_name}"
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    return f"hf-hub:{hub} ({endpoint}/{hub})"


def _hub_resolvable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub host resolves; a DNS failure answers at once, unlike the hub's retries."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(timeout_s)
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    finally:
        socket.setdefaulttimeout(previous)
    return True


@contextlib.contextmanager
def offline_hub_if_unreachable() -> Iterator[None]:
    """Put huggingface_hub in offline mode while the hub cannot be reached.

    Without this, a machine without internet access retries each request for about a minute before
    failing. Offline mode fails at once, and still loads weights already in the local cache.
    """
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover - timm depends on huggingface_hub
        yield
        return
    previous = constants.HF_HUB_OFFLINE
    if not previous and not _hub_resolvable():
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous
