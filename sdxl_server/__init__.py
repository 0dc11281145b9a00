"""sdxl_server: a self-hosted Stable Diffusion XL server (aiohttp + diffusers).

Layers: :mod:`sdxl_server.api` (HTTP and websocket), :mod:`sdxl_server.jobs` (queue, events,
job store, outputs), :mod:`sdxl_server.pipeline` (models and generation) and
:mod:`sdxl_server.tools` (bench, load test, model check); ``config``, ``errors`` and ``params``
are shared by all of them. ``docs/architecture.md`` has the map.
"""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version


@functools.cache
def package_version(name: str) -> str | None:
    """The installed version of ``name`` (a distribution), or None when it is not installed."""
    try:
        return version(name)
    except PackageNotFoundError:
        return None


__version__ = package_version("sdxl-server") or "0+unknown"
