"""Bad requests get a 4xx JSON error naming the problem; nothing is queued or written."""

from __future__ import annotations

import gzip
import json
import logging
import zlib

import pytest

GOOD = {"prompt": "a red bicycle"}


@pytest.fixture
def settings(settings):
    """Validation never reaches the model: load it only if a test generates."""
    return settings.replace(preload=False)

# (body, field named in "fields") -> 422
INVALID_FIELDS = [
    ({}, "prompt"),
    ({"prompt": ""}, "prompt"),
    ({"prompt": "   \n\t"}, "prompt"),
    ({"prompt": "\u200b\u200c\u200d\u2060\ufeff"}, "prompt"),
    ({"prompt": " \u200b\n\u200b "}, "prompt"),
    ({"prompt": None}, "prompt"),
    ({"prompt": 42}, "prompt"),
    ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": "bell\x07"}, "prompt"),
    ({"prompt": "nul\x00byte"}, "prompt"),
    ({"prompt": "ü" * 2001}, "prompt"),
    ({**GOOD, "negative_prompt": 3}, "negative_prompt"),
    ({**GOOD, "negative_prompt": "x" * 2001}, "negative_prompt"),
    ({**GOOD, "width": 250}, "width"),
    ({**GOOD, "width": -64}, "width"),
    ({**GOOD, "width": 0}, "width"),
    ({**GOOD, "width": 56}, "width"),
    ({**GOOD, "width": 520}, "width"),
    ({**GOOD, "width": "512"}, "width"),
    ({**GOOD, "width": 512.5}, "width"),
    ({**GOOD, "width": True}, "width"),
    ({**GOOD, "width": 10**40}, "width"),
    ({**GOOD, "height": 1e9}, "height"),
    ({**GOOD, "height": 1e300}, "height"),
    ({**GOOD, "height": None}, "height"),
    ({**GOOD, "steps": 0}, "steps"),
    ({**GOOD, "steps": 51}, "steps"),
    ({**GOOD, "steps": 2.5}, "steps"),
    ({**GOOD, "guidance_scale": -1}, "guidance_scale"),
    ({**GOOD, "guidance_scale": 31}, "guidance_scale"),
    ({**GOOD, "guidance_scale": "7"}, "guidance_scale"),
    ({**GOOD, "guidance_scale": False}, "guidance_scale"),
    ({**GOOD, "seed": -2}, "seed"),
    ({**GOOD, "seed": 2**32}, "seed"),
    ({**GOOD, "seed": "42"}, "seed"),
    ({**GOOD, "seed": 4.2}, "seed"),
    ({**GOOD, "scheduler": "k_euler_magic"}, "scheduler"),
    ({**GOOD, "scheduler": 1}, "scheduler"),
    ({**GOOD, "sampler": "k_euler_magic"}, "sampler"),
    ({**GOOD, "sampler": "lcm", "schedule": "karras"}, "schedule"),
    ({**GOOD, "sampler": "euler", "scheduler": "euler_a"}, "scheduler"),
    ({**GOOD, "n_images": 2}, "n_images"),
]


@pytest.mark.parametrize(("body", "field"), INVALID_FIELDS, ids=[f"{f}-{i}" for i, (_, f) in enumerate(INVALID_FIELDS)])
async def test_invalid_field_is_422_naming_it(client, settings, body, field):
    resp = await client.post("/api/v1/generate", json=body)
    assert resp.status == 422
    error = await resp.json()
    assert error["error"] == "validation_error"
    assert field in error["fields"] and field in error["message"]
    assert all(isinstance(m, str) and m for m in error["fields"][field])
    assert not any((settings.output_dir / "images").iterdir())


async def test_every_bad_field_is_named_at_once(client):
    resp = await client.post("/api/v1/generate", json={"prompt": "", "width": 3, "steps": 99, "bogus": 1})
    assert resp.status == 422
    assert set((await resp.json())["fields"]) == {"prompt", "width", "steps", "bogus"}


@pytest.mark.parametrize(
    "raw",
    [
        "NaN",
        '{"prompt": "x", "guidance_scale": NaN}',
        '{"prompt": "x", "guidance_scale": Infinity}',
        '{"prompt": "x", "guidance_scale": -Infinity}',
        '{"prompt": "x", "guidance_scale": 1e999}',
    ],
)
async def test_non_finite_numbers_are_refused(client, raw):
    resp = await client.post("/api/v1/generate", data=raw, headers={"Content-Type": "application/json"})
    assert resp.status in (400, 422)
    body = await resp.json()
    assert body["error"] in ("invalid_body", "validation_error")
    if resp.status == 422:
        assert "guidance_scale" in body["fields"]


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        ('["a", "b"]', "must be a JSON object, not an array"),
        ('"just a string"', "not a string"),
        ("42", "not a number"),
        ("null", "not null"),
        ("true", "not a boolean"),
        ('{"prompt": "trunc', "not valid JSON"),
        ("{prompt: 'x'}", "not valid JSON"),
        ("", "empty"),
        (b'{"prompt": "\xff\xfe"}', "not valid UTF-8"),
        ("[" * 30000 + "]" * 30000, "nested too deeply"),
        ('{"prompt": "x", "seed": ' + "9" * 5000 + "}", "cannot be read"),
    ],
)
async def test_bodies_that_are_not_json_objects_are_400(client, raw, needle):
    resp = await client.post("/api/v1/generate", data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "invalid_body" and needle in body["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"])
async def test_wrong_content_type_is_415(client, content_type):
    resp = await client.post("/api/v1/generate", data=json.dumps(GOOD), headers={"Content-Type": content_type})
    assert resp.status == 415
    body = await resp.json()
    assert body["error"] == "unsupported_media_type" and "application/json" in body["message"]


async def test_oversized_body_is_413(make_client, settings):
    """MAX_BODY_BYTES on routes without images; MAX_IMAGE_BODY_BYTES on those that carry them."""
    settings = settings.replace(max_image_body_bytes=200_000)
    client = await make_client(settings)
    body = json.dumps({"prompt": "x" * (settings.max_body_bytes + 10)})
    resp = await client.post("/sdapi/v1/txt2img", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 413
    error = await resp.json()
    assert error["error"] == "body_too_large" and str(settings.max_body_bytes) in error["message"]
    body = json.dumps({"prompt": "x" * (settings.max_image_body_bytes + 10)})
    resp = await client.post("/api/v1/generate", data=body, headers={"Content-Type": "application/json"})
    assert resp.status == 413
    error = await resp.json()
    assert error["error"] == "body_too_large" and str(settings.max_image_body_bytes) in error["message"]


async def test_unicode_prompts_within_limits_are_accepted(client):
    resp = await client.post("/api/v1/generate", json={"prompt": "산과 호수, 일몰 🌅 — «détaillé»\nnew line", "steps": 1})
    assert resp.status == 200
    assert (await resp.json())["meta"]["prompt"].startswith("산과 호수")


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_that_does_not_decompress_is_400(client, encoding, caplog):
    headers = {"Content-Type": "application/json", "Content-Encoding": encoding}
    resp = await client.post("/api/v1/generate", data=b"\x1f\x8b\x08 these bytes are not compressed", headers=headers)
    assert resp.status == 400
    body = await resp.json()
    assert body["error"] == "invalid_body" and f"Content-Encoding: {encoding}" in body["message"]
    resp = await client.post("/v1/images/generations", data=b"\x00 not compressed either", headers=headers)
    assert resp.status == 400
    assert (await resp.json())["error"]["type"] == "invalid_request_error"
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]  # a client's mistake, not ours


@pytest.mark.parametrize(("encoding", "compress"), [("gzip", gzip.compress), ("deflate", zlib.compress)])
async def test_a_compressed_body_is_read(client, encoding, compress):
    resp = await client.post(
        "/api/v1/generate", data=compress(b'{"prompt": ""}'),
        headers={"Content-Type": "application/json", "Content-Encoding": encoding},
    )
    assert resp.status == 422 and "prompt" in (await resp.json())["fields"]
