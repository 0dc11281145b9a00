"""The OpenAPI 3.1 document (``GET /openapi.json``), generated from the route table and the
marshmallow schemas.

Built once per application with apispec's MarshmallowPlugin, so limits (``MAX_WIDTH``...) and
the security scheme (only when ``API_KEY`` is set) match the running server. Each documented
route of :data:`.routes.ROUTES` is one operation; its responses and request body name the
components registered here. Never imports torch.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from marshmallow import Schema

from ..config import Settings
from . import a1111, a1111_extras, a1111_img2img, a1111_probes, controlnets, openai, openai_edits, responses, responses_catalogs, schemas, upscale
from .route_table import EVENT_STREAM, JSON, Family, Route, Scope

ERRORS = {
    400: "The body is empty, not UTF-8, not JSON, or not a JSON object",
    401: "A valid API key is needed (when API_KEY or KEYS_FILE is set)",
    403: "The origin is not allowed (CORS_ORIGINS); with KEYS_FILE: the key lacks the route's scope, or an "
         "output URL is not signed, altered or expired",
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
# One server-sent event: its name (OpenAI's event type, or "error") and its data, one JSON object.
SSE_EVENT = {"type": "object", "required": ["event", "data"],
             "properties": {"event": {"type": "string"}, "data": {"type": "string", "contentMediaType": JSON}}}
ERROR_SCHEMAS = {Family.OWN: "Error", Family.OPENAI: "OpenAIError", Family.A1111: "A1111Error"}


def components(settings: Settings) -> list[tuple[str, Schema | type[Schema]]]:
    """Every schema the table's routes name, by component name: the request schemas with the
    server's limits, and the response schemas of :mod:`.responses`."""
    return [
        ("Error", responses.ErrorSchema), ("GenerateRequest", schemas.generate_request_schema(settings)),
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
        ("ControlNetList", responses_catalogs.ControlNetListSchema), ("IpAdapterList", responses_catalogs.IpAdapterListSchema), ("PreprocessorList", responses_catalogs.PreprocessorListSchema),
        ("PreprocessRequest", controlnets.PreprocessRequestSchema), ("PreprocessResponse", responses_catalogs.PreprocessResponseSchema),
        ("UpscaleRequest", upscale.upscale_request_schema()), ("UpscalerList", responses_catalogs.UpscalerListSchema),
        ("ExtrasSingleImageRequest", a1111_extras.SingleImageSchema),
        ("ExtrasSingleImageResponse", responses_catalogs.ExtrasSingleImageResponseSchema),
        ("ExtrasBatchImagesRequest", a1111_extras.BatchImagesSchema),
        ("ExtrasBatchImagesResponse", responses_catalogs.ExtrasBatchImagesResponseSchema),
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
    if content_type == EVENT_STREAM and schema:
        content = {JSON: {"schema": schema}, EVENT_STREAM: {"schema": SSE_EVENT}}
    return {"description": description, "content": content}


def _operation(route: Route, settings: Settings) -> dict[str, Any]:
    keyed = bool(settings.api_key) or settings.keys_file is not None
    needs_key = keyed and route.access.required_scope(settings) is not Scope.PUBLIC
    # with KEYS_FILE, a valid key may lack the route's scope, and an output URL may be unsigned
    refused = settings.keys_file is not None and (needs_key or route.output_file)
    statuses = {**route.responses, **({401: None} if needs_key else {}), **({403: None} if refused else {})}
    operation: dict[str, Any] = {
        "summary": route.summary,
        "tags": list(route.tags),
        "responses": {
            str(status): _response(status, statuses[status], ERROR_SCHEMAS[route.family]) for status in sorted(statuses)
        },
    }
    if route.body:
        operation["requestBody"] = {"required": True, "content": {route.body_type: {"schema": route.body}}}
    parameters: list[dict[str, Any]] = [
        {"in": "path", "name": name, "required": True, "schema": {"type": "string"}} for name in route.path_params
    ]
    if route.query is not None:
        parameters.append({"in": "query", "schema": route.query})
    if parameters:
        operation["parameters"] = parameters
    if needs_key:
        operation["security"] = [{"bearer": []}]
    return operation


def build_spec(settings: Settings, version: str, routes: Iterable[Route]) -> dict[str, Any]:
    """The OpenAPI document of ``routes`` (the documented ones) for a server with ``settings``."""
    spec = APISpec(
        title="sdxl_server",
        version=version,
        openapi_version="3.1.0",
        plugins=[MarshmallowPlugin()],
        info={"description": "Self-hosted Stable Diffusion XL text-to-image server with live websocket progress."},
    )
    for name, schema in components(settings):
        spec.components.schema(name, schema=schema)
    if settings.api_key or settings.keys_file is not None:
        spec.components.security_scheme("bearer", {"type": "http", "scheme": "bearer"})
    for route in routes:
        if route.documented:
            spec.path(path=route.path, operations={route.method.lower(): _operation(route, settings)})
    return spec.to_dict()


def with_local_names(spec: dict[str, Any], models: list[str], loras: list[str], styles: list[str],
                     controlnets: list[str] = (), ip_adapters: list[str] = (), modules: list[str] | None = None) -> dict[str, Any]:
    """The document with the names a request may use now (they change with MODELS_DIR, LORA_DIR,
    STYLES_FILE, CONTROLNET_DIR, IP_ADAPTER_DIR, ANNOTATOR_DIR and their rescans): ``model``, each
    LoRA's, ControlNet unit's and IP-Adapter unit's name, each style and the preprocessors that run
    (``modules``) as enums (no units without any)."""
    spec = copy.deepcopy(spec)
    properties = spec["components"]["schemas"]["GenerateRequest"]["properties"]
    properties["model"]["enum"] = ["", *models]
    properties["styles"]["items"] = {**properties["styles"].get("items", {}), "enum": ["None", *styles]}  # "None": no style
    if loras:
        choice = copy.deepcopy(spec["components"]["schemas"]["LoraChoice"])
        choice["properties"]["name"]["enum"] = loras
        properties["loras"]["items"] = choice
    else:
        properties["loras"]["maxItems"] = 0
    for field, key, names in (("controlnet", "model", controlnets), ("ip_adapter", "name", ip_adapters)):
        if names:
            unit = copy.deepcopy(spec["components"]["schemas"]["ControlUnit" if field == "controlnet" else "IpAdapterUnit"])
            unit["properties"][key]["enum"] = list(names)
            if field == "controlnet" and modules is not None:
                unit["properties"]["module"]["enum"] = list(modules)
            properties[field]["items"] = unit
        else:
            properties[field]["maxItems"] = 0
    if modules is not None:
        spec["components"]["schemas"]["PreprocessRequest"]["properties"]["module"]["enum"] = list(modules)
    return spec
