"""Request and response schemas (marshmallow). They validate every body and feed the OpenAPI spec.

The request schema carries the server's limits (``MAX_WIDTH`` and friends), so it is built per
application by :func:`generate_request_schema`. Never imports torch.
"""

from __future__ import annotations

import random
import unicodedata
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from .config import Settings
from .params import MAX_SEED, SCHEDULERS, GenerationParams

GUIDANCE_MIN, GUIDANCE_MAX = 0.0, 30.0
MIN_SIZE = 64


class StrictInteger(fields.Integer):
    """A JSON integer: no strings, no booleans, no floats (``512.0`` included)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class StrictFloat(fields.Float):
    """A finite JSON number: no strings, no booleans, no NaN or infinity."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(allow_nan=False, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.make_error("invalid")
        return super()._deserialize(value, attr, data, **kwargs)


class StrictString(fields.String):
    """A JSON string without control characters (newlines and tabs allowed)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        for char in text:
            if char not in "\n\r\t" and unicodedata.category(char) in ("Cc", "Cs"):
                raise ValidationError(f"Contains a control character (U+{ord(char):04X}).")
        return text


def _not_blank(value: str) -> None:
    if not value.strip():
        raise ValidationError("Must not be empty or only whitespace.")


def _multiple_of_8(value: int) -> None:
    if value % 8:
        raise ValidationError(f"Must be a multiple of 8 (got {value}; try {max(MIN_SIZE, value // 8 * 8)}).")


def _size(maximum: int) -> list:
    return [validate.Range(min=MIN_SIZE, max=maximum), _multiple_of_8]


def generate_request_fields(settings: Settings) -> dict[str, fields.Field]:
    """The fields of a generation request, with this server's limits and defaults."""
    text = validate.Length(max=settings.max_prompt_length)
    return {
        "prompt": StrictString(
            required=True, validate=[_not_blank, text], metadata={"description": "What to draw.", "example": "a lighthouse at dusk"}
        ),
        "negative_prompt": StrictString(load_default="", validate=text, metadata={"description": "What to avoid."}),
        "width": StrictInteger(
            load_default=settings.default_width, validate=_size(settings.max_width),
            metadata={"description": f"Pixels; a multiple of 8 from {MIN_SIZE} to {settings.max_width}.", "multipleOf": 8},
        ),
        "height": StrictInteger(
            load_default=settings.default_height, validate=_size(settings.max_height),
            metadata={"description": f"Pixels; a multiple of 8 from {MIN_SIZE} to {settings.max_height}.", "multipleOf": 8},
        ),
        "steps": StrictInteger(
            load_default=settings.default_steps, validate=validate.Range(min=1, max=settings.max_steps),
            metadata={"description": "Denoising steps."},
        ),
        "guidance_scale": StrictFloat(
            load_default=settings.default_guidance, validate=validate.Range(min=GUIDANCE_MIN, max=GUIDANCE_MAX),
            metadata={"description": "Classifier-free guidance (CFG) scale; SDXL works best from 5 to 9."},
        ),
        "seed": StrictInteger(
            load_default=None, allow_none=True, validate=validate.Range(min=-1, max=MAX_SEED),
            metadata={"description": f"0 to {MAX_SEED}; null, -1 or absent draws one at random (returned in meta)."},
        ),
        "scheduler": fields.String(
            load_default="default", validate=validate.OneOf(list(SCHEDULERS)),
            metadata={"description": "Sampler; 'default' keeps the model's own."},
        ),
    }


def generate_request_schema(settings: Settings) -> Schema:
    """A schema instance for ``POST /api/v1/generate`` (unknown fields are refused)."""
    cls = Schema.from_dict(generate_request_fields(settings), name="GenerateRequest")
    return cls(unknown=RAISE)


def to_params(data: dict[str, Any], rng: random.Random | None = None) -> GenerationParams:
    """Turn a loaded request into :class:`GenerationParams`, drawing a seed if none was given."""
    values = dict(data)
    if values.get("seed") in (None, -1):
        values["seed"] = (rng or random.SystemRandom()).randint(0, MAX_SEED)
    return GenerationParams(**values)


class JobListQuerySchema(Schema):
    """Query of ``GET /api/v1/jobs``."""

    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    status = fields.String(
        load_default=None, validate=validate.OneOf(["queued", "running", "succeeded", "failed", "cancelled"])
    )


class ErrorSchema(Schema):
    error = fields.String(required=True, metadata={"description": "Stable machine-readable code."})
    message = fields.String(required=True, metadata={"description": "What went wrong and what to do."})
    fields_ = fields.Dict(
        data_key="fields", keys=fields.String(), values=fields.Raw(),
        metadata={"description": "Per-field problems, for validation errors."},
    )


class MetaSchema(Schema):
    id = fields.String()
    model_id = fields.String()
    prompt = fields.String()
    negative_prompt = fields.String()
    width = fields.Integer()
    height = fields.Integer()
    steps = fields.Integer()
    guidance_scale = fields.Float()
    seed = fields.Integer()
    scheduler = fields.String()
    sampler_name = fields.String()
    device = fields.String()
    dtype = fields.String()
    attention = fields.String(allow_none=True)
    vae_upcast = fields.Boolean(metadata={"description": "True when a half-precision VAE decode overflowed and was redone in float32."})
    created_at = fields.String()
    timings = fields.Dict(keys=fields.String(), values=fields.Float(allow_none=True))


class GenerateResponseSchema(Schema):
    id = fields.String(required=True)
    image_url = fields.String(required=True)
    meta_url = fields.String(required=True)
    meta = fields.Nested(MetaSchema, required=True)
