"""Several models on the API side: the listings (ours, OpenAI's, A1111's), the rescan, the default
(A1111's ``sd_model_checkpoint``) and the check of a request's model before its job is queued."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from aiohttp import web

from ..errors import ApiError
from ..params import GenerationParams
from ..pipeline.model_catalog import OPENAI_DEFAULT_PREFIXES
from . import keys


async def with_model(app: web.Application, params: GenerationParams, field: str = "model") -> GenerationParams:
    """``params`` naming the model its job runs on (the default when it names none); 422 listing
    the models when it names one this server does not have, or one that is broken."""
    try:
        name = await asyncio.to_thread(app[keys.MODELS].lookup, params.model)
    except ApiError as exc:
        raise exc.renamed({"model": field}) from None
    return dataclasses.replace(params, model=name)


def openai_model(requested: str | None) -> str:
    """OpenAI's ``model``: ``dall-e-*`` and ``gpt-image-*`` (or none) mean the default model."""
    if not requested or requested.lower().startswith(OPENAI_DEFAULT_PREFIXES):
        return ""
    return requested


def _listing(app: web.Application, entries) -> dict[str, Any]:
    loaded = app[keys.ENGINE].loaded_models()
    return {"default": app[keys.MODELS].default_name, "models_dir": str(app[keys.SETTINGS].models_dir),
            "models": [entry.describe(loaded) for entry in entries]}


async def list_models(request: web.Request) -> web.Response:
    """``GET /api/v1/models``: every model, where it is loaded, which is the default, which are broken."""
    return web.json_response(_listing(request.app, request.app[keys.MODELS].entries()))


async def refresh_models(request: web.Request) -> web.Response:
    """``POST /api/v1/models/refresh``: scan MODELS_DIR again; the new listing."""
    entries = await asyncio.to_thread(request.app[keys.MODELS].refresh)
    return web.json_response(_listing(request.app, entries))


async def a1111_refresh_checkpoints(request: web.Request) -> web.Response:
    """``POST /sdapi/v1/refresh-checkpoints``: as A1111, null once scanned."""
    await asyncio.to_thread(request.app[keys.MODELS].refresh)
    return web.json_response(None)


def usable_entries(app: web.Application):
    """The models a request may name: not broken on disk, and not one that failed to load."""
    model = app[keys.STATUS].latest.described["model"]
    failed = model["location"] if model["state"] == "failed" else None
    return [entry for entry in app[keys.MODELS].entries() if not entry.broken and entry.source.location != failed]
