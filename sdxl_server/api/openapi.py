"""The OpenAPI 3.1 document (``GET /openapi.json``), generated from the marshmallow schemas.

Built once per application with apispec's MarshmallowPlugin, so limits (``MAX_WIDTH``...) and
the security scheme (only when ``API_KEY`` is set) match the running server. Every route the
router serves is listed in :data:`OPERATIONS`; a test checks the two agree. Never imports torch.
"""

from __future__ import annotations

import copy

from dataclasses import dataclass, field
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema

from ..config import Settings
from . import a1111, a1111_img2img, a1111_probes, openai, openai_edits, responses, schemas

JSON = "application/json"
MULTIPART = "multipart/form-data"
ERRORS = {
    400: "The body is empty, not UTF-8, not JSON, or not a JSON object",
    401: "A valid API key is needed (when API_KEY is set)",
    403: "The origin is not allowed (CORS_ORIGINS)",
    404: "No such resource",
    409: "The job finished, or was cancelled",
    413: "The body is larger than MAX_BODY_BYTES (MAX_IMAGE_BODY_BYTES on routes that carry images), or an "
         "image has more than MAX_INPUT_PIXELS pixels",
    415: "The body is not JSON",
    422: "Invalid fields; `fields` names every one",
    429: "QUEUE_SIZE jobs already wait; see Retry-After",
    500: "The generation or the output write failed",
    503: "The model is unavailable, out of memory, or the server is shutting down",
}
_BODY_ERRORS = (400, 413, 415, 422)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    responses: dict[int, Any]  # status -> schema name, (content type, description) or None for an error
    body: str | None = None
    query: type[Schema] | None = None
    public: bool = False
    tags: tuple[str, ...] = ()
    path_params: tuple[str, ...] = field(default=())
    error_schema: str = "Error"
    body_type: str = JSON


def _errors(*statuses: int) -> dict[int, Any]:
    return {status: None for status in statuses}


def _array(name: str) -> dict[str, Any]:
    return {"type": "array", "items": {"$ref": f"#/components/schemas/{name}"}}


NULL = {"type": "null"}


OPERATIONS: list[Operation] = [
    Operation("get", "/", "The web page (Accept: text/html) or a JSON status", {
        200: ("text/html", "The web page; JSON (`Index`) for non-browser clients", "Index"),
    }, public=True, tags=("server",)),
    Operation("get", "/health", "Readiness: model, device, queue", {
        200: "Health", 503: ("application/json", "Loading, failed to load, or shutting down", "Health"),
    }, public=True, tags=("server",)),
    Operation("get", "/metrics", "Prometheus metrics", {
        200: ("text/plain", "Prometheus text format", None), **_errors(401),
    }, tags=("server",)),
    Operation("get", "/openapi.json", "This document", {200: (JSON, "OpenAPI 3.1", None)}, public=True, tags=("server",)),
    Operation("get", "/api/v1/info", "Model, limits, defaults and samplers", {200: "Info", **_errors(401)}, tags=("server",)),
    Operation("post", "/api/v1/generate", "Generate an image and wait for it", {
        200: "GenerateResponse", **_errors(*_BODY_ERRORS, 401, 409, 429, 500, 503),
    }, body="GenerateRequest", tags=("generate",)),
    Operation("post", "/api/v1/jobs", "Queue a generation; answer at once", {
        202: "Job", **_errors(*_BODY_ERRORS, 401, 429, 503),
    }, body="GenerateRequest", tags=("jobs",)),
    Operation("get", "/api/v1/jobs", "Recent jobs, newest first", {200: "JobList", **_errors(401, 422)},
              query=schemas.JobListQuerySchema, tags=("jobs",)),
    Operation("get", "/api/v1/jobs/{job_id}", "One job", {200: "Job", **_errors(401, 404)},
              path_params=("job_id",), tags=("jobs",)),
    Operation("delete", "/api/v1/jobs/{job_id}", "Cancel one job", {
        200: "Job", 202: ("application/json", "Still stopping (cancel_requested)", "Job"), **_errors(401, 404, 409),
    }, path_params=("job_id",), tags=("jobs",)),
    Operation("get", "/api/v1/ws", "Websocket of live job events (the protocol: docs/api.md)", {
        101: ("", "Switching protocols", None), **_errors(400, 401, 403, 404),
    }, tags=("jobs",)),
    Operation("post", "/v1/images/generations", "OpenAI Images API: generate images", {
        200: "OpenAIImagesResponse", **_errors(400, 401, 409, 413, 415, 429, 500, 503),
    }, body="OpenAIImagesRequest", error_schema="OpenAIError", tags=("openai",)),
    Operation("get", "/v1/models", "OpenAI API: every local model", {200: "OpenAIModelList", **_errors(401)},
              error_schema="OpenAIError", tags=("openai",)),
    Operation("post", "/sdapi/v1/txt2img", "AUTOMATIC1111 API: text to image", {
        200: "Txt2ImgResponse", **_errors(400, 401, 409, 413, 415, 422, 429, 500, 503),
    }, body="Txt2ImgRequest", error_schema="A1111Error", tags=("a1111",)),
    Operation("get", "/sdapi/v1/progress", "AUTOMATIC1111 API: the running job's progress", {
        200: "ProgressResponse", **_errors(401, 422),
    }, query=a1111.ProgressQuerySchema, error_schema="A1111Error", tags=("a1111",)),
    Operation("post", "/sdapi/v1/interrupt", "AUTOMATIC1111 API: stop the running request (its txt2img answers 200 with what it made)", {
        200: (JSON, "Done (null)", NULL), **_errors(401),
    }, error_schema="A1111Error", tags=("a1111",)),
    Operation("post", "/sdapi/v1/skip", "AUTOMATIC1111 API: stop the running pipeline call; its request goes on", {
        200: (JSON, "Done (null)", NULL), **_errors(401),
    }, error_schema="A1111Error", tags=("a1111",)),
    Operation("get", "/sdapi/v1/upscalers", "AUTOMATIC1111 API: upscalers (only None: this server does not upscale)", {
        200: (JSON, "As A1111 answers", {"type": "array"}), **_errors(401),
    }, error_schema="A1111Error", tags=("a1111",)),
    Operation("get", "/sdapi/v1/latent-upscale-modes", "AUTOMATIC1111 API: latent upscale modes (none: no hires fix)", {
        200: (JSON, "As A1111 answers", {"type": "array"}), **_errors(401),
    }, error_schema="A1111Error", tags=("a1111",)),
    Operation("get", "/sdapi/v1/sd-vae", "AUTOMATIC1111 API: the model's separate VAE, if it has one", {
        200: (JSON, "As A1111 answers", {"type": "array"}), **_errors(401),
    }, error_schema="A1111Error", tags=("a1111",)),
    Operation("get", "/sdapi/v1/sd-modules", "AUTOMATIC1111 API: text-encoder/VAE modules (none)", {
        200: (JSON, "As A1111 answers", {"type": "array"}), **_errors(401),
    }, error_schema="A1111Error", tags=("a1111",)),
    Operation("get", "/sdapi/v1/face-restorers", "AUTOMATIC1111 API: face restorers (none)", {
        200: (JSON, "As A1111 answers", {"type": "array"}), **_errors(401),
    }, error_schema="A1111Error", tags=("a1111",)),
    Operation("get", "/sdapi/v1/prompt-styles", "AUTOMATIC1111 API: prompt styles (none)", {
        200: (JSON, "As A1111 answers", {"type": "array"}), **_errors(401),
    }, error_schema="A1111Error", tags=("a1111",)),
    Operation("get", "/sdapi/v1/scripts", "AUTOMATIC1111 API: scripts (none)", {
        200: (JSON, "As A1111 answers", {"type": "object"}), **_errors(401),
    }, error_schema="A1111Error", tags=("a1111",)),
    Operation("get", "/sdapi/v1/embeddings", "AUTOMATIC1111 API: textual-inversion embeddings (none)", {
        200: (JSON, "As A1111 answers", {"type": "object"}), **_errors(401),
    }, error_schema="A1111Error", tags=("a1111",)),
    Operation("get", "/sdapi/v1/cmd-flags", "AUTOMATIC1111 API: the flags that mean something here", {
        200: (JSON, "As A1111 answers", {"type": "object"}), **_errors(401),
    }, error_schema="A1111Error", tags=("a1111",)),
    Operation("get", "/sdapi/v1/memory", "AUTOMATIC1111 API: RAM and CUDA memory", {
        200: (JSON, "As A1111 answers", {"type": "object"}), **_errors(401),
    }, error_schema="A1111Error", tags=("a1111",)),
    Operation("post", "/sdapi/v1/png-info", "AUTOMATIC1111 API: a PNG's generation parameters (its parameters text chunk)", {
        200: (JSON, "info (the text), items (other text chunks), parameters (parsed)", {"type": "object"}),
        **_errors(400, 401, 413, 415, 422),
    }, body="A1111PngInfoRequest", error_schema="A1111Error", tags=("a1111",)),
    Operation("get", "/internal/ping", "AUTOMATIC1111 API: liveness ({})", {
        200: (JSON, "{}", {"type": "object"})}, tags=("a1111",)),
    Operation("get", "/sdapi/v1/sd-models", "AUTOMATIC1111 API: every local model", {
        200: (JSON, "The models", _array("SDModel")), **_errors(401),
    }, error_schema="A1111Error", tags=("a1111",)),
    Operation("get", "/sdapi/v1/samplers", "AUTOMATIC1111 API: samplers", {
        200: (JSON, "Samplers", _array("Sampler")), **_errors(401),
    }, error_schema="A1111Error", tags=("a1111",)),
    Operation("get", "/sdapi/v1/schedulers", "AUTOMATIC1111 API: schedule types", {
        200: (JSON, "Schedule types", _array("ScheduleType")), **_errors(401),
    }, error_schema="A1111Error", tags=("a1111",)),
    Operation("get", "/sdapi/v1/options", "AUTOMATIC1111 API: options", {
        200: (JSON, "At least sd_model_checkpoint", {"type": "object"}), **_errors(401),
    }, error_schema="A1111Error", tags=("a1111",)),
    Operation("post", "/sdapi/v1/options", "AUTOMATIC1111 API: set options (sd_model_checkpoint: the default model)", {
        200: (JSON, "Done (null)", NULL), **_errors(400, 401, 413, 415, 422),
    }, body="A1111Options", error_schema="A1111Error", tags=("a1111",)),
    Operation("post", "/api/v1/tokenize", "Count a prompt's tokens and 75-token chunks (the page's counter)", {
        200: "TokenizeResponse", **_errors(400, 401, 413, 415, 422, 503)}, body="TokenizeRequest", tags=("generate",)),
    Operation("get", "/api/v1/models", "Every model: kind, source, size, where loaded, default, broken", {
        200: "ModelList", **_errors(401)}, tags=("models",)),
    Operation("post", "/api/v1/models/refresh", "Scan MODELS_DIR again; the new list", {200: "ModelList", **_errors(401)},
              tags=("models",)),
    Operation("post", "/sdapi/v1/refresh-checkpoints", "AUTOMATIC1111 API: scan MODELS_DIR again", {
        200: (JSON, "Done (null)", NULL), **_errors(401),
    }, error_schema="A1111Error", tags=("a1111",)),
    Operation("get", "/api/v1/loras", "The LoRAs in LORA_DIR, usable or not (and why)", {200: "LoraList", **_errors(401)},
              tags=("loras",)),
    Operation("post", "/api/v1/loras/refresh", "Scan LORA_DIR again; the new list", {200: "LoraList", **_errors(401)},
              tags=("loras",)),
    Operation("get", "/sdapi/v1/loras", "AUTOMATIC1111 API: the usable LoRAs", {
        200: (JSON, "LoRAs", _array("A1111Lora")), **_errors(401),
    }, error_schema="A1111Error", tags=("a1111",)),
    Operation("post", "/sdapi/v1/refresh-loras", "AUTOMATIC1111 API: scan LORA_DIR again", {
        200: (JSON, "Done (null)", NULL), **_errors(401),
    }, error_schema="A1111Error", tags=("a1111",)),
    Operation("post", "/sdapi/v1/img2img", "AUTOMATIC1111 API: image to image and inpainting", {
        200: "Txt2ImgResponse", **_errors(400, 401, 409, 413, 415, 422, 429, 500, 503),
    }, body="Img2ImgRequest", error_schema="A1111Error", tags=("a1111",)),
    Operation("post", "/v1/images/edits", "OpenAI Images API: edit an image (mask: transparent = edit)", {
        200: "OpenAIImagesResponse", **_errors(400, 401, 409, 413, 415, 429, 500, 503),
    }, body="OpenAIImageEditRequest", error_schema="OpenAIError", tags=("openai",), body_type=MULTIPART),
    Operation("post", "/v1/images/variations", "OpenAI Images API: variations of an image", {
        200: "OpenAIImagesResponse", **_errors(400, 401, 409, 413, 415, 429, 500, 503),
    }, body="OpenAIImageVariationRequest", error_schema="OpenAIError", tags=("openai",), body_type=MULTIPART),
    Operation("get", "/outputs/images/{filename}", "A generated image: `{id}.png`", {
        200: ("image/png", "The PNG, with a `parameters` text chunk", None), **_errors(401, 404),
    }, path_params=("filename",), tags=("outputs",)),
    Operation("get", "/outputs/metadata/{filename}", "A generated image's metadata: `{id}.json`", {
        200: ("application/json", "The metadata", "Meta"), **_errors(401, 404),
    }, path_params=("filename",), tags=("outputs",)),
]


def _response(spec_status: int, value: Any, error_schema: str) -> dict[str, Any]:
    if value is None:
        return {"description": ERRORS[spec_status], "content": {JSON: {"schema": error_schema}}}
    if isinstance(value, str):
        return {"description": "OK", "content": {JSON: {"schema": value}}}
    content_type, description, schema = value
    if not content_type:
        return {"description": description}
    content: dict[str, Any] = {content_type: {"schema": schema} if schema else {}}
    if content_type == "text/html" and schema:
        content = {"text/html": {"schema": {"type": "string"}}, JSON: {"schema": schema}}
    return {"description": description, "content": content}


def build_spec(settings: Settings, version: str) -> dict[str, Any]:
    """The OpenAPI document for a server with ``settings``."""
    spec = APISpec(
        title="sdxl_server",
        version=version,
        openapi_version="3.1.0",
        plugins=[MarshmallowPlugin()],
        info={"description": "Self-hosted Stable Diffusion XL text-to-image server with live websocket progress."},
    )
    spec.components.schema("Error", schema=responses.ErrorSchema)
    spec.components.schema("GenerateRequest", schema=schemas.generate_request_schema(settings))
    for name, schema in (
        ("Meta", responses.MetaSchema), ("GenerateResponse", responses.GenerateResponseSchema), ("Job", responses.JobSchema),
        ("JobList", responses.JobListSchema), ("Health", responses.HealthSchema), ("Info", responses.InfoSchema),
        ("Index", responses.IndexSchema),
        ("OpenAIImagesRequest", openai.request_schema_for_spec(settings)),
        ("OpenAIImagesResponse", responses.OpenAIImagesResponseSchema), ("OpenAIModelList", responses.OpenAIModelListSchema),
        ("OpenAIError", responses.OpenAIErrorSchema), ("A1111Error", responses.A1111ErrorSchema),
        ("Txt2ImgRequest", a1111.request_schema_for_spec(settings)), ("Txt2ImgResponse", responses.Txt2ImgResponseSchema),
        ("ProgressResponse", responses.ProgressResponseSchema), ("SDModel", responses.SDModelSchema),
        ("Sampler", responses.SamplerSchema), ("ScheduleType", responses.ScheduleTypeSchema),
        ("A1111Options", a1111.OptionsSchema), ("A1111PngInfoRequest", a1111_probes.PngInfoSchema),
        ("LoraList", responses.LoraListSchema), ("A1111Lora", responses.A1111LoraSchema),
        ("ModelList", responses.ModelListSchema),
        ("TokenizeRequest", schemas.tokenize_request_schema(settings)), ("TokenizeResponse", responses.TokenizeResponseSchema),
        ("Img2ImgRequest", a1111_img2img.img2img_schema_for_spec(settings)),
        ("OpenAIImageEditRequest", openai_edits.edits_schema_for_spec(settings)),
        ("OpenAIImageVariationRequest", openai_edits.variations_schema_for_spec(settings)),
    ):
        spec.components.schema(name, schema=schema)
    if settings.api_key:
        spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})

    for op in OPERATIONS:
        operation: dict[str, Any] = {
            "summary": op.summary,
            "tags": list(op.tags),
            "responses": {
                str(status): _response(status, value, op.error_schema) for status, value in op.responses.items()
            },
        }
        if op.body:
            operation["requestBody"] = {"required": True, "content": {op.body_type: {"schema": op.body}}}
        parameters: list[dict[str, Any]] = [
            {"in": "path", "name": name, "required": True, "schema": {"type": "string"}} for name in op.path_params
        ]
        if op.query is not None:
            parameters.append({"in": "query", "schema": op.query})
        if parameters:
            operation["parameters"] = parameters
        needs_key = not op.public and (not op.path.startswith("/outputs/") or settings.outputs_need_key)
        if settings.api_key and needs_key:
            operation["security"] = [{"bearer": []}]
        else:
            operation["responses"].pop("401", None)
        spec.path(path=op.path, operations={op.method: operation})
    return spec.to_dict()


def with_local_names(spec: dict[str, Any], models: list[str], loras: list[str]) -> dict[str, Any]:
    """The document with the names a request may use now (they change with MODELS_DIR, LORA_DIR
    and their rescans): ``model`` and each LoRA's ``name`` as enums."""
    spec = copy.deepcopy(spec)
    properties = spec["components"]["schemas"]["GenerateRequest"]["properties"]
    properties["model"]["enum"] = ["", *models]
    if loras:
        choice = copy.deepcopy(spec["components"]["schemas"]["LoraChoice"])
        choice["properties"]["name"]["enum"] = loras
        properties["loras"]["items"] = choice
    else:
        properties["loras"]["maxItems"] = 0
    return spec
