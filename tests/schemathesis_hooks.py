"""schemathesis hooks (loaded with SCHEMATHESIS_HOOKS by tests/test_schemathesis.py).

What JSON Schema cannot say about a request with images or the refiner: ``init_image`` and
``mask`` must be real images (any string is schema-valid), a mask needs an image, and every model
must run at least a step (``steps`` x ``strength``; the refiner's share of ``steps``), which the
test server's few steps only allow at ``strength`` 1, two steps split at 0.5, ``refiner_strength`` 1;
a sampler runs only the schedules it lists, and the older ``scheduler`` must agree with ``sampler`` and
``schedule`` (both checked in tests/test_validation.py). Wherever a generated body holds a schema-valid value for these
fields, a real image (mask, strength) takes its place; values that break the schema are left as
generated, so the negative checks keep their teeth.
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


def _valid_strength(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value <= 1


@schemathesis.hook.apply_to(method="POST", path_regex=r"^/api/v1/(generate|jobs)$")
def map_case(context, case):
    if isinstance(case.body, dict):
        case.body = _with_sampling(_with_images(case.body))
    return case


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
        if has_image:
            body["mask"] = _MASK
        else:
            body["mask"] = None
    return body
