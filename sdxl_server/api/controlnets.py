"""ControlNet's and IP-Adapter's own routes: the ControlNets in CONTROLNET_DIR and the IP-Adapters
in IP_ADAPTER_DIR (usable or not, and why), the preprocessors (available or not, and why), and ``POST /api/v1/preprocess``, the control map a
preprocessor makes from an image (the page's preview; the A1111 extension's ``/controlnet/detect``
uses :func:`detect_map` too). Never imports torch: the preprocessors are OpenCV and numpy, or the
engine's annotator models (``keys.ANNOTATORS``), run off the loop.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from aiohttp import web
from marshmallow import RAISE, Schema, validate, validates_schema

from ..config import Settings
from ..jobs import images
from ..jobs.inputs import png_bytes
from ..params import MAX_IP_ADAPTERS
from ..pipeline.preprocessors import PREPROCESSORS, Annotate
from . import keys
from .control_units import check_module, preprocessed
from .schemas import (
    PROCESSOR_RES_MAX, PROCESSOR_RES_MIN, StrictFloat, StrictInteger, StrictString, check_preprocessor, preprocessor_field,
)
from .validation import read_json_object, validate as validate_body


async def list_controlnets(request: web.Request) -> web.Response:
    """``GET /api/v1/controlnets``: every ControlNet in CONTROLNET_DIR, usable or not (and why)."""
    catalog = request.app[keys.CONTROLNETS]
    entries = await asyncio.to_thread(catalog.files)
    return web.json_response({
        "controlnet_dir": str(catalog.root), "max_controlnets": request.app[keys.SETTINGS].max_controlnets,
        "controlnets": [entry.describe(catalog.root) for entry in entries],
    })


async def list_ip_adapters(request: web.Request) -> web.Response:
    """``GET /api/v1/ip-adapters``: every IP-Adapter in IP_ADAPTER_DIR, usable or not (and why)."""
    catalog = request.app[keys.IP_ADAPTERS]
    entries = await asyncio.to_thread(catalog.files)
    return web.json_response({"ip_adapter_dir": str(catalog.root), "max_ip_adapters": MAX_IP_ADAPTERS,
                              "ip_adapters": [e.describe(catalog.root) for e in entries]})


async def list_preprocessors(request: web.Request) -> web.Response:
    """``GET /api/v1/preprocessors``: every preprocessor, whether it runs here and its thresholds."""
    annotate = request.app[keys.ANNOTATORS]
    described = await asyncio.to_thread(lambda: [p.describe(annotate) for p in PREPROCESSORS.values()])
    return web.json_response({"preprocessors": described, "annotator_dir": str(request.app[keys.SETTINGS].annotator_dir)})


class PreprocessRequestSchema(Schema):
    """``POST /api/v1/preprocess``."""

    image = StrictString(required=True, metadata={"description": "PNG, JPEG or WebP, base64 (a data: URL too)."})
    module = preprocessor_field(required=True)
    processor_res = StrictInteger(load_default=None, allow_none=True,
                                  validate=validate.Range(min=PROCESSOR_RES_MIN, max=PROCESSOR_RES_MAX),
                                  metadata={"description": "Pixels on the short side it works at (null: the image's)."})
    threshold_a = StrictFloat(load_default=None, allow_none=True, metadata={"description": "Its first number; null: its default."})
    threshold_b = StrictFloat(load_default=None, allow_none=True, metadata={"description": "Its second number; null: its default."})

    @validates_schema
    def _check(self, data: dict[str, Any], **_: Any) -> None:
        check_preprocessor(data)


def detect_map(settings: Settings, annotate: Annotate, data: dict[str, Any], field: str = "image",
               module_field: str = "module") -> tuple[bytes, tuple[int, int]]:
    """On a worker thread: the control map of ``data['image']`` as PNG bytes, and its size (the
    image's, fitted to the limits); 422 naming ``module_field`` when its preprocessor cannot run."""
    check_module(annotate, data["module"], module_field)
    image = images.to_rgb(images.open_image(images.image_bytes(data["image"], field), field, settings.max_input_pixels))
    size = images.fit_size(*image.size, settings.max_width, settings.max_height)
    image = images.resize(image, size, 0)
    made = preprocessed(image, data, size, annotate, module_field)
    return png_bytes(made), made.size


async def preprocess(request: web.Request) -> web.Response:
    """``POST /api/v1/preprocess``: ``{image, module, width, height}``, the map as base64 PNG."""
    data = validate_body(PreprocessRequestSchema(unknown=RAISE), await read_json_object(request))
    png, (width, height) = await asyncio.get_running_loop().run_in_executor(
        None, detect_map, request.app[keys.SETTINGS], request.app[keys.ANNOTATORS], data)
    return web.json_response({"module": data["module"], "width": width, "height": height,
                              "image": base64.b64encode(png).decode("ascii")})
