"""``POST /api/v1/tokenize``: the page's token counter, counted by the running model's tokenizer
with the encoder's own chunking, so what it shows is what the encoder does."""

from __future__ import annotations

import asyncio

from aiohttp import web

from . import keys
from .schemas import tokenize_request_schema
from .validation import read_json_object, validate


async def tokenize(request: web.Request) -> web.Response:
    body = validate(tokenize_request_schema(request.app[keys.SETTINGS]), await read_json_object(request))
    engine = request.app[keys.ENGINE]
    counts = {}
    for name in ("prompt", "negative_prompt"):
        counts[name] = await asyncio.to_thread(engine.count_tokens, body[name])
    return web.json_response(counts)
