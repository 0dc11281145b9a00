"""Prompt styles (A1111's styles.csv): applied as A1111 applies them, on our API and A1111's,
listed in both shapes, reread when the file changes, and a malformed file is a listed problem."""

from __future__ import annotations

import base64
import io
import json
import os

from images import generate_png, pixels
from PIL import Image

from sdxl_server.api.styles import Style, apply_styles, merge_prompt, parse_styles

STYLES = (
    "name,prompt,negative_prompt\n"
    'ink,"ink drawing of {prompt}, monochrome",blurry\n'
    "warm,warm light,\n"
)


def test_styles_apply_as_a1111_merges_them():
    assert merge_prompt("ink of {prompt}", "a fox") == "ink of a fox"
    assert merge_prompt("warm light", " a fox ") == "a fox, warm light"
    assert merge_prompt("", "a fox") == "a fox" and merge_prompt("warm", "") == "warm"
    styles = parse_styles(STYLES)
    assert styles["ink"] == Style("ink", "ink drawing of {prompt}, monochrome", "blurry")
    assert apply_styles("a fox", "grainy", [styles["warm"], styles["ink"]]) == (
        "ink drawing of a fox, warm light, monochrome", "grainy, blurry")


async def test_styles_are_listed_in_both_shapes(client, settings):
    settings.styles_file.write_text(STYLES)
    ours = await (await client.get("/api/v1/styles")).json()
    assert ours["problem"] is None and [style["name"] for style in ours["styles"]] == ["ink", "warm"]
    a1111 = await (await client.get("/sdapi/v1/prompt-styles")).json()
    assert a1111 == [{"name": "ink", "prompt": "ink drawing of {prompt}, monochrome", "negative_prompt": "blurry"},
                     {"name": "warm", "prompt": "warm light", "negative_prompt": ""}]


async def test_no_file_is_no_styles_and_a_changed_file_is_read_again(client, settings):
    assert (await (await client.get("/api/v1/styles")).json())["styles"] == []
    settings.styles_file.write_text(STYLES)
    assert len((await (await client.get("/api/v1/styles")).json())["styles"]) == 2
    settings.styles_file.write_text("name,prompt\nonly,one\n")
    os.utime(settings.styles_file, ns=(1, 1))  # a different time even on a coarse clock
    assert [s["name"] for s in (await (await client.get("/api/v1/styles")).json())["styles"]] == ["only"]


async def test_a_styled_request_encodes_and_records_the_prompt_as_styled(client, settings):
    settings.styles_file.write_text(STYLES)
    data, image = await generate_png(client, {"prompt": "a fox", "negative_prompt": "grainy", "seed": 4,
                                              "styles": ["warm", "ink"]})
    styled = "ink drawing of a fox, warm light, monochrome"
    assert data["meta"]["prompt"] == styled and data["meta"]["negative_prompt"] == "grainy, blurry"
    assert data["meta"]["styles"] == ["warm", "ink"]
    assert image.text["parameters"].startswith(styled + "\nNegative prompt: grainy, blurry\n")
    assert image.tobytes() == await pixels(client, {"prompt": styled, "negative_prompt": "grainy, blurry", "seed": 4})
    assert image.tobytes() != await pixels(client, {"prompt": "a fox", "negative_prompt": "grainy", "seed": 4})


async def test_an_unknown_style_is_a_422_listing_the_styles(client, settings):
    settings.styles_file.write_text(STYLES)
    resp = await client.post("/api/v1/generate", json={"prompt": "a fox", "styles": ["nope"]})
    body = await resp.json()
    assert resp.status == 422 and "styles" in body["fields"] and "ink, warm" in body["message"]
    resp = await client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", "styles": ["nope"]})
    assert resp.status == 422 and "styles" in (await resp.json())["fields"]


async def test_a_malformed_file_is_a_listed_problem_never_a_500(client, settings):
    settings.styles_file.write_bytes(b"\xff\xfe not, a styles file\n")
    listing = await client.get("/api/v1/styles")
    assert listing.status == 200 and (await listing.json())["problem"]
    assert await (await client.get("/sdapi/v1/prompt-styles")).json() == []
    resp = await client.post("/api/v1/generate", json={"prompt": "a fox", "styles": ["ink"]})
    assert resp.status == 422 and "styles" in (await resp.json())["fields"]


async def test_a1111_styles_are_applied_and_reported(client, settings):
    settings.styles_file.write_text(STYLES)
    resp = await client.post("/sdapi/v1/txt2img", json={"prompt": "a fox", "seed": 4, "steps": 3, "styles": ["ink"]})
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    info = json.loads(answer["info"])
    assert info["prompt"] == "ink drawing of a fox, monochrome" and info["styles"] == ["ink"]
    assert info["negative_prompt"] == "blurry"
    image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))
    assert image.tobytes() == await pixels(client, {"prompt": "ink drawing of a fox, monochrome",
                                                    "negative_prompt": "blurry", "seed": 4})
