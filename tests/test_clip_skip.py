"""CLIP skip on our API and A1111's (``clip_skip``, ``CLIP_stop_at_last_layers``): the image it
makes, what the metadata and the PNG parameters record, and the 422s for values out of range."""

from __future__ import annotations

import base64
import io
import json

import pytest
from images import generate_png, pixels
from PIL import Image

BODY = {"prompt": "a red fox", "seed": 5}
A1111 = {"prompt": "a red fox", "seed": 5, "steps": 2, "width": 64, "height": 64}


async def test_clip_skip_2_changes_the_image_and_1_is_the_usual_one(client):
    usual = await pixels(client, BODY)
    assert await pixels(client, {**BODY, "clip_skip": 1}) == usual
    data, skipped = await generate_png(client, {**BODY, "clip_skip": 2})
    assert skipped.tobytes() != usual
    assert data["meta"]["clip_skip"] == 2
    assert "Clip skip: 2" in skipped.text["parameters"]
    plain, image = await generate_png(client, BODY)
    assert plain["meta"]["clip_skip"] == 1 and "Clip skip" not in image.text["parameters"]


@pytest.mark.parametrize("value", [0, 13, "2", 1.5, True])
async def test_a_bad_clip_skip_is_a_422_naming_it(client, value):
    resp = await client.post("/api/v1/generate", json={**BODY, "clip_skip": value})
    assert resp.status == 422
    assert "clip_skip" in (await resp.json())["fields"]


async def _a1111_image(client, body: dict) -> tuple[bytes, dict]:
    resp = await client.post("/sdapi/v1/txt2img", json=body)
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    return Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))).tobytes(), json.loads(answer["info"])


async def test_a1111_override_settings_and_top_level_clip_skip_are_applied(client):
    ours = await pixels(client, {**BODY, "steps": 2, "width": 64, "height": 64, "clip_skip": 2})
    usual, info = await _a1111_image(client, A1111)
    assert info["clip_skip"] == 1 and usual != ours
    overridden, info = await _a1111_image(client, {**A1111, "override_settings": {"CLIP_stop_at_last_layers": "2"}})
    assert overridden == ours and info["clip_skip"] == 2 and "Clip skip: 2" in info["infotexts"][0]
    top_level, _ = await _a1111_image(client, {**A1111, "clip_skip": 2, "override_settings": {"CLIP_stop_at_last_layers": 1}})
    assert top_level == ours


async def test_a1111_options_keep_clip_skip_as_the_default_of_a1111_requests(client):
    ours = await pixels(client, {**BODY, "steps": 2, "width": 64, "height": 64, "clip_skip": 3})
    assert (await (await client.get("/sdapi/v1/options")).json())["CLIP_stop_at_last_layers"] == 1
    assert (await client.post("/sdapi/v1/options", json={"CLIP_stop_at_last_layers": 3})).status == 200
    assert (await (await client.get("/sdapi/v1/options")).json())["CLIP_stop_at_last_layers"] == 3
    assert (await _a1111_image(client, A1111))[0] == ours
    # Our own API keeps its own default.
    assert (await generate_png(client, BODY))[0]["meta"]["clip_skip"] == 1


@pytest.mark.parametrize("body", [{"CLIP_stop_at_last_layers": 0}, {"CLIP_stop_at_last_layers": "many"}])
async def test_a1111_options_refuse_a_bad_clip_skip(client, body):
    resp = await client.post("/sdapi/v1/options", json=body)
    assert resp.status == 422 and "CLIP_stop_at_last_layers" in (await resp.json())["fields"]
    assert (await (await client.get("/sdapi/v1/options")).json())["CLIP_stop_at_last_layers"] == 1


async def test_a1111_bad_override_clip_skip_is_a_422_naming_it(client):
    resp = await client.post("/sdapi/v1/txt2img", json={**A1111, "override_settings": {"CLIP_stop_at_last_layers": 40}})
    assert resp.status == 422
    assert "override_settings.CLIP_stop_at_last_layers" in (await resp.json())["fields"]
