"""The route table: every route the server answers, declared once (its fields: :mod:`.route_table`),
and the prefix fallback for requests that match none. The router, the OpenAPI document, the body
limits, the key check and the error shape all read it, so they cannot disagree.
"""

from __future__ import annotations

from functools import partial

from aiohttp import web

from . import (
    a1111, a1111_extras, a1111_img2img, a1111_probes, keys, loras, models, openai, openai_edits, schemas, tokens, upscale,
    views, websocket,
)
from . import a1111_controlnet, controlnets, styles, usage
from .route_table import (
    BODY_ERRORS,
    EVENT_STREAM,
    JSON,
    MULTIPART,
    NULL,
    Access,
    BodyLimit,
    Family,
    Prefix,
    Route,
    Scope,
    View,
    array_of,
    errors,
)

PUBLIC, READ, GENERATE, ADMIN = Scope.PUBLIC, Scope.READ, Scope.GENERATE, Scope.ADMIN
IMAGE = BodyLimit.IMAGE
GENERATION_ERRORS = (409, 429, 500, 503)
STREAMED = "The images (JSON); with `stream: true`, OpenAI's image events (text/event-stream)"

openai_route = partial(Route, family=Family.OPENAI, tags=("openai",))
a1111_route = partial(Route, family=Family.A1111, tags=("a1111",))


def _a1111_probe(path: str, view: View, what: str, json_type: str) -> Route:
    """One of the A1111 listings clients probe before they generate: read, answered as A1111 does."""
    return a1111_route("GET", path, view, READ, f"AUTOMATIC1111 API: {what}", {
        200: (JSON, "As A1111 answers", {"type": json_type})})


def _done() -> dict[int, tuple[str, str, dict]]:
    return {200: (JSON, "Done (null)", NULL)}


ROUTES: tuple[Route, ...] = (
    # --- the server --------------------------------------------------------------------------
    Route("GET", "/", views.index, PUBLIC, "The web page (Accept: text/html) or a JSON status", {
        200: ("text/html", "The web page; JSON (`Index`) for non-browser clients", "Index")}, tags=("server",)),
    Route("GET", "/health", views.health, PUBLIC, "Readiness: model, device, queue", {
        200: "Health", 503: (JSON, "Loading, failed to load, or shutting down", "Health")}, tags=("server",)),
    Route("GET", "/metrics", views.metrics, ADMIN, "Prometheus metrics", {
        200: ("text/plain", "Prometheus text format", None)}, tags=("server",)),
    Route("GET", "/openapi.json", views.openapi, PUBLIC, "This document", {200: (JSON, "OpenAPI 3.1", None)},
          tags=("server",)),
    Route("GET", "/api/v1/info", views.server_info, READ, "Model, limits, defaults and samplers", {200: "Info"},
          tags=("server",)),
    # --- our API -----------------------------------------------------------------------------
    Route("POST", "/api/v1/generate", views.generate, GENERATE, "Generate an image and wait for it", {
        200: "GenerateResponse", **errors(*BODY_ERRORS, *GENERATION_ERRORS)},
        body="GenerateRequest", tags=("generate",), limit=IMAGE, cost=1),
    Route("POST", "/api/v1/jobs", views.submit_job, GENERATE, "Queue a generation; answer at once", {
        202: "Job", **errors(*BODY_ERRORS, 429, 503)}, body="GenerateRequest", tags=("jobs",), limit=IMAGE, cost=1),
    Route("GET", "/api/v1/jobs", views.list_jobs, READ, "Recent jobs, newest first", {200: "JobList", **errors(422)},
          query=schemas.JobListQuerySchema, tags=("jobs",)),
    Route("GET", "/api/v1/jobs/{job_id}", views.get_job, READ, "One job", {200: "Job", **errors(404)}, tags=("jobs",)),
    Route("DELETE", "/api/v1/jobs/{job_id}", views.cancel_job, GENERATE, "Cancel one job", {
        200: "Job", 202: (JSON, "Still stopping (cancel_requested)", "Job"), **errors(404, 409)}, tags=("jobs",)),
    Route("GET", "/api/v1/usage", usage.usage, READ,
          "What keys used per UTC day (jobs, images, GPU-seconds) and their limits: a key its own, admin every key's", {
              200: (JSON, "{today, resets_at, keys: [{key, days: {date: {jobs, images, gpu_seconds}}, limits}]}",
                    {"type": "object"}), **errors(404, 422)}, query=usage.UsageQuerySchema, tags=("jobs",)),
    Route("GET", "/api/v1/ws", websocket.websocket, READ, "Websocket of live job events (the protocol: docs/api.md)", {
        101: ("", "Switching protocols", None), **errors(400, 403, 404)}, tags=("jobs",)),
    # --- OpenAI ------------------------------------------------------------------------------
    openai_route("POST", "/v1/images/generations", openai.images_generations, GENERATE,
                 "OpenAI Images API: generate images", {
                     200: (EVENT_STREAM, STREAMED, "OpenAIImagesResponse"), **errors(400, 413, 415, *GENERATION_ERRORS)},
                 body="OpenAIImagesRequest", cost=1),
    openai_route("GET", "/v1/models", openai.models, READ, "OpenAI API: every local model", {200: "OpenAIModelList"}),
    # --- AUTOMATIC1111 -----------------------------------------------------------------------
    a1111_route("POST", "/sdapi/v1/txt2img", a1111.txt2img, GENERATE, "AUTOMATIC1111 API: text to image", {
        200: "Txt2ImgResponse", **errors(*BODY_ERRORS, *GENERATION_ERRORS)}, body="Txt2ImgRequest", cost=1),
    a1111_route("GET", "/sdapi/v1/progress", a1111.progress, READ, "AUTOMATIC1111 API: the running job's progress", {
        200: "ProgressResponse", **errors(422)}, query=a1111.ProgressQuerySchema),
    a1111_route("POST", "/sdapi/v1/interrupt", a1111.interrupt, GENERATE,
                "AUTOMATIC1111 API: stop the running request (its txt2img answers 200 with what it made)", _done()),
    a1111_route("POST", "/sdapi/v1/skip", a1111.skip, GENERATE,
                "AUTOMATIC1111 API: stop the running pipeline call; its request goes on", _done()),
    _a1111_probe("/sdapi/v1/upscalers", a1111_extras.upscalers,
                 "upscalers: None, Lanczos, Nearest and the usable models of UPSCALERS_DIR", "array"),
    _a1111_probe("/sdapi/v1/latent-upscale-modes", a1111_probes.latent_upscale_modes,
                 "hires fix's latent upscale modes", "array"),
    _a1111_probe("/sdapi/v1/sd-vae", a1111_probes.sd_vae, "the model's separate VAE, if it has one", "array"),
    _a1111_probe("/sdapi/v1/sd-modules", a1111_probes.empty_list, "text-encoder/VAE modules (none)", "array"),
    _a1111_probe("/sdapi/v1/face-restorers", a1111_probes.empty_list, "face restorers (none)", "array"),
    _a1111_probe("/sdapi/v1/prompt-styles", styles.a1111_prompt_styles, "prompt styles of STYLES_FILE", "array"),
    _a1111_probe("/sdapi/v1/scripts", a1111_probes.scripts, "scripts (none)", "object"),
    _a1111_probe("/sdapi/v1/embeddings", a1111_probes.embeddings, "textual-inversion embeddings (none)", "object"),
    _a1111_probe("/sdapi/v1/cmd-flags", a1111_probes.cmd_flags, "the flags that mean something here", "object"),
    _a1111_probe("/sdapi/v1/memory", a1111_probes.memory, "RAM and CUDA memory", "object"),
    a1111_route("POST", "/sdapi/v1/png-info", a1111_probes.png_info, READ,
                "AUTOMATIC1111 API: a PNG's generation parameters (its parameters text chunk)", {
                    200: (JSON, "info (the text), items (other text chunks), parameters (parsed)", {"type": "object"}),
                    **errors(*BODY_ERRORS)}, body="A1111PngInfoRequest", limit=IMAGE),
    a1111_route("POST", "/sdapi/v1/interrogate", a1111_probes.interrogate, READ,
                "AUTOMATIC1111 API: describe an image (not available here: no interrogator is bundled)", {
                    501: (JSON, "Not available on this server", {"$ref": "#/components/schemas/A1111Error"})}, limit=IMAGE),
    # A1111's own path outside /sdapi/: its errors keep our shape, and it is public like /health.
    Route("GET", "/internal/ping", a1111_probes.ping, PUBLIC, "AUTOMATIC1111 API: liveness ({})", {
        200: (JSON, "{}", {"type": "object"})}, tags=("a1111",)),
    a1111_route("GET", "/sdapi/v1/sd-models", a1111.sd_models, READ, "AUTOMATIC1111 API: every local model", {
        200: (JSON, "The models", array_of("SDModel"))}),
    a1111_route("GET", "/sdapi/v1/samplers", a1111.samplers, READ, "AUTOMATIC1111 API: samplers", {
        200: (JSON, "Samplers", array_of("Sampler"))}),
    a1111_route("GET", "/sdapi/v1/schedulers", a1111.schedulers, READ, "AUTOMATIC1111 API: schedule types", {
        200: (JSON, "Schedule types", array_of("ScheduleType"))}),
    a1111_route("GET", "/sdapi/v1/options", a1111.get_options, READ, "AUTOMATIC1111 API: options", {
        200: (JSON, "At least sd_model_checkpoint", {"type": "object"})}),
    a1111_route("POST", "/sdapi/v1/options", a1111.set_options, ADMIN,
                "AUTOMATIC1111 API: set options (sd_model_checkpoint: the default model)", {
                    **_done(), **errors(*BODY_ERRORS)}, body="A1111Options"),
    # --- models, LoRAs, tokens ---------------------------------------------------------------
    Route("POST", "/api/v1/tokenize", tokens.tokenize, READ,
          "Count a prompt's tokens and 75-token chunks (the page's counter)", {
              200: "TokenizeResponse", **errors(*BODY_ERRORS, 503)}, body="TokenizeRequest", tags=("generate",)),
    Route("GET", "/api/v1/models", models.list_models, READ,
          "Every model: kind, source, size, where loaded, default, broken", {200: "ModelList"}, tags=("models",)),
    Route("POST", "/api/v1/models/refresh", models.refresh_models, ADMIN, "Scan MODELS_DIR again; the new list", {
        200: "ModelList"}, tags=("models",)),
    a1111_route("POST", "/sdapi/v1/refresh-checkpoints", models.a1111_refresh_checkpoints, ADMIN,
                "AUTOMATIC1111 API: scan MODELS_DIR again", _done()),
    Route("GET", "/api/v1/loras", loras.list_loras, READ, "The LoRAs in LORA_DIR, usable or not (and why)", {
        200: "LoraList"}, tags=("loras",)),
    Route("GET", "/api/v1/controlnets", controlnets.list_controlnets, READ,
          "The ControlNets in CONTROLNET_DIR, usable or not (and why)", {200: "ControlNetList"}, tags=("controlnet",)),
    Route("GET", "/api/v1/ip-adapters", controlnets.list_ip_adapters, READ,
          "The IP-Adapters in IP_ADAPTER_DIR, usable or not (and why)", {200: "IpAdapterList"}, tags=("controlnet",)),
    Route("GET", "/api/v1/preprocessors", controlnets.list_preprocessors, READ,
          "ControlNet preprocessors: which run here, their thresholds", {200: "PreprocessorList"}, tags=("controlnet",)),
    Route("POST", "/api/v1/preprocess", controlnets.preprocess, GENERATE, "The control map a preprocessor makes of an image", {
        200: "PreprocessResponse", **errors(*BODY_ERRORS)}, body="PreprocessRequest", tags=("controlnet",), limit=IMAGE),
    Route("POST", "/api/v1/loras/refresh", loras.refresh_loras, ADMIN, "Scan LORA_DIR again; the new list", {
        200: "LoraList"}, tags=("loras",)),
    Route("GET", "/api/v1/styles", styles.list_styles, READ, "The prompt styles of STYLES_FILE (and why none, if unreadable)", {
        200: (JSON, "{styles_file, styles: [{name, prompt, negative_prompt}], problem}", {"type": "object"})},
        tags=("generate",)),
    a1111_route("GET", "/sdapi/v1/loras", loras.a1111_loras, READ, "AUTOMATIC1111 API: the usable LoRAs", {
        200: (JSON, "LoRAs", array_of("A1111Lora"))}),
    a1111_route("POST", "/sdapi/v1/refresh-loras", loras.a1111_refresh_loras, ADMIN,
                "AUTOMATIC1111 API: scan LORA_DIR again", _done()),
    # --- requests that carry images ----------------------------------------------------------
    a1111_route("POST", "/sdapi/v1/img2img", a1111_img2img.img2img, GENERATE,
                "AUTOMATIC1111 API: image to image and inpainting", {
                    200: "Txt2ImgResponse", **errors(*BODY_ERRORS, *GENERATION_ERRORS)},
                body="Img2ImgRequest", limit=IMAGE, cost=1),
    openai_route("POST", "/v1/images/edits", openai_edits.edits, GENERATE,
                 "OpenAI Images API: edit an image (mask: transparent = edit)", {
                     200: (EVENT_STREAM, STREAMED, "OpenAIImagesResponse"), **errors(400, 413, 415, *GENERATION_ERRORS)},
                 body="OpenAIImageEditRequest", body_type=MULTIPART, limit=IMAGE, cost=1),
    openai_route("POST", "/v1/images/variations", openai_edits.variations, GENERATE,
                 "OpenAI Images API: variations of an image", {
                     200: "OpenAIImagesResponse", **errors(400, 413, 415, *GENERATION_ERRORS)},
                 body="OpenAIImageVariationRequest", body_type=MULTIPART, limit=IMAGE, cost=1),
    # --- the sd-webui-controlnet extension's API (outside /sdapi/, as the extension mounts it) -----
    _a1111_probe("/controlnet/version", a1111_controlnet.version, "ControlNet extension: its API version", "object"),
    _a1111_probe("/controlnet/model_list", a1111_controlnet.model_list, "ControlNet extension: the usable ControlNets", "object"),
    _a1111_probe("/controlnet/module_list", a1111_controlnet.module_list, "ControlNet extension: the preprocessors that run here", "object"),
    _a1111_probe("/controlnet/control_types", a1111_controlnet.control_types, "ControlNet extension: control types", "object"),
    _a1111_probe("/controlnet/settings", a1111_controlnet.settings, "ControlNet extension: units per request", "object"),
    a1111_route("POST", "/controlnet/detect", a1111_controlnet.detect, GENERATE, "ControlNet extension: preprocess images", {
        200: (JSON, "As the extension answers: {images, info}", {"type": "object"}), **errors(*BODY_ERRORS)}, limit=IMAGE),
    Route("POST", "/api/v1/upscale", upscale.upscale, GENERATE,
          "Upscale an image (a built-in or a model of UPSCALERS_DIR): queue the job; answer at once", {
              202: "Job", **errors(*BODY_ERRORS, 429, 503)}, body="UpscaleRequest", tags=("upscale",), limit=IMAGE, cost=1),
    Route("GET", "/api/v1/upscalers", upscale.list_upscalers, READ,
          "Every upscaler: built-ins and UPSCALERS_DIR's files with scale and architecture, unusable ones with why", {
              200: "UpscalerList"}, tags=("upscale",)),
    a1111_route("POST", "/sdapi/v1/extra-single-image", a1111_extras.extra_single_image, GENERATE,
                "AUTOMATIC1111 API: upscale one image (extras)", {
                    200: "ExtrasSingleImageResponse", **errors(*BODY_ERRORS, *GENERATION_ERRORS)},
                body="ExtrasSingleImageRequest", limit=IMAGE, cost=1),
    a1111_route("POST", "/sdapi/v1/extra-batch-images", a1111_extras.extra_batch_images, GENERATE,
                "AUTOMATIC1111 API: upscale several images (extras), one job each", {
                    200: "ExtrasBatchImagesResponse", **errors(*BODY_ERRORS, *GENERATION_ERRORS)},
                body="ExtrasBatchImagesRequest", limit=IMAGE, cost=1),
    # --- files -------------------------------------------------------------------------------
    Route("GET", "/outputs/images/{filename}", views.output_image, READ, "A generated image: `{id}.png`", {
        200: ("image/png", "The PNG, with a `parameters` text chunk", None), **errors(404)},
        tags=("outputs",), output_file=True),
    Route("GET", "/outputs/metadata/{filename}", views.output_metadata, READ,
          "A generated image's metadata: `{id}.json`", {200: (JSON, "The metadata", "Meta"), **errors(404)},
          tags=("outputs",), output_file=True),
    Route("GET", "/static/", None, PUBLIC),  # the page's files: not an API operation
)

# Requests that match no route (404, 405, and those aiohttp refuses before routing) under these
# prefixes; anywhere else they are public and get our error shape.
UNMATCHED: tuple[Prefix, ...] = (
    Prefix("/v1/", Access(READ, Family.OPENAI)),
    Prefix("/sdapi/", Access(READ, Family.A1111)),
    Prefix("/controlnet/", Access(READ, Family.A1111)),
    Prefix("/api/", Access(READ)),
    Prefix("/metrics", Access(ADMIN)),
    Prefix("/outputs/", Access(READ, output_file=True)),
)
ELSEWHERE = Access(PUBLIC)

_BY_KEY = {(route.method, route.path): route for route in ROUTES}


def add_routes(app: web.Application) -> None:
    router = app.router
    for route in ROUTES:
        if route.view is None:
            if app[keys.STATIC_DIR].is_dir():
                router.add_static(route.path, app[keys.STATIC_DIR], follow_symlinks=False)
        elif route.method == "GET":
            router.add_get(route.path, route.view)  # and its HEAD twin
        else:
            router.add_route(route.method, route.path, route.view)


def route_of(request: web.Request) -> Route | None:
    """The table's entry for the route aiohttp matched; None when none matched (404, 405)."""
    match = request.match_info
    return entry_for(request.method, match.route.resource) if match.http_exception is None else None


def entry_for(method: str, resource: web.AbstractResource | None) -> Route | None:
    """The table's entry for ``method`` (HEAD as its GET) on one of the router's resources."""
    if resource is None:
        return None
    path = resource.canonical + ("/" if isinstance(resource, web.StaticResource) else "")
    return _BY_KEY.get(("GET" if method == "HEAD" else method, path))


def access_of(request: web.Request) -> Access:
    route = route_of(request)
    return route.access if route is not None else unmatched_access(request.path)


def unmatched_access(path: str) -> Access:
    """The access of a request no route matched, by its path (:data:`UNMATCHED`)."""
    return next((fallback.access for fallback in UNMATCHED if path.startswith(fallback.prefix)), ELSEWHERE)
