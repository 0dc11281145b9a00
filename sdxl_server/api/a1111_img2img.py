"""AUTOMATIC1111's ``POST /sdapi/v1/img2img``: image to image and inpainting, translated into our
own request (the txt2img fields, plus A1111's image fields) and answered like ``txt2img``.

``init_images[0]`` is the image (A1111 too uses only the first for one job); ``mask`` white
repaints; ``inpaint_full_res`` is our ``inpaint_area="masked"``. Never imports torch.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from marshmallow import EXCLUDE, Schema, fields
from marshmallow import validate as validate_

from ..params import INPAINTING_FILLS, RESIZE_MODES
from . import keys
from .a1111_controlnet import a1111_units
from .applied import A1111_IMG2IMG, a1111_warnings
from .a1111_options import default_clip_skip
from .a1111 import NAMES, Number, core_request, request_schema_for_spec, respond, validate_a1111
from .image_inputs import stored_inputs
from .schemas import StrictInteger, generate_request_fields, to_params
from .validation import read_json_object, validate

IMG2IMG_NAMES = {
    **NAMES, "init_image": "init_images", "strength": "denoising_strength", "inpaint_area": "inpaint_full_res",
    "mask_padding": "inpaint_full_res_padding",
}
_IMAGES = ("init_images", "mask")


class Img2ImgSchema(Schema):
    """The A1111 ``img2img`` fields beyond txt2img's; any other field is ignored."""

    class Meta:
        unknown = EXCLUDE

    init_images = fields.List(fields.String(), required=True, validate=validate_.Length(min=1),
                              metadata={"description": "base64 images; the first is used."})
    denoising_strength = Number(load_default=0.75, as_float=True)
    mask = fields.String(load_default=None, allow_none=True, metadata={"description": "base64; white repaints."})
    mask_blur = Number(load_default=4)
    inpainting_fill = Number(load_default=1, validate=validate_.OneOf(list(INPAINTING_FILLS)),
                             metadata={"description": "0 fill, 1 original, 2 latent noise, 3 latent nothing."})
    inpaint_full_res = fields.Boolean(load_default=False, allow_none=True,
                                      metadata={"description": "Repaint only the masked area, at full resolution."})
    inpaint_full_res_padding = Number(load_default=32)
    inpainting_mask_invert = Number(load_default=0, validate=validate_.OneOf([0, 1]))
    resize_mode = Number(load_default=0, validate=validate_.OneOf(list(RESIZE_MODES)))
    include_init_images = fields.Boolean(load_default=False, allow_none=True,
                                         metadata={"description": "Echo the images in parameters."})


def img2img_schema_for_spec(settings) -> Schema:
    """The img2img request with the server's limits, for the OpenAPI document."""
    core = generate_request_fields(settings)
    spec_fields = {
        **request_schema_for_spec(settings).fields,
        **Img2ImgSchema().fields,
        "denoising_strength": core["strength"],
        "mask_blur": core["mask_blur"],
        "inpaint_full_res_padding": core["mask_padding"],
        "inpainting_fill": core["inpainting_fill"],
        "resize_mode": core["resize_mode"],
        "inpainting_mask_invert": StrictInteger(load_default=0, validate=validate_.OneOf([0, 1])),
    }
    return Schema.from_dict(spec_fields, name="Img2ImgRequest")(unknown=EXCLUDE)


async def img2img(request: web.Request) -> web.Response:
    """``POST /sdapi/v1/img2img``: ``{images: [base64 PNG], parameters, info}``."""
    app = request.app
    body = await read_json_object(request, untyped_is_json=True)  # as txt2img: Dify sends no Content-Type
    core, original, notes = core_request(body, app[keys.SETTINGS], default_clip_skip(app))
    extra = validate_a1111(Img2ImgSchema(), body)
    core.update(
        init_image=extra["init_images"][0], strength=extra["denoising_strength"], mask=extra["mask"],
        mask_blur=extra["mask_blur"], inpainting_fill=extra["inpainting_fill"],
        inpaint_area="masked" if extra["inpaint_full_res"] else "whole",
        mask_padding=extra["inpaint_full_res_padding"], resize_mode=extra["resize_mode"],
    )
    warnings = a1111_warnings(A1111_IMG2IMG, body)
    control = await a1111_units(app, body, core["init_image"], notes, warnings)
    data = validate(app[keys.GENERATE_SCHEMA], control.into(core), IMG2IMG_NAMES)
    given = [name for name in ("width", "height") if original[name] is not None]
    echoed: dict[str, Any] = {**original, **{k: v for k, v in extra.items() if k not in _IMAGES}}
    echoed.update({name: extra[name] if extra["include_init_images"] else None for name in _IMAGES})
    async with stored_inputs(app, data, given, names=IMG2IMG_NAMES, invert_mask=bool(extra["inpainting_mask_invert"])) as data:
        return await respond(request, to_params(data), echoed, notes, warnings, control.maps)

