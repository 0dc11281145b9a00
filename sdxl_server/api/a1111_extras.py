"""AUTOMATIC1111's upscalers and "extras" routes: ``GET /sdapi/v1/upscalers``,
``POST /sdapi/v1/extra-single-image`` (``{html_info, image}``) and
``POST /sdapi/v1/extra-batch-images`` (``{html_info, images}``), in A1111's field names
(``modules/api/models.py``: ``ExtrasBaseRequest``), read leniently as A1111 reads them (numeric
strings, nulls as defaults, unknown fields ignored).

Each image is one upscale job on the queue (:func:`.upscale.queue_upscale`), awaited. As in A1111:
``resize_mode`` 0 scales by ``upscaling_resize``, 1 covers ``upscaling_resize_w`` x
``upscaling_resize_h`` and, with ``upscaling_crop``, crops the centre to it; sizes are multiples
of 8; ``upscaler_1`` "None" keeps the image; ``upscaler_2`` is blended in at
``extras_upscaler_2_visibility``. Face restoration (GFPGAN, CodeFormer) is not available: asked
for, it is named in ``html_info`` and the log (:data:`.applied.A1111_EXTRAS`). Never imports torch.
"""

from __future__ import annotations

import asyncio
import html
from typing import Any

from aiohttp import web
from marshmallow import EXCLUDE, Schema, fields
from marshmallow import validate as validate_

from ..jobs.job import Job
from ..pipeline.upscaler_catalog import NONE
from . import keys
from .a1111 import Number, validate_a1111
from .applied import A1111_EXTRAS, a1111_warnings
from .upscale import SCALE_MAX, SIDE_MAX, UpscaleAsk, queue_upscale
from .validation import read_json_object

# ours -> A1111's, for the errors
EXTRAS_NAMES = {"upscaler": "upscaler_1", "upscaler_2": "upscaler_2", "visibility_2": "extras_upscaler_2_visibility",
                "scale": "upscaling_resize", "width": "upscaling_resize_w", "height": "upscaling_resize_h"}
_UNIT = validate_.Range(min=0.0, max=1.0)


class ExtrasSchema(Schema):
    """``ExtrasBaseRequest``: the fields both extras routes take."""

    class Meta:
        unknown = EXCLUDE

    resize_mode = Number(load_default=0, validate=validate_.OneOf([0, 1]),
                         metadata={"description": "0: by upscaling_resize; 1: to upscaling_resize_w x _h."})
    show_extras_results = fields.Raw(load_default=True, allow_none=True, metadata={"description": "No effect (always shown)."})
    gfpgan_visibility = Number(load_default=0.0, as_float=True, validate=_UNIT, metadata={"description": "Not applied."})
    codeformer_visibility = Number(load_default=0.0, as_float=True, validate=_UNIT, metadata={"description": "Not applied."})
    codeformer_weight = Number(load_default=0.0, as_float=True, validate=_UNIT, metadata={"description": "Not applied."})
    upscaling_resize = Number(load_default=2.0, as_float=True, validate=validate_.Range(min=1.0, max=SCALE_MAX))
    upscaling_resize_w = Number(load_default=512, validate=validate_.Range(min=1, max=SIDE_MAX))
    upscaling_resize_h = Number(load_default=512, validate=validate_.Range(min=1, max=SIDE_MAX))
    upscaling_crop = fields.Boolean(load_default=True, allow_none=True)
    upscaler_1 = fields.String(load_default=NONE, allow_none=True)
    upscaler_2 = fields.String(load_default=NONE, allow_none=True)
    extras_upscaler_2_visibility = Number(load_default=0.0, as_float=True, validate=_UNIT)
    upscale_first = fields.Raw(load_default=False, allow_none=True, metadata={"description": "No effect."})


class SingleImageSchema(ExtrasSchema):
    image = fields.String(required=True, validate=validate_.Length(min=1),
                          metadata={"description": "base64 (a data: URL is fine)."})


class FileDataSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    data = fields.String(required=True, metadata={"description": "base64 (a data: URL is fine)."})
    name = fields.String(load_default="", allow_none=True)


class BatchImagesSchema(ExtrasSchema):
    imageList = fields.List(fields.Nested(FileDataSchema), required=True, validate=validate_.Length(min=1))  # noqa: N815


def _ask(data: dict[str, Any], image: str) -> UpscaleAsk:
    to_size = data["resize_mode"] == 1
    return UpscaleAsk(
        image=image, upscaler=data["upscaler_1"] or NONE, scale=data["upscaling_resize"],
        width=data["upscaling_resize_w"] if to_size else 0, height=data["upscaling_resize_h"] if to_size else 0,
        crop=bool(data["upscaling_crop"]), upscaler_2=data["upscaler_2"] or NONE,
        visibility_2=data["extras_upscaler_2_visibility"], eighths=True,
    )


def html_info(job: Job, data: dict[str, Any], warnings: list[str]) -> str:
    """A1111's ``html_info``: the infotext of what was done, as ``plaintext_to_html`` writes it,
    then what was asked for and not applied."""
    params, infos = job.params, []
    if params.upscale.upscaler != NONE:
        infos.append(f"Postprocess upscale to: {params.width}x{params.height}" if data["resize_mode"] == 1
                     else f"Postprocess upscale by: {data['upscaling_resize']:g}")
        infos.append(f"Postprocess upscaler: {params.upscale.upscaler}")
        if params.upscale.upscaler_2 != NONE and params.upscale.visibility_2 > 0:
            infos.append(f"Postprocess upscaler 2: {params.upscale.upscaler_2}")
        if params.upscale.crop_width:
            infos.append(f"Postprocess crop to: {params.upscale.crop_width}x{params.upscale.crop_height}")
    lines = [", ".join(infos), *(f"Warning: {warning}" for warning in warnings)]
    return "<p>" + "<br>\n".join(html.escape(line) for line in lines if line) + "</p>"


async def _upscaled(app: web.Application, ask: UpscaleAsk, warnings: list[str]) -> tuple[Job, str]:
    """One image through its job, awaited: the job and the PNG, base64."""
    job = await queue_upscale(app, ask, EXTRAS_NAMES, tuple(warnings))
    await job.wait()
    result = job.outcome()  # raises the job's error (a file replaced by a corrupt one: 422; out of memory: 503)
    return job, (await app[keys.STORE].images_base64([result["meta"]["id"]]))[0]


async def _extras(request: web.Request, schema: Schema) -> tuple[dict[str, Any], list[str]]:
    body = await read_json_object(request, untyped_is_json=True)
    data = validate_a1111(schema, body)
    return data, a1111_warnings(A1111_EXTRAS, body)


async def extra_single_image(request: web.Request) -> web.Response:
    """``POST /sdapi/v1/extra-single-image``: ``{html_info, image}``."""
    data, warnings = await _extras(request, SingleImageSchema())
    job, image = await _upscaled(request.app, _ask(data, data["image"]), warnings)
    return web.json_response({"html_info": html_info(job, data, warnings), "image": image})


async def extra_batch_images(request: web.Request) -> web.Response:
    """``POST /sdapi/v1/extra-batch-images``: ``{html_info, images}``, one job per image, in order."""
    data, warnings = await _extras(request, BatchImagesSchema())
    done = [await _upscaled(request.app, _ask(data, item["data"]), warnings) for item in data["imageList"]]
    return web.json_response({"html_info": html_info(done[-1][0], data, warnings), "images": [image for _, image in done]})


async def upscalers(request: web.Request) -> web.Response:
    """``GET /sdapi/v1/upscalers``: ``None``, the built-ins and the usable model files, as A1111 lists them."""
    entries = await asyncio.to_thread(request.app[keys.UPSCALERS].entries)
    listed = [{"name": NONE, "model_name": None, "model_path": None, "model_url": None, "scale": 4}]
    return web.json_response(listed + [entry.a1111() for entry in entries if not entry.broken])
