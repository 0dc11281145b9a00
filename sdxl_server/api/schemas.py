"""Request and response schemas (marshmallow). They validate every body and feed the OpenAPI spec.

The request schema carries the server's limits (``MAX_WIDTH`` and friends), so it is built per
application by :func:`generate_request_schema`. Never imports torch.
"""

from __future__ import annotations

import random
import unicodedata
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from ..config import Settings
from ..jobs.states import JOB_STATUSES
from ..errors import ValidationFailed
from ..jobs.webhooks import EVENTS as WEBHOOK_EVENTS
from ..params import (
    CLIP_SKIP_MAX, CONTROL_MODES, CONTROL_WEIGHT_MAX, INPAINT_AREAS, INPAINTING_FILLS, IP_ADAPTER_WEIGHT_MAX, MAX_IP_ADAPTERS,
    MAX_SEED, REFINER_MODES, RESIZE_MODES, GenerationParams,
)
from ..sampling import AUTOMATIC, DEFAULT_SAMPLER, SAMPLERS, SCHEDULES, sampler_names, schedule_problem, split_combined
from ..pipeline.lora_files import WEIGHT_MAX as LORA_WEIGHT_MAX
from ..pipeline.lora_files import WEIGHT_MIN as LORA_WEIGHT_MIN
from ..pipeline.model_catalog import MAX_MODEL_NAME
from ..pipeline.preprocessors import AVAILABLE, PREPROCESSORS, threshold_problem
from .hires import flatten, hires_request_fields

GUIDANCE_MIN, GUIDANCE_MAX = 0.0, 30.0
MAX_REQUEST_STYLES = 20
MIN_SIZE = 64
MAX_WEBHOOK_URL = 2048
PROCESSOR_RES_MIN, PROCESSOR_RES_MAX = 64, 2048


class StrictInteger(fields.Integer):
    """A JSON integer: no strings, no booleans, no fractions. ``512.0`` is 512, as JSON Schema says."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
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


# The same rules as StrictString and _not_blank, for the OpenAPI spec (ECMA and Python regex alike;
# lone surrogates, also refused, cannot be expressed in every regex engine and are left out).
_CONTROL = r"\u0000-\u0008\u000B\u000C\u000E-\u001F\u007F-\u009F"
_ZERO_WIDTH = r"\u200B-\u200D\u2060\uFEFF"  # zero-width space, (non-)joiner, word joiner, BOM
TEXT_PATTERN = rf"^[^{_CONTROL}]*$"
PROMPT_PATTERN = rf"^[^{_CONTROL}]*[^\s{_CONTROL}{_ZERO_WIDTH}][^{_CONTROL}]*$"  # and something visible
_INVISIBLE = dict.fromkeys(map(ord, "\u200b\u200c\u200d\u2060\ufeff"))  # the same zero-width characters


def _not_blank(value: str) -> None:
    if not value.translate(_INVISIBLE).strip():
        raise ValidationError("Must not be empty or only whitespace and zero-width characters.")


def _multiple_of_8(value: int) -> None:
    if value % 8:
        raise ValidationError(f"Must be a multiple of 8 (got {value}; try {max(MIN_SIZE, value // 8 * 8)}).")


def _size(maximum: int) -> list:
    return [validate.Range(min=MIN_SIZE, max=maximum), _multiple_of_8]


class LoraChoiceSchema(Schema):
    """One LoRA of a request: its name in LORA_DIR (the file name without .safetensors) and weight."""

    name = StrictString(required=True, validate=_not_blank, metadata={"description": "A name from GET /api/v1/loras."})
    weight = StrictFloat(
        load_default=1.0, validate=validate.Range(min=LORA_WEIGHT_MIN, max=LORA_WEIGHT_MAX),
        metadata={"description": f"{LORA_WEIGHT_MIN:g} to {LORA_WEIGHT_MAX:g}; 1 is the LoRA as trained."},
    )


def generate_request_fields(settings: Settings) -> dict[str, fields.Field]:
    """The fields of a generation request, with this server's limits and defaults."""
    text = validate.Length(max=settings.max_prompt_length)
    return {
        "prompt": StrictString(
            required=True, validate=[_not_blank, text],
            metadata={"description": "What to draw.", "example": "a lighthouse at dusk", "pattern": PROMPT_PATTERN},
        ),
        "negative_prompt": StrictString(
            load_default="", validate=text, metadata={"description": "What to avoid.", "pattern": TEXT_PATTERN}
        ),
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
        **sampler_request_fields(),
        "num_images": StrictInteger(
            load_default=1, validate=validate.Range(min=1, max=settings.max_batch),
            metadata={"description": f"Images to make in one pipeline call (1 to {settings.max_batch}); image i uses seed + i."},
        ),
        **conditioning_request_fields(settings),
        **image_request_fields(settings),
        **refiner_request_fields(),
        **webhook_request_fields(),
        **control_request_fields(settings.max_controlnets),
        **hires_request_fields(settings),
    }


def sampler_request_fields() -> dict[str, fields.Field]:
    """The sampler and its schedule type (GET /api/v1/info lists both, and which schedules each
    sampler takes); ``scheduler``, the older field, takes a sampler or an old combined name."""
    return {
        "sampler": fields.String(
            load_default=None, allow_none=True, validate=validate.OneOf(list(SAMPLERS)),
            metadata={"description": "Sampler (GET /api/v1/info's samplers); 'default' keeps the model's own."},
        ),
        "schedule": fields.String(
            load_default=None, allow_none=True, validate=validate.OneOf(list(SCHEDULES)),
            metadata={"description": "Schedule type (A1111's 'Schedule type'): one the sampler takes; "
                                     "'automatic' keeps the model's own spacing."},
        ),
        "scheduler": fields.String(
            load_default=None, allow_none=True, validate=validate.OneOf(sampler_names()),
            metadata={"description": "Older name of sampler; also takes 'dpmpp_2m_karras' and "
                                     "'dpmpp_2m_sde_karras' (sampler and Karras schedule)."},
        ),
    }


def sampler_pair(values: dict[str, Any]) -> tuple[str, str]:
    """The request's (sampler, schedule) from ``sampler``, ``schedule`` and the older ``scheduler``
    (popped from ``values``); 422 naming the field when they disagree. Whether the sampler takes
    the schedule is checked once the presets are in (:func:`check_sampler_pair`)."""
    sampler, schedule = values.pop("sampler", None), values.pop("schedule", None)
    older = values.pop("scheduler", None)
    if older is not None:
        old_sampler, old_schedule = split_combined(older)
        if sampler not in (None, old_sampler) or (old_schedule != AUTOMATIC and schedule not in (None, old_schedule)):
            raise ValidationFailed("scheduler and sampler/schedule disagree: send sampler and schedule only",
                                   fields={"scheduler": ["Disagrees with sampler or schedule."]})
        sampler, schedule = old_sampler, schedule or old_schedule
    return sampler or DEFAULT_SAMPLER, schedule or AUTOMATIC


def check_sampler_pair(params: GenerationParams) -> GenerationParams:
    """``params``, once its sampler is known to take its schedule (after the presets: a preset may
    name the sampler a request's schedule needs); else 422 naming ``schedule``."""
    problem = schedule_problem(params.sampler, params.schedule)
    if problem:
        raise ValidationFailed(problem, fields={"schedule": [problem[0].upper() + problem[1:] + "."]})
    return params


def conditioning_request_fields(settings: Settings) -> dict[str, fields.Field]:
    """What the request conditions on beside its prompt: the model, LoRAs, styles, CLIP skip."""
    return {
        "model": fields.String(
            load_default="", validate=validate.Length(max=MAX_MODEL_NAME),
            metadata={"description": "A model's name from GET /api/v1/models; empty: the default."},
        ),
        "loras": fields.List(
            fields.Nested(LoraChoiceSchema), load_default=list, validate=validate.Length(max=settings.max_loras),
            metadata={"description": f"LoRAs from LORA_DIR for this job only (at most {settings.max_loras}); "
                                     "GET /api/v1/loras lists them."},
        ),
        "styles": fields.List(
            StrictString(validate=validate.Length(min=1, max=MAX_MODEL_NAME)), load_default=list,
            validate=validate.Length(max=MAX_REQUEST_STYLES),
            metadata={"description": f"Prompt styles from GET /api/v1/styles (at most {MAX_REQUEST_STYLES}), applied in "
                                     "order as A1111 does: {prompt} in a style takes the prompt, else the style is "
                                     "appended after ', '. The metadata records the prompt as styled."},
        ),
        "clip_skip": StrictInteger(
            load_default=1, validate=validate.Range(min=1, max=CLIP_SKIP_MAX),
            metadata={"description": f"CLIP skip as A1111 counts it (1 to {CLIP_SKIP_MAX}): 1 is SDXL's usual "
                                     "(penultimate) text-encoder layer; n takes both encoders' layer n - 1 earlier."},
        ),
    }


def image_request_fields(settings: Settings) -> dict[str, fields.Field]:
    """The fields of image to image and inpainting, added to the generation request."""
    return {
        "init_image": StrictString(
            load_default=None, allow_none=True,
            metadata={"description": "Image to start from: PNG, JPEG or WebP, base64 (a data: URL too). Without "
                      "width and height the output takes its size, fitted to the limits (multiples of 8)."},
        ),
        "strength": StrictFloat(
            load_default=0.75, validate=validate.Range(min=0, max=1, min_inclusive=False),
            metadata={"description": "With init_image: how much is repainted (0 < strength <= 1); "
                      "about steps x strength steps run.", "exclusiveMinimum": 0},
        ),
        "mask": StrictString(
            load_default=None, allow_none=True,
            metadata={"description": "With init_image: base64 mask, white repaints, black keeps (or opaque "
                      "repaints on a transparent layer); resized to the image. Pixels it leaves out come back unchanged."},
        ),
        "mask_blur": StrictInteger(
            load_default=4, validate=validate.Range(min=0, max=64), metadata={"description": "Mask edge blur, pixels."}
        ),
        "inpaint_area": fields.String(
            load_default="whole", validate=validate.OneOf(INPAINT_AREAS),
            metadata={"description": "'whole' repaints the whole picture; 'masked' only a padded crop around "
                      "the mask, at full resolution (A1111's 'Only masked')."},
        ),
        "mask_padding": StrictInteger(
            load_default=32, validate=validate.Range(min=0, max=1024),
            metadata={"description": "With inpaint_area 'masked': pixels around the mask in the crop."},
        ),
        "resize_mode": StrictInteger(
            load_default=0, validate=validate.OneOf(list(RESIZE_MODES)),
            metadata={"description": "When width/height differ from the input's: 0 stretch, 1 crop, 2 fill."},
        ),
        "inpainting_fill": StrictInteger(
            load_default=1, validate=validate.OneOf(list(INPAINTING_FILLS)),
            metadata={"description": "What the masked area starts from: 0 its surroundings blurred, "
                      "1 the original, 2 noise, 3 flat grey."},
        ),
    }


def refiner_request_fields() -> dict[str, fields.Field]:
    """The refiner's fields of the generation request (its group in :class:`GenerationParams`)."""
    return {
        "refiner": fields.String(
            load_default="none", validate=validate.OneOf(REFINER_MODES),
            metadata={"description": "'ensemble': the base stops at refiner_switch_at and the refiner finishes the "
                      "latents; 'image': the refiner repaints the base's image at refiner_strength. Needs a "
                      "refiner (REFINER_ID; /api/v1/info says)."},
        ),
        "refiner_switch_at": StrictFloat(
            load_default=0.8, validate=validate.Range(min=0, max=1, min_inclusive=False, max_inclusive=False),
            metadata={"description": "With refiner 'ensemble': the fraction of the schedule the base runs.",
                      "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        ),
        "refiner_strength": StrictFloat(
            load_default=0.3, validate=validate.Range(min=0, max=1, min_inclusive=False),
            metadata={"description": "With refiner 'image': how much the refiner repaints.", "exclusiveMinimum": 0},
        ),
    }


def webhook_request_fields() -> dict[str, fields.Field]:
    """Where the job's events are delivered (``api/webhook_targets.py`` checks the URL)."""
    return {
        "webhook": StrictString(
            load_default=None, allow_none=True, validate=validate.Length(min=1, max=MAX_WEBHOOK_URL),
            metadata={"description": "An http(s) URL the job's events are POSTed to, signed per Standard Webhooks "
                                     "(docs/operations.md); null: the server's WEBHOOK_URL, if any. Private, loopback "
                                     "and link-local targets are refused unless WEBHOOK_ALLOW names them."},
        ),
        "webhook_events": fields.List(
            fields.String(validate=validate.OneOf(WEBHOOK_EVENTS)), load_default=None, allow_none=True,
            validate=validate.Length(min=1, max=len(WEBHOOK_EVENTS)),
            metadata={"description": "Which events are delivered; default: the job's end (completed, failed, "
                                     "cancelled). progress comes at most once per WEBHOOK_PROGRESS_INTERVAL."},
        ),
    }


def preprocessor_name(value: str) -> None:
    """A preprocessor that runs here; one that needs weights is refused with the reason."""
    if value not in PREPROCESSORS:
        raise ValidationError(f"Must be one of: {', '.join(AVAILABLE)} (GET /api/v1/preprocessors).")
    if PREPROCESSORS[value].problem:
        raise ValidationError(f"Preprocessor {value!r} {PREPROCESSORS[value].problem}.")


def preprocessor_field(**kwargs: Any) -> fields.String:
    """A request's ``module``: a preprocessor that runs here (the OpenAPI enum lists those)."""
    return fields.String(validate=preprocessor_name, metadata={
        "enum": list(AVAILABLE), "description": "The preprocessor (GET /api/v1/preprocessors): 'none' when the "
                                                "image is a control map already."}, **kwargs)


def span_fields(starts: str, stops: str) -> tuple[fields.Float, fields.Float]:
    """A unit's ``start`` and ``end``: the fractions of the steps done when it ``starts`` and ``stops`` acting."""
    return tuple(StrictFloat(load_default=default, validate=validate.Range(min=0, max=1), metadata={
        "description": f"The fraction of the steps done when {when}."}) for default, when in ((0.0, starts), (1.0, stops)))  # type: ignore[return-value]


class ControlUnitSchema(Schema):
    """One ControlNet unit of a request."""

    model = StrictString(required=True, validate=validate.Length(min=1, max=200),
                         metadata={"description": "A ControlNet's name from GET /api/v1/controlnets."})
    image = StrictString(required=True, metadata={
        "description": "The control image: PNG, JPEG or WebP, base64 (a data: URL too); the preprocessor "
                       "(module) makes the control map from it at the job's size."})
    module = preprocessor_field(load_default="none")
    weight = StrictFloat(load_default=1.0, validate=validate.Range(min=0, max=CONTROL_WEIGHT_MAX), metadata={
        "description": f"0 to {CONTROL_WEIGHT_MAX:g}; 0 leaves the image as without the unit."})
    start, end = span_fields("the unit starts acting", "it stops (after start)")
    control_mode = fields.String(load_default="balanced", validate=validate.OneOf(list(CONTROL_MODES.values())), metadata={
        "description": "balanced; prompt (the prompt matters more); controlnet (the ControlNet matters more)."})
    resize_mode = StrictInteger(load_default=1, validate=validate.OneOf(list(RESIZE_MODES)), metadata={
        "description": "How the image meets the job's size: 0 stretch, 1 crop (the default), 2 fill."})
    type = fields.String(load_default="", validate=validate.Length(max=40), metadata={
        "description": "A ControlNet-Union model's control type (its control_types in GET /api/v1/controlnets)."})
    processor_res = StrictInteger(load_default=None, allow_none=True,
                                  validate=validate.Range(min=PROCESSOR_RES_MIN, max=PROCESSOR_RES_MAX), metadata={
        "description": "Pixels on the short side the preprocessor works at (null: the job's size)."})
    threshold_a = StrictFloat(load_default=None, allow_none=True, metadata={
        "description": "The preprocessor's first number (canny: low threshold); null: its default."})
    threshold_b = StrictFloat(load_default=None, allow_none=True, metadata={
        "description": "Its second number (canny: high threshold); null: its default."})

    @validates_schema
    def _check(self, data: dict[str, Any], **_: Any) -> None:
        check_span(data)
        check_preprocessor(data)


def check_span(data: dict[str, Any]) -> None:
    """A unit's ``start`` is below its ``end`` (else the error on ``start``)."""
    if data["start"] >= data["end"]:
        raise ValidationError("start must be below end (the unit must act on some steps).", "start")


def check_preprocessor(data: dict[str, Any]) -> None:
    """The thresholds given are in ``module``'s range (else the field's error)."""
    problem = threshold_problem(data["module"], data["threshold_a"], data["threshold_b"])
    if problem:
        raise ValidationError(problem[1], problem[0])


class IpAdapterUnitSchema(Schema):
    """One IP-Adapter unit of a request."""

    name = StrictString(required=True, validate=validate.Length(min=1, max=200),
                        metadata={"description": "An IP-Adapter's name from GET /api/v1/ip-adapters."})
    image = StrictString(required=True, metadata={
        "description": "The reference image whose style or subject the image takes: PNG, JPEG or WebP, base64."})
    weight = StrictFloat(load_default=1.0, validate=validate.Range(min=0, max=IP_ADAPTER_WEIGHT_MAX), metadata={
        "description": f"0 to {IP_ADAPTER_WEIGHT_MAX:g} (diffusers' IP-Adapter scale); 0 leaves the image as without it."})
    start, end = span_fields("the adapter starts acting (its scale is 0 before)", "it stops (after start; 0 from there)")

    @validates_schema
    def _check(self, data: dict[str, Any], **_: Any) -> None:
        check_span(data)


def control_request_fields(max_units: int) -> dict[str, fields.Field]:
    """The ``controlnet`` field of the generation request."""
    return {"controlnet": fields.List(fields.Nested(ControlUnitSchema), load_default=list, validate=validate.Length(max=max_units), metadata={
        "description": f"ControlNet units (at most {max_units}, MAX_CONTROLNETS): each guides the image by its control "
                       "image's edges, lines or layout."}),
        "ip_adapter": fields.List(fields.Nested(IpAdapterUnitSchema), load_default=list,
                                  validate=validate.Length(max=MAX_IP_ADAPTERS), metadata={
            "description": f"IP-Adapter units (at most {MAX_IP_ADAPTERS}): the image takes the style or subject of "
                           "each reference image. Unloaded again for the next job without them."}),
    }


def generate_request_schema(settings: Settings) -> Schema:
    """A schema instance for ``POST /api/v1/generate`` (unknown fields are refused)."""
    cls = Schema.from_dict(generate_request_fields(settings), name="GenerateRequest")
    return cls(unknown=RAISE)


def to_params(data: dict[str, Any], rng: random.Random | None = None) -> GenerationParams:
    """Turn a loaded request into :class:`GenerationParams`, drawing a seed if none was given."""
    values = flatten(dict(data))
    values["sampler"], values["schedule"] = sampler_pair(values)
    if values.get("seed") in (None, -1):
        values["seed"] = (rng or random.SystemRandom()).randint(0, MAX_SEED)
    return GenerationParams.from_dict(values)


class JobListQuerySchema(Schema):
    """Query of ``GET /api/v1/jobs``."""

    limit = fields.Integer(load_default=20, validate=validate.Range(min=1, max=100))
    before = fields.Integer(
        load_default=None, validate=validate.Range(min=1, max=2**63 - 1),
        metadata={"description": "The previous page's next_before: jobs older than that."},
    )
    status = fields.String(
        load_default=None, validate=validate.OneOf(JOB_STATUSES)
    )


def tokenize_request_schema(settings: Settings) -> Schema:
    """``POST /api/v1/tokenize``: the prompts to count, with a generation request's length limits
    (an empty prompt counts as 0 tokens)."""
    text = validate.Length(max=settings.max_prompt_length)
    cls = Schema.from_dict({
        "prompt": StrictString(required=True, validate=text, metadata={"pattern": TEXT_PATTERN}),
        "negative_prompt": StrictString(load_default="", validate=text, metadata={"pattern": TEXT_PATTERN}),
    }, name="TokenizeRequest")
    return cls(unknown=RAISE)
