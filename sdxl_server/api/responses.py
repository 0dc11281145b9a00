"""The response bodies the server answers with, as marshmallow schemas: they are never loaded,
only documented. Each route of the table (:data:`.routes.ROUTES`) names its own, :mod:`.openapi`
registers them, and schemathesis checks the live answers against the document (a missing
required key or a wrong type fails a test; tests/test_routes.py checks no schema is left
unnamed). Views answer plain dicts rather than dump through these: a dump reorders keys, writes a
``Float`` field's integer as ``7.0``, and silently drops a key its schema forgot. Request
schemas, which validate, live in :mod:`.schemas`."""

from __future__ import annotations

from marshmallow import Schema, fields, validate

from ..jobs.states import JOB_STATUSES
from ..jobs.webhooks import EVENTS as WEBHOOK_EVENTS
from ..params import INPUT_ROLES, REFINER_MODES
from .schemas import LoraChoiceSchema

class ErrorSchema(Schema):
    error = fields.String(required=True, metadata={"description": "Stable machine-readable code."})
    message = fields.String(required=True, metadata={"description": "What went wrong and what to do."})
    fields_ = fields.Dict(
        data_key="fields", keys=fields.String(), values=fields.Raw(),
        metadata={"description": "Per-field problems, for validation errors."},
    )


class ModeFieldsSchema(Schema):
    """Image to image, inpainting and refiner settings, as jobs and metadata report them."""

    strength = fields.Float()
    mask_blur = fields.Integer()
    inpaint_area = fields.String()
    mask_padding = fields.Integer()
    resize_mode = fields.Integer()
    inpainting_fill = fields.Integer()
    refiner = fields.String(validate=validate.OneOf(REFINER_MODES))
    refiner_switch_at = fields.Float()
    refiner_strength = fields.Float()
    hires = fields.Boolean(metadata={"description": "Hires fix ran (its fields below; absent from metadata without it)."})
    hires_scale = fields.Float()
    hires_width = fields.Integer(metadata={"description": "0: from hires_scale (or from hires_height)."})
    hires_height = fields.Integer()
    hires_upscaler = fields.String()
    hires_steps = fields.Integer(metadata={"description": "0: the request's steps."})
    hires_denoise = fields.Float()
    hires_prompt = fields.String()
    hires_negative_prompt = fields.String()
    hires_scheduler = fields.String(metadata={"description": "The second pass's sampler; empty: the request's."})
    hires_schedule = fields.String(metadata={"description": "The second pass's schedule type; empty: the sampler's own."})
    upscaler = fields.String()
    upscaler_2 = fields.String()
    upscaler_2_visibility = fields.Float()
    upscale_crop_width = fields.Integer()
    upscale_crop_height = fields.Integer()
    clip_skip = fields.Integer(metadata={"description": "1: the text encoders' usual layer; N: N-1 layers earlier."})
    styles = fields.List(fields.String(), metadata={"description": "The prompt styles applied (STYLES_FILE), in order."})
    controlnet = fields.List(fields.Dict(), metadata={
        "description": "The ControlNet units as run (their fields as in the request, without the image)."})
    ip_adapter = fields.List(fields.Dict(), metadata={"description": "The IP-Adapter units as run ({name, weight, start, end})."})


# The unit roles' images (control0..., ip0...), present only when used: SHA-256s in a job's params
# (``control0_image``) and in the metadata (``control0_image_sha256``).
_UNIT_ROLES = [role for role in INPUT_ROLES.values() if not role.listed]
UnitImagesSchema = Schema.from_dict(
    {role.field: fields.String(metadata={"description": "SHA-256 of a unit's image as stored."}) for role in _UNIT_ROLES},
    name="UnitImages",
)
UnitHashesSchema = Schema.from_dict(
    {f"{role.field}_sha256": fields.String(metadata={"description": "SHA-256 of a unit's image as it was used (PNG)."})
     for role in _UNIT_ROLES},
    name="UnitHashes",
)


class MetaSchema(ModeFieldsSchema, UnitHashesSchema):
    id = fields.String()
    model_id = fields.String()
    prompt = fields.String()
    negative_prompt = fields.String()
    width = fields.Integer()
    height = fields.Integer()
    steps = fields.Integer()
    guidance_scale = fields.Float()
    seed = fields.Integer()
    sampler = fields.String()
    schedule = fields.String()
    sampler_name = fields.String(metadata={"description": "A1111's word for the sampler that ran."})
    schedule_type = fields.String(metadata={"description": "A1111's word for the schedule type."})
    presets = fields.Dict(keys=fields.String(), values=fields.String(),
                          metadata={"description": "field -> the preset that gave it ('model', 'lora:NAME')."})
    device = fields.String()
    dtype = fields.String()
    attention = fields.String(allow_none=True)
    vae_upcast = fields.Boolean(metadata={"description": "True when a half-precision VAE decode overflowed and was redone in float32."})
    created_at = fields.String()
    timings = fields.Dict(keys=fields.String(), values=fields.Float(allow_none=True))
    job_id = fields.String()
    index = fields.Integer(metadata={"description": "This image's place in its job's batch, from 0."})
    num_images = fields.Integer()
    model = fields.String(metadata={"description": "The model's name (GET /api/v1/models); model_id is where it was loaded from."})
    loras = fields.List(fields.Nested(LoraChoiceSchema))
    lora_hashes = fields.Dict(keys=fields.String(), values=fields.String(),
                              metadata={"description": "A1111's short hash of each LoRA file, by name."})
    mode = fields.String(validate=validate.OneOf(["txt2img", "img2img", "inpaint", "upscale"]))
    refiner_id = fields.String(metadata={"description": "The refiner that ran (with refiner 'ensemble' or 'image')."})
    hires_sampler_name = fields.String(metadata={"description": "Hires fix: the second pass's sampler."})
    image_width = fields.Integer(metadata={"description": "Hires fix: the image's width (width is the first pass's)."})
    image_height = fields.Integer(metadata={"description": "Hires fix: the image's height."})
    upscale_image_sha256 = fields.String(metadata={"description": "Upscale jobs: SHA-256 of the image upscaled (PNG)."})
    interrupted_at_step = fields.Integer(metadata={
        "description": "Present when A1111's /sdapi/v1/interrupt or skip stopped the job: the step its image was made at."})
    warnings = fields.List(fields.String(), metadata={
        "description": "A1111 requests: what was asked for and not applied (as in the answer's info)."})
    init_image_sha256 = fields.String(metadata={"description": "SHA-256 of the input image as it was used (PNG)."})
    mask_sha256 = fields.String(metadata={"description": "Inpainting: SHA-256 of the mask as it was used (PNG)."})


class ImageSchema(Schema):
    id = fields.String(required=True)
    image_url = fields.String(required=True)
    meta_url = fields.String(required=True)
    meta = fields.Nested(MetaSchema, required=True)


class GenerateResponseSchema(ImageSchema):
    """The first image at the top level (the seed README's shape); with ``num_images`` > 1, every
    image in ``images``."""

    images = fields.List(fields.Nested(ImageSchema))


class ParamsSchema(ModeFieldsSchema, UnitImagesSchema):
    prompt = fields.String(required=True)
    negative_prompt = fields.String(required=True)
    width = fields.Integer(required=True)
    height = fields.Integer(required=True)
    steps = fields.Integer(required=True)
    guidance_scale = fields.Float(required=True)
    seed = fields.Integer(required=True)
    sampler = fields.String(required=True)
    schedule = fields.String(required=True)
    presets = fields.Dict(keys=fields.String(), values=fields.String(),
                          metadata={"description": "field -> the preset that gave it ('model', 'lora:NAME')."})
    num_images = fields.Integer(required=True)
    model = fields.String(metadata={"description": "The model the job runs on."})
    loras = fields.List(fields.Nested(LoraChoiceSchema))
    init_image = fields.String(allow_none=True, metadata={"description": "SHA-256 of the input image (null: text to image)."})
    mask = fields.String(allow_none=True, metadata={"description": "SHA-256 of the mask (null: no inpainting)."})
    upscale_image = fields.String(allow_none=True, metadata={"description": "Upscale jobs: SHA-256 of the image (null: a generation)."})


class WebhookDeliverySchema(Schema):
    """One event owed to a job's webhook, and how its delivery went."""

    id = fields.String(required=True, metadata={"description": "Its webhook-id header (the same on every retry)."})
    event = fields.String(required=True, validate=validate.OneOf(WEBHOOK_EVENTS))
    state = fields.String(required=True, validate=validate.OneOf(["pending", "delivered", "failed"]))
    attempts = fields.Integer(required=True)
    created_at = fields.Float(required=True)
    next_at = fields.Float(required=True, metadata={"description": "When it is (or was) due next, Unix seconds."})
    last_at = fields.Float(required=True, allow_none=True)
    last_status = fields.Integer(required=True, allow_none=True, metadata={"description": "The receiver's last HTTP status."})
    last_error = fields.String(required=True, allow_none=True)
    delivered_at = fields.Float(required=True, allow_none=True)


class JobWebhookSchema(Schema):
    url = fields.String(required=True, metadata={"description": "Without its query and credentials."})
    events = fields.List(fields.String(validate=validate.OneOf(WEBHOOK_EVENTS)), required=True)
    deliveries = fields.List(fields.Nested(WebhookDeliverySchema), required=True)


class JobSchema(Schema):
    id = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(JOB_STATUSES))
    position = fields.Integer(required=True, allow_none=True, metadata={"description": "1: next to run; 0: running; null: finished."})
    step = fields.Integer(required=True, metadata={"description": "Completed denoising steps."})
    total_steps = fields.Integer(required=True)
    progress = fields.Float(required=True, metadata={"description": "0 to 1."})
    created_at = fields.Float(required=True, metadata={"description": "Unix seconds."})
    started_at = fields.Float(required=True, allow_none=True)
    finished_at = fields.Float(required=True, allow_none=True)
    params = fields.Nested(ParamsSchema, required=True)
    eta_s = fields.Float(allow_none=True, metadata={"description": "Seconds until the job finishes (null: not measured yet)."})
    estimated_start_at = fields.Float(allow_none=True)
    estimated_finish_at = fields.Float(allow_none=True)
    cancel_requested = fields.Boolean()
    image_url = fields.String()
    meta_url = fields.String()
    meta = fields.Nested(MetaSchema)
    images = fields.List(fields.Nested(ImageSchema))
    error = fields.Nested(ErrorSchema)
    webhook = fields.Nested(JobWebhookSchema, metadata={"description": "GET /api/v1/jobs/{id} of a job with a webhook."})


class JobListSchema(Schema):
    jobs = fields.List(fields.Nested(JobSchema), required=True)
    next_before = fields.Integer(
        required=True, allow_none=True, metadata={"description": "Pass as ?before= for the next page; null on the last."}
    )


class HealthModelSchema(Schema):
    """Without the key (API_KEY set): only tiny, state, loaded and load_seconds."""

    id = fields.String()
    source = fields.String(validate=validate.OneOf(["tiny", "hub", "folder", "single_file"]))
    location = fields.String()
    origin = fields.String(validate=validate.OneOf(["MODEL_ID", "MODEL_DIR", "default", "MODELS_DIR"]))
    vae = fields.String(allow_none=True)
    tiny = fields.Boolean(required=True)
    state = fields.String(required=True, validate=validate.OneOf(["not_loaded", "loading", "ready", "failed"]))
    loaded = fields.Boolean(required=True)
    load_seconds = fields.Float(required=True, allow_none=True)
    error = fields.String(allow_none=True, metadata={"description": "Why loading failed, and the fix."})
    name = fields.String(metadata={"description": "The running model's name (GET /api/v1/models)."})


class HealthModelsSchema(Schema):
    running = fields.String(metadata={"description": "The model jobs run on now."})
    loaded = fields.Dict(keys=fields.String(), values=fields.String(),
                         metadata={"description": "Every loaded model and where: a device, or cpu (RAM cache)."})


class HealthQueueSchema(Schema):
    """Without the key (API_KEY set): no job ids and no problem text; ``busy`` counts the running jobs."""

    running = fields.String(allow_none=True, metadata={"description": "The job running longest."})
    running_jobs = fields.List(fields.String(), metadata={"description": "Every running job, oldest first."})
    busy = fields.Integer(metadata={"description": "Without the key: how many jobs are running."})
    concurrency = fields.Integer(required=True, metadata={"description": "Jobs that may run at once (MAX_CONCURRENCY)."})
    waiting = fields.Integer(required=True)
    capacity = fields.Integer(required=True)
    eta_s = fields.Float(required=True, allow_none=True)
    problem = fields.String(
        allow_none=True,
        metadata={"description": "Why jobs cannot run now (the job store cannot be written, the worker stopped)."},
    )


class HealthSchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ok", "loading", "error", "shutting_down"]))
    version = fields.String(required=True)
    auth_required = fields.Boolean(required=True, metadata={"description": "Whether API routes need API_KEY."})
    cuda_available = fields.Boolean(required=True)
    device = fields.String(required=True)
    dtype = fields.String(required=True)
    gpu = fields.Dict(required=True, allow_none=True)
    model = fields.Nested(HealthModelSchema, required=True)
    refiner = fields.Dict(required=True, allow_none=True, metadata={"description": "The refiner (null: none configured): id, source, location, origin, state, loaded, load_seconds, error, placement ({unet: resident|swapped|offloaded|cpu, reason})."})
    attention = fields.String(required=True, allow_none=True)
    options = fields.Dict(required=True)
    compile = fields.Dict(metadata={"description": "COMPILE: mode, state (off, compiling, ready, failed), seconds, "
                                                   "dynamic, cache_dir, error."})
    versions = fields.Dict(required=True)
    queue = fields.Nested(HealthQueueSchema, required=True)
    backend = fields.Dict(
        metadata={"description": "BACKEND=ray only: name, address, replicas (or min/max_replicas), gpus_per_replica."}
    )
    embeddings = fields.Dict(metadata={
        "description": "Textual-inversion embeddings (EMBEDDINGS_DIR): loaded and skipped, as /sdapi/v1/embeddings lists them."})
    models = fields.Nested(HealthModelsSchema)


class InfoSchema(Schema):
    version = fields.String(required=True)
    model = fields.Dict(required=True)
    models = fields.Dict(metadata={"description": "running, loaded (name -> where), default, available."})
    prompt_syntax = fields.String(metadata={"description": "a1111 or plain (PROMPT_SYNTAX)."})
    refiner = fields.Dict(required=True, allow_none=True, metadata={"description": "The refiner (id, state, defaults); null: none configured."})
    limits = fields.Dict(required=True)
    defaults = fields.Dict(required=True)
    schedulers = fields.Dict(keys=fields.String(), values=fields.String(), required=True,
                             metadata={"description": "Every name the older scheduler field takes -> its label."})
    samplers = fields.Dict(keys=fields.String(), values=fields.Dict(), required=True,
                           metadata={"description": "sampler -> {label, schedules: the schedule types it takes}."})
    schedules = fields.Dict(keys=fields.String(), values=fields.Dict(), required=True,
                            metadata={"description": "schedule type -> {label, description}."})
    job_statuses = fields.List(fields.String(), required=True, metadata={"description": "Every status a job can have."})
    terminal_statuses = fields.List(
        fields.String(), required=True, metadata={"description": "The statuses a job ends in (it never changes again)."}
    )


class IndexSchema(Schema):
    name = fields.String(required=True)
    version = fields.String(required=True)
    status = fields.String(required=True)
    model = fields.String(required=True, allow_none=True, metadata={"description": "null without the key (API_KEY set)."})
    endpoints = fields.Dict(keys=fields.String(), values=fields.String(), required=True)


# --- compatible APIs (documentation of their bodies, for the OpenAPI spec) -------------------


class OpenAIErrorDetailSchema(Schema):
    message = fields.String(required=True)
    type = fields.String(required=True)
    param = fields.String(required=True, allow_none=True)
    code = fields.String(required=True, allow_none=True)


class OpenAIErrorSchema(Schema):
    error = fields.Nested(OpenAIErrorDetailSchema, required=True)


class OpenAIImageSchema(Schema):
    url = fields.String(metadata={"description": "With response_format=url (the default but for gpt-image-*): a PNG."})
    b64_json = fields.String(metadata={"description": "With response_format=b64_json: the image in output_format, base64."})
    revised_prompt = fields.String(metadata={"description": "The prompt as the model was given it (without <lora:...> tags)."})


class OpenAIImagesResponseSchema(Schema):
    created = fields.Integer(required=True)
    data = fields.List(fields.Nested(OpenAIImageSchema), required=True)
    size = fields.String(required=True, metadata={"description": "The size made, 'WIDTHxHEIGHT' (fitted into the limits)."})
    output_format = fields.String(required=True, metadata={"description": "png, jpeg or webp."})
    quality = fields.String(required=True, metadata={"description": "As requested ('auto' when absent)."})
    background = fields.String(required=True, metadata={"description": "Always 'opaque'."})


class OpenAIModelSchema(Schema):
    id = fields.String(required=True)
    object = fields.String(required=True)
    created = fields.Integer(required=True)
    owned_by = fields.String(required=True)


class OpenAIModelListSchema(Schema):
    object = fields.String(required=True)
    data = fields.List(fields.Nested(OpenAIModelSchema), required=True)


class A1111ErrorSchema(ErrorSchema):
    detail = fields.String(required=True, metadata={"description": "The message again, where A1111 clients look for it."})


class Txt2ImgResponseSchema(Schema):
    images = fields.List(fields.String(), required=True, metadata={"description": "PNG images, base64."})
    parameters = fields.Dict(required=True)
    info = fields.String(required=True, metadata={"description": "JSON text: seed, all_seeds, infotexts, ..."})


class ProgressResponseSchema(Schema):
    progress = fields.Float(required=True)
    eta_relative = fields.Float(required=True)
    state = fields.Dict(required=True)
    current_image = fields.String(required=True, allow_none=True, metadata={"description": "JPEG preview, base64."})
    textinfo = fields.String(required=True, allow_none=True)


class SDModelSchema(Schema):
    title = fields.String(required=True)
    model_name = fields.String(required=True)
    hash = fields.String(required=True, allow_none=True)
    sha256 = fields.String(required=True, allow_none=True)
    filename = fields.String(required=True)
    config = fields.String(required=True, allow_none=True)


class SamplerSchema(Schema):
    name = fields.String(required=True)
    aliases = fields.List(fields.String(), required=True)
    options = fields.Dict(required=True)


class ScheduleTypeSchema(Schema):
    name = fields.String(required=True)
    label = fields.String(required=True)
    aliases = fields.List(fields.String(), required=True, allow_none=True)
    default_rho = fields.Float(required=True, allow_none=True)
    need_inner_model = fields.Boolean(required=True)


class LoraSchema(Schema):
    """One file in LORA_DIR (``GET /api/v1/loras``)."""

    name = fields.String(metadata={"description": "What requests call it: the file name without .safetensors."})
    file = fields.String(metadata={"description": "Path inside LORA_DIR."})
    size = fields.Integer(metadata={"description": "Bytes on disk."})
    layout = fields.String(metadata={"description": "kohya (A1111), diffusers, or unknown."})
    base_model = fields.String(allow_none=True, metadata={"description": "Family from the file's metadata (sdxl, sd1, ...), null if not stated."})
    usable = fields.Boolean()
    problem = fields.String(allow_none=True, metadata={"description": "Why it cannot be used (not a LoRA, another family, unreadable)."})
    preset = fields.Dict(allow_none=True, metadata={"description": "Recommended settings from its A1111 card file (name.json)."})
    preset_problem = fields.String(allow_none=True, metadata={"description": "Why its card file's settings are not used."})
    activation_text = fields.String(metadata={"description": "A1111's card: words that call it up (shown, not applied)."})
    preferred_weight = fields.Float(metadata={"description": "A1111's card: the weight it is made for."})
    notes = fields.String(metadata={"description": "A1111's card: notes."})
    sd_version = fields.String(metadata={"description": "A1111's card: the model family it says."})
    negative_text = fields.String(metadata={"description": "A1111's card: its negative words."})


class LoraListSchema(Schema):
    lora_dir = fields.String()
    loras = fields.List(fields.Nested(LoraSchema))


class A1111LoraSchema(Schema):
    """One entry of A1111's ``GET /sdapi/v1/loras``."""

    name = fields.String()
    alias = fields.String()
    path = fields.String()
    metadata = fields.Dict()


class ModelSchema(Schema):
    """One model this server can serve (``GET /api/v1/models``)."""

    name = fields.String(metadata={"description": "What requests call it (`model`, A1111's sd_model_checkpoint)."})
    kind = fields.String(metadata={"description": "tiny, hub, folder or single_file."})
    source = fields.String(metadata={"description": "Hub id, folder or file."})
    origin = fields.String(metadata={"description": "MODEL_ID, MODEL_DIR, default or MODELS_DIR."})
    size = fields.Integer(allow_none=True, metadata={"description": "Bytes on disk (null: a Hub model)."})
    default = fields.Boolean()
    loaded = fields.String(allow_none=True, metadata={"description": "Where it is loaded (a device, or cpu for the RAM cache); null: not loaded."})
    broken = fields.String(allow_none=True, metadata={"description": "Why it cannot be loaded; null: usable."})
    preset = fields.Dict(allow_none=True, metadata={"description": "Recommended settings from <name>.preset.json."})
    preset_problem = fields.String(allow_none=True, metadata={"description": "Why its sidecar's settings are not used."})


class ModelListSchema(Schema):
    default = fields.String()
    models_dir = fields.String()
    models = fields.List(fields.Nested(ModelSchema))


class TokenCountSchema(Schema):
    tokens = fields.Integer(metadata={"description": "Tokens, without the start and end tokens of each chunk."})
    chunks = fields.Integer(metadata={"description": "Chunks the encoder will use (each 75 tokens at most)."})
    chunk_tokens = fields.List(fields.Integer(), metadata={"description": "Tokens in each chunk."})
    chunk_size = fields.Integer()


class TokenizeResponseSchema(Schema):
    prompt = fields.Nested(TokenCountSchema)
    negative_prompt = fields.Nested(TokenCountSchema)
