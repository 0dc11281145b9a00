"""The AUTOMATIC1111 endpoints clients probe before they generate, answered truthfully in A1111's shapes.

SillyTavern, Open WebUI and ``webuiapi`` list upscalers, VAEs, scripts and embeddings, read
``cmd-flags`` and ``memory``, ping ``/internal/ping`` and read a PNG's parameters with
``png-info``. The upscalers are listed by :mod:`.a1111_extras`; the latent upscale modes are hires
fix's; there are no scripts or modules: those lists are empty, never invented. Embeddings are the running
model's, from EMBEDDINGS_DIR. Never imports torch (CUDA figures come from the engine's ``describe``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import Iterator
from typing import Any

import psutil
from aiohttp import web
from marshmallow import EXCLUDE, Schema, fields

from ..errors import NotAvailable, ValidationFailed
from ..jobs import images
from ..params import LATENT_UPSCALERS
from . import keys
from .validation import read_json_object, validate


async def latent_upscale_modes(request: web.Request) -> web.Response:
    """``GET /sdapi/v1/latent-upscale-modes``: hires fix's latent modes, in A1111's names."""
    return web.json_response([{"name": name} for name in LATENT_UPSCALERS])


async def sd_vae(request: web.Request) -> web.Response:
    """``GET /sdapi/v1/sd-vae``: the VAE the model is configured with, when it is a separate one."""
    vae = (request.app[keys.STATUS].latest.described.get("model") or {}).get("vae")
    return web.json_response([{"model_name": str(vae).rsplit("/", 1)[-1], "filename": str(vae)}] if vae else [])


async def empty_list(request: web.Request) -> web.Response:
    """``GET /sdapi/v1/sd-modules``, ``/face-restorers``, ``/prompt-styles``, ...: none here."""
    return web.json_response([])


async def scripts(request: web.Request) -> web.Response:
    """``GET /sdapi/v1/scripts``: no scripts."""
    return web.json_response({"txt2img": [], "img2img": []})


async def embeddings(request: web.Request) -> web.Response:
    """``GET /sdapi/v1/embeddings``: the textual-inversion embeddings the running model loaded from
    EMBEDDINGS_DIR and those it skipped (each with its ``reason``), from the engine's last snapshot:
    the event loop never asks the engine itself (empty until a model is loaded)."""
    listing = request.app[keys.STATUS].latest.described.get("embeddings") or {}
    return web.json_response({"loaded": listing.get("loaded", {}), "skipped": listing.get("skipped", {})})


async def cmd_flags(request: web.Request) -> web.Response:
    """``GET /sdapi/v1/cmd-flags``: A1111's flags that have a meaning here, from the settings."""
    settings = request.app[keys.SETTINGS]
    return web.json_response({
        "api": True,
        "nowebui": False,
        "listen": settings.host not in ("127.0.0.1", "localhost", "::1"),
        "port": settings.port,
        "api_auth": "***" if settings.api_key else None,  # never the key itself
        "ckpt_dir": str(settings.model_dir),
        "lora_dir": str(settings.lora_dir),
        "data_dir": str(settings.output_dir),
        "medvram": False,
        "lowvram": False,
        "xformers": False,
        "no_half": settings.dtype == "float32",
    })


async def memory(request: web.Request) -> web.Response:
    """``GET /sdapi/v1/memory``: the machine's RAM, and the CUDA device's as torch sees it."""
    ram = psutil.virtual_memory()
    gpu = request.app[keys.STATUS].latest.described.get("gpu")
    if gpu:
        allocated = gpu["memory_allocated"]
        cuda: dict[str, Any] = {
            "system": {"total": gpu["memory_total"]},
            "allocated": {"current": allocated},
            "active": {"current": allocated},
        }
    else:
        cuda = {"error": f"CUDA is not in use (device {request.app[keys.SETTINGS].device})"}
    return web.json_response({"ram": {"free": ram.available, "used": ram.total - ram.available, "total": ram.total}, "cuda": cuda})


async def ping(request: web.Request) -> web.Response:
    """``GET /internal/ping``: ``{}``, as A1111 answers."""
    return web.json_response({})


async def interrogate(request: web.Request) -> web.Response:
    """``POST /sdapi/v1/interrogate``: 501, said plainly (not a 404 that reads as a wrong URL), so
    a client's "describe this image" button tells its user why nothing comes back."""
    raise NotAvailable("interrogate is not available on this server: no CLIP or DeepBooru interrogator is bundled "
                       "(it generates images only)")


class PngInfoSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    image = fields.String(required=True, metadata={"description": "A PNG, base64 (a data: URL is fine)."})


_SPACES = re.compile(r"\s*")
_QUOTED = re.compile(r'"(?:\\.|[^\\"])*"')  # the alternatives never match the same character: linear


def parse_infotext(text: str) -> dict[str, Any]:
    """A ``parameters`` text as A1111's ``parse_generation_parameters`` reads it (the common keys).

    Read in one pass with string operations: A1111's pattern for a ``key: value`` pair
    (``\\s*(\\w[\\w \\-/]+):\\s*(...)``) backtracks quadratically over a long run of spaces."""
    lines = text.strip().split("\n")
    last = lines.pop() if len(lines) > 1 and ":" in lines[-1] and _is_key(lines[-1].partition(":")[0].strip()) else ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    result: dict[str, Any] = {"Prompt": "\n".join(prompt), "Negative prompt": "\n".join(negative)}
    for key, value in _pairs(last):
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        result[key] = value
    if "Size" in result and "x" in result["Size"]:
        result["Size-1"], _, result["Size-2"] = result["Size"].partition("x")
    return result


def _is_key(key: str) -> bool:
    """A1111's keys: word characters, spaces, ``-`` and ``/`` (``Steps``, ``Lora hashes``)."""
    return bool(key) and all(char.isalnum() or char in "_ -/" for char in key)


def _pairs(line: str) -> Iterator[tuple[str, str]]:
    """The ``key: value`` pairs of the last line, split at commas; a value in double quotes
    (backslash escapes) may hold commas. A pair whose key is not one is skipped."""
    at = 0
    while at < len(line):
        colon = line.find(":", at)
        if colon < 0:
            return
        key, start = line[at:colon].strip(), _SPACES.match(line, colon + 1).end()
        quoted = _QUOTED.match(line, start) if line.startswith('"', start) else None
        if quoted and (quoted.end() == len(line) or line[quoted.end()] == ","):
            end = quoted.end()
        else:
            comma = line.find(",", start)
            end = len(line) if comma < 0 else comma
        if _is_key(key):
            yield key, line[start:end]
        at = end + 1


def _png_info(data: str, max_pixels: int) -> dict[str, Any]:
    """On a worker thread: the body's answer for the base64 image ``data`` (decoded with the
    other image routes' checks: a bomb is refused before any pixel is decoded)."""
    try:
        blob = base64.b64decode(data.partition(",")[2] if data.startswith("data:") else data, validate=False)
    except (binascii.Error, ValueError):
        raise ValidationFailed("image is not base64: send the PNG's bytes base64-encoded",
                               fields={"image": ["Not base64."]}) from None
    items = images.text_chunks(blob, "image", max_pixels)
    info = items.pop("parameters", "")
    return {"info": info, "items": items, "parameters": parse_infotext(info) if info else {}}


async def png_info(request: web.Request) -> web.Response:
    """``POST /sdapi/v1/png-info``: the ``parameters`` text chunk of an uploaded PNG, parsed (off the loop)."""
    body = await read_json_object(request, untyped_is_json=True)  # MAX_IMAGE_BODY_BYTES, as the image routes
    data = validate(PngInfoSchema(), body)["image"]
    max_pixels = request.app[keys.SETTINGS].max_input_pixels
    return web.json_response(await asyncio.get_running_loop().run_in_executor(None, _png_info, data, max_pixels))
