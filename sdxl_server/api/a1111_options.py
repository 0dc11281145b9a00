"""AUTOMATIC1111's options (``/sdapi/v1/options``) and the per-request settings they default.

A1111 keeps settings server-wide and lets a request change them for itself in
``override_settings``. Two of them mean something here: ``sd_model_checkpoint`` (the default
model, kept by the model catalog) and ``CLIP_stop_at_last_layers`` (CLIP skip), kept here as the
default of A1111 requests (``POST /api/v1/generate`` has its own ``clip_skip``, default 1). Other
options are accepted and have no effect. Never imports torch.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from aiohttp import web
from marshmallow import EXCLUDE, Schema, ValidationError, fields
from marshmallow import validate as validate_

from ..errors import ApiError, ValidationFailed
from ..params import CLIP_SKIP_MAX
from ..pipeline.model_catalog import MAX_MODEL_NAME
from . import keys
from .validation import read_json_object, validate

CLIP_OPTION = "CLIP_stop_at_last_layers"


def _clip_skip_number(value: Any) -> int:
    """A1111 reads the option as a number (``2``, ``2.0`` or ``"2"``); 1 to CLIP_SKIP_MAX."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValidationError("Not a valid number.")
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (ValueError, OverflowError):
        raise ValidationError("Not a valid number.") from None
    if not math.isfinite(number) or not 1 <= int(number) <= CLIP_SKIP_MAX:
        raise ValidationError(f"Must be from 1 to {CLIP_SKIP_MAX}.")
    return int(number)


class ClipSkipOption(fields.Field):
    """``CLIP_stop_at_last_layers`` as A1111 reads it: a number or a numeric string."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        return _clip_skip_number(value)


class OptionsSchema(Schema):
    """``POST /sdapi/v1/options``: ``sd_model_checkpoint`` (the default model) and
    ``CLIP_stop_at_last_layers`` (CLIP skip of A1111 requests); other options are ignored."""

    class Meta:
        unknown = EXCLUDE

    sd_model_checkpoint = fields.String(validate=validate_.Length(max=MAX_MODEL_NAME))
    CLIP_stop_at_last_layers = ClipSkipOption(allow_none=True, metadata={
        "description": f"CLIP skip (1 to {CLIP_SKIP_MAX}) of A1111 requests that do not set their own."})


def request_clip_skip(body: dict[str, Any], default: int) -> int:
    """An A1111 request's CLIP skip: its top-level ``clip_skip``, else its ``override_settings``'
    ``CLIP_stop_at_last_layers``, else the server's option. A bad value is a 422 naming it."""
    overrides = body.get("override_settings")
    for name, source in (("clip_skip", body), (CLIP_OPTION, overrides if isinstance(overrides, dict) else {})):
        if source.get(name) is None:
            continue
        try:
            return _clip_skip_number(source[name])
        except ValidationError as exc:
            label = name if source is body else f"override_settings.{name}"
            raise ValidationFailed(f"invalid request: check {label}", fields={label: exc.messages}) from None
    return default


def default_clip_skip(app: web.Application) -> int:
    return app[keys.A1111_OPTIONS].get(CLIP_OPTION, 1)


async def get_options(request: web.Request) -> web.Response:
    """``GET /sdapi/v1/options``: the options that mean something here."""
    app = request.app
    return web.json_response({"sd_model_checkpoint": app[keys.MODELS].default_name, "samples_format": "png",
                              CLIP_OPTION: default_clip_skip(app)})


async def set_options(request: web.Request) -> web.Response:
    """``sd_model_checkpoint`` names the default model from now on (loaded by the next job that
    uses it, as the queue reaches it); ``CLIP_stop_at_last_layers`` is the CLIP skip of later
    A1111 requests; other options are accepted and have no effect. Checked before either is set."""
    wanted = validate(OptionsSchema(), await read_json_object(request, untyped_is_json=True))
    if wanted.get("sd_model_checkpoint") is not None:
        try:
            await asyncio.to_thread(request.app[keys.MODELS].set_default, wanted["sd_model_checkpoint"])
        except ApiError as exc:
            raise exc.renamed({"model": "sd_model_checkpoint"}) from None
    if wanted.get(CLIP_OPTION) is not None:
        request.app[keys.A1111_OPTIONS][CLIP_OPTION] = wanted[CLIP_OPTION]
    return web.json_response(None)
