"""schemathesis hooks (loaded with SCHEMATHESIS_HOOKS by tests/test_schemathesis.py).

What JSON Schema cannot say about a request with images or the refiner: ``init_image``,
``mask`` and ``POST /api/v1/preprocess``'s ``image`` must be real images (any string is schema-valid), a mask needs an image, and every model
must run at least a step (``steps`` x ``strength``; the refiner's share of ``steps``; hires fix's
``denoise``), which the test server's few steps only allow at ``strength`` 1, two steps split at
0.5, ``refiner_strength`` 1, ``denoise`` 1; hires fix's upscaler must be one the server has, its
size within ``MAX_OUTPUT_PIXELS``, and it takes no mask;
a sampler runs only the schedules it lists, and the older ``scheduler`` must agree with ``sampler`` and
``schedule`` (both checked in tests/test_validation.py). Wherever a generated body holds a schema-valid value for these
fields, a real image (mask, strength) takes its place; values that break the schema are left as
generated, so the negative checks keep their teeth. An upscale's image, upscalers and size are
mapped the same way (``_upscale``). The preprocessors the document offers are those that run
(the test server has the tiny annotators in ANNOTATOR_DIR), so ``module`` needs no mapping.
"""

from __future__ import annotations

import base64
import io

import schemathesis
from PIL import Image, ImageDraw

from sdxl_server.sampling import SAMPLERS, SCHEDULES, sampler_names, split_combined


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


_IMAGE = _b64(Image.new("RGB", (64, 64), (120, 40, 200)))
_mask = Image.new("L", (64, 64), 0)
ImageDraw.Draw(_mask).rectangle((16, 16, 47, 47), fill=255)
_MASK = _b64(_mask)


_MAPPED = ("/api/v1/generate", "/api/v1/jobs", "/api/v1/preprocess", "/api/v1/upscale")


@schemathesis.hook
def before_call(context, case, kwargs):
    """The stateful phase's requests (built from links, past the generation hooks) mapped as ``map_case`` maps."""
    if case.method.upper() == "POST" and case.path in _MAPPED:
        map_case(context, case)


def _valid_strength(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1


@schemathesis.hook.apply_to(method="POST", path_regex=r"^/api/v1/(generate|jobs|preprocess|upscale)$")
def map_case(context, case):
    if isinstance(case.body, dict):
        if case.path.endswith("/preprocess"):
            case.body = _preprocess(case.body)
        elif case.path == "/api/v1/upscale":
            case.body = _upscale(case.body)
        else:
            case.body = _with_sampling(_with_images(case.body))
    return case


def _preprocess(body: dict) -> dict:
    """A real image; numeric thresholds left to the preprocessor's defaults (each preprocessor has
    its own range, which the schema, one for all, cannot say)."""
    if not isinstance(body.get("image"), str):
        return body
    numbers = {name: None for name in ("threshold_a", "threshold_b")
               if isinstance(body.get(name), (int, float)) and not isinstance(body.get(name), bool)}
    return {**body, "image": _IMAGE, **numbers}


def _with_sampling(body: dict) -> dict:
    """A schema-valid sampler and schedule made a pair the sampler runs."""
    older, sampler, schedule = (value if isinstance(value, str) else None
                                for value in (body.get("scheduler"), body.get("sampler"), body.get("schedule")))
    if older in sampler_names() and (body.get("sampler") is not None or body.get("schedule") is not None):
        body.pop("scheduler")
    sampler = sampler or (split_combined(older)[0] if older in sampler_names() else "default")
    if schedule in SCHEDULES and sampler in SAMPLERS and schedule not in SAMPLERS[sampler].schedules:
        body["schedule"] = "automatic"
    return body


def _with_images(body: dict) -> dict:
    body = dict(body)
    # Which webhook URLs the SSRF guard takes (and that events need one) is tested in tests/test_webhooks.py.
    body.pop("webhook", None)
    body.pop("webhook_events", None)
    has_image = isinstance(body.get("init_image"), str)
    if has_image:
        body["init_image"] = _IMAGE
        if "strength" not in body or _valid_strength(body["strength"]):
            body["strength"] = 1.0
    if body.get("refiner") == "ensemble":
        body["steps"] = 2
        if "refiner_switch_at" not in body or _valid_strength(body["refiner_switch_at"]):
            body["refiner_switch_at"] = 0.5
    elif body.get("refiner") == "image":
        if "refiner_strength" not in body or _valid_strength(body["refiner_strength"]):
            body["refiner_strength"] = 1.0
    if isinstance(body.get("mask"), str):
        if has_image and not isinstance(body.get("hires"), dict):
            body["mask"] = _MASK
        else:
            body["mask"] = None
    if isinstance(body.get("hires"), dict):
        body["hires"] = _hires(body["hires"])
    return body


def _valid_size(value) -> bool:
    """A schema-valid integer (JSON Schema counts 16384.0 as one) in the upscale's range."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer() and 0 <= value <= 16384


def _upscale(body: dict) -> dict:
    """An upscale's image must be one, its upscalers the server's, its final size within
    MAX_OUTPUT_PIXELS (a 64x64 image by at most 8 is): schema-valid values become such."""
    body = dict(body)
    if isinstance(body.get("image"), str) and body["image"]:
        body["image"] = _IMAGE
    for name, usable in (("upscaler", "Lanczos"), ("upscaler_2", "Nearest")):
        if isinstance(body.get(name), str) and 1 <= len(body[name]) <= 256:
            body[name] = usable
    for name in ("width", "height"):
        if _valid_size(body.get(name)):
            body[name] = min(int(body[name]), 256)
    return body


def _hires(hires: dict) -> dict:
    """Hires fix: a final size within MAX_OUTPUT_PIXELS, an upscaler the server has and a denoise
    that runs a step, where the generated values are schema-valid."""
    hires = dict(hires)
    for name in ("width", "height"):
        value = hires.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value % 8 == 0 and 64 <= value <= 16384:
            hires[name] = 128  # JSON Schema's integers include 11680.0
    if isinstance(hires.get("upscaler"), str) and 0 < len(hires["upscaler"]) <= 200:
        hires["upscaler"] = "Latent"
    if "denoise" not in hires or _valid_strength(hires["denoise"]):
        hires["denoise"] = 1.0
    return hires
