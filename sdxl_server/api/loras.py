"""LoRAs on the API side: the listing routes (ours and A1111's) and the check of a request's LoRAs
(the ``loras`` field and ``<lora:name:weight>`` in the prompt) before its job is queued."""

from __future__ import annotations

import asyncio
import dataclasses

from aiohttp import web

from ..errors import ValidationFailed
from ..params import GenerationParams
from ..pipeline.prompt_syntax import MAX_LORA_TAGS, LoraTag, attention_problem, extract_loras
from . import keys
from .styles import with_styles


async def with_loras(app: web.Application, params: GenerationParams) -> GenerationParams:
    """``params`` with its styles applied (:func:`.styles.with_styles`: a style may carry
    ``<lora:...>`` tags, as in A1111) and its LoRAs checked (422 naming each problem): the request's
    ``loras`` and, with ``PROMPT_SYNTAX=a1111``, the ``<lora:...>`` tags of its prompt. Every route
    calls it before queueing, so it also refuses what the prompt syntax cannot encode (see
    :func:`prompt_tags`)."""
    params = await with_styles(app, params)
    settings = app[keys.SETTINGS]
    wanted = [(name, weight, "loras") for name, weight in params.loras]
    if settings.prompt_syntax == "a1111":
        tags = await asyncio.to_thread(prompt_tags, params)  # a long prompt is parsed off the loop
        wanted[:0] = [(tag.name, tag.weight, "prompt") for tag in reversed(tags)]  # the loras field wins over a tag
    if not wanted:
        return params
    checked = await asyncio.to_thread(app[keys.LORAS].check, wanted, settings.max_loras)
    return dataclasses.replace(params, loras=checked)


def prompt_tags(params: GenerationParams) -> list[LoraTag]:
    """The ``<lora:...>`` tags of the prompt, once the A1111 syntax of both prompts is known to be
    encodable: a tag's weight is a number, at most ``MAX_LORA_TAGS`` tags (each unknown name costs
    a look in ``LORA_DIR``), brackets nested at most ``MAX_NESTING`` deep and every attention weight
    within ``WEIGHT_MIN`` to ``WEIGHT_MAX`` (an overflowing one makes a black image)."""
    text, tags = extract_loras(params.prompt)
    if len(tags) > MAX_LORA_TAGS:
        raise _refused("prompt", f"{len(tags)} <lora:...> tags in the prompt; at most {MAX_LORA_TAGS}.")
    for tag in tags:
        if tag.weight is None:
            raise ValidationFailed(
                f"{tag.text[:80]} in the prompt: the weight must be a number, as in <lora:{tag.name[:40]}:0.8>",
                fields={"prompt": [f"Bad LoRA weight in {tag.text[:80]}."]},
            )
    for field, value in (("prompt", text), ("negative_prompt", extract_loras(params.negative_prompt)[0])):
        problem = attention_problem(value)
        if problem:
            raise _refused(field, f"Cannot be encoded: {problem}.")
    return tags


def _refused(field: str, message: str) -> ValidationFailed:
    return ValidationFailed(f"{field}: {message}", fields={field: [message]})


def prompt_as_used(prompt: str, syntax: str) -> str:
    """The prompt's text as the model is given it: without its ``<lora:...>`` tags (A1111 syntax)."""
    return " ".join(extract_loras(prompt)[0].split()) if syntax == "a1111" else prompt


async def _files(app: web.Application, refresh: bool = False):
    catalog = app[keys.LORAS]
    return await asyncio.to_thread(catalog.refresh if refresh else catalog.files)


async def list_loras(request: web.Request) -> web.Response:
    """``GET /api/v1/loras``: every file in LORA_DIR, usable or not (and why)."""
    root = request.app[keys.LORAS].root
    files = await _files(request.app)
    return web.json_response({"lora_dir": str(root), "loras": [f.describe(root) for f in files]})


async def refresh_loras(request: web.Request) -> web.Response:
    """``POST /api/v1/loras/refresh``: scan LORA_DIR again; the new listing."""
    root = request.app[keys.LORAS].root
    files = await _files(request.app, refresh=True)
    return web.json_response({"lora_dir": str(root), "loras": [f.describe(root) for f in files]})


async def a1111_loras(request: web.Request) -> web.Response:
    """``GET /sdapi/v1/loras``: A1111's shape (name, alias, path, metadata), usable files only."""
    return web.json_response([f.a1111() for f in await _files(request.app) if f.problem is None])


async def a1111_refresh_loras(request: web.Request) -> web.Response:
    """``POST /sdapi/v1/refresh-loras``: as A1111, answers null once the folder is scanned."""
    await _files(request.app, refresh=True)
    return web.json_response(None)
