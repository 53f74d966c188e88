# Copyright (C) 2026 anomalib-crr developers
# SPDX-License-Identifier: Apache-2.0

"""Connecting the benchmark's driver to an existing Ray cluster, with or without token authentication.

Ray 2.52 added token authentication and Ray 2.59+ turns it on by default (``ray start --head`` with a token in
``~/.ray/auth_token``, ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH``). A driver that connects with an explicit
address (``--ray-address host:port``) does not switch it on by itself, even when a token is at hand, so it is
refused with a bare ``ConnectionError`` after about 20 s. This module chooses the mode with Ray's own token
sources, in Ray's order, before ``ray.init``:

1. ``--ray-auth-token-file FILE`` (config ``executor.ray_auth_token_file``): token mode, that file.
2. ``RAY_AUTH_MODE`` set in the environment: respected as it is.
3. A token in ``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``: token mode. A client in token
   mode still connects to a cluster without authentication (measured with Ray 2.60), so this never locks a user
   out of an unauthenticated cluster.
4. Otherwise no authentication.

The token itself is never read here, logged or written anywhere: only where it comes from is described.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError

AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
FIRST_TOKEN_RAY = (2, 52)  # the first Ray release with token authentication


def default_token_path() -> Path:
    """Where ``ray get-auth-token --generate`` and a local ``ray.init()`` keep the token."""
    return Path.home() / ".ray" / "auth_token"


def ray_version() -> tuple[int, int]:
    """Major and minor version of the installed Ray."""
    import ray

    major, minor = (int(part) for part in ray.__version__.split(".")[:2])
    return major, minor


@dataclass(frozen=True)
class RayAuth:
    """The authentication a driver uses: ``mode`` (``token`` / ``disabled``) and where the token comes from."""

    mode: str
    source: str = ""

    def describe(self) -> str:
        """``token authentication (token from ...)`` or ``no authentication``; never the token itself."""
        return f"token authentication (token from {self.source})" if self.mode == "token" else "no authentication"


def resolve_ray_auth(token_file: str | Path | None) -> RayAuth:
    """Choose the authentication mode for connecting to an existing cluster (see the module docstring).

    Raises:
        ConfigError: The token file is missing or empty, contradicts ``RAY_AUTH_MODE=disabled``, or the installed
            Ray predates token authentication.
    """
    if ray_version() < FIRST_TOKEN_RAY:
        if token_file is not None:
            msg = (
                "--ray-auth-token-file needs Ray >= 2.52 (token authentication); the installed Ray is "
                f"{'.'.join(map(str, ray_version()))}: upgrade ray, or drop the option for a cluster without it"
            )
            raise ConfigError(msg)
        return RayAuth("disabled")
    mode_env = os.environ.get(AUTH_MODE_ENV)
    if token_file is not None:
        path = Path(token_file).expanduser()
        if not path.is_file() or not path.read_text().strip():
            msg = f"--ray-auth-token-file '{path}' {'is empty' if path.is_file() else 'does not exist'}"
            raise ConfigError(msg)
        if mode_env is not None and mode_env.lower() != "token":
            msg = (
                f"--ray-auth-token-file '{path}' contradicts {AUTH_MODE_ENV}={mode_env} in the environment: "
                f"unset {AUTH_MODE_ENV} or drop the option"
            )
            raise ConfigError(msg)
        return RayAuth("token", f"file {path}")
    if mode_env is not None:
        return RayAuth("token", _token_source()) if mode_env.lower() == "token" else RayAuth("disabled")
    source = _token_source()
    return RayAuth("token", source) if source != "nowhere" else RayAuth("disabled")


def _token_source() -> str:
    """Where Ray would take the token from, in its order of precedence (``nowhere`` if no token is set up)."""
    if os.environ.get(TOKEN_ENV):
        return f"${TOKEN_ENV}"
    if os.environ.get(TOKEN_PATH_ENV):
        return f"${TOKEN_PATH_ENV} ({os.environ[TOKEN_PATH_ENV]})"
    if default_token_path().is_file():
        return str(default_token_path())
    return "nowhere"


def apply_ray_auth(auth: RayAuth, token_file: str | Path | None) -> None:
    """Put ``auth`` into this process's environment and make the already imported Ray see it.

    Ray reads ``RAY_AUTH_MODE`` into its cached config when it is imported; ``Config.initialize`` refreshes that
    cache (what Ray itself does when it turns token mode on), and the token loader's cache is reset so that a
    changed token path is read. Child processes (the job processes on this node) inherit the environment.
    """
    if auth.mode != "token":
        return
    os.environ[AUTH_MODE_ENV] = "token"
    if token_file is not None:
        os.environ[TOKEN_PATH_ENV] = str(Path(token_file).expanduser())
        os.environ.pop(TOKEN_ENV, None)  # Ray prefers $RAY_AUTH_TOKEN to a file; the given file must win
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def connection_error(address: str, auth: RayAuth, exc: BaseException) -> ConfigError:
    """One line naming the address, the authentication mode and what to set, for a refused connection."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    if auth.mode == "token":
        hint = (
            "check that the cluster is running there and that this token is the cluster's (`ray get-auth-token` "
            "on its head node); pass another with --ray-auth-token-file FILE or $RAY_AUTH_TOKEN_PATH"
        )
    else:
        hint = (
            "check that the cluster is running there; a cluster with token authentication (Ray >= 2.59's default) "
            "needs its token: --ray-auth-token-file FILE, $RAY_AUTH_TOKEN_PATH or $RAY_AUTH_TOKEN"
        )
    return ConfigError(f"cannot connect to the Ray cluster at {address} with {auth.describe()} ({first}): {hint}")
