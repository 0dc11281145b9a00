"""The A1111 endpoints clients probe (SillyTavern, Open WebUI, webuiapi), answered truthfully."""

from __future__ import annotations

import base64
import io
import json
import time

import psutil
import pytest
from images import png_file
from PIL import Image, PngImagePlugin

KEY = "probe-key"


async def test_lists_of_what_this_server_does_not_have(client):
    upscalers = [u["name"] for u in await (await client.get("/sdapi/v1/upscalers")).json()]
    assert upscalers == ["None", "Lanczos", "Nearest", "tiny-compact-2x"]  # the built-ins, the tiny model's upscaler
    modes = [m["name"] for m in await (await client.get("/sdapi/v1/latent-upscale-modes")).json()]
    assert modes[0] == "Latent" and "Latent (nearest-exact)" in modes  # hires fix's
    for path in ("sd-vae", "sd-modules", "face-restorers", "prompt-styles"):
        resp = await client.get(f"/sdapi/v1/{path}")
        assert resp.status == 200 and await resp.json() == [], path
    assert await (await client.get("/sdapi/v1/scripts")).json() == {"txt2img": [], "img2img": []}
    assert await (await client.get("/sdapi/v1/embeddings")).json() == {"loaded": {}, "skipped": {}}
    ping = await client.get("/internal/ping")
    assert ping.status == 200 and await ping.json() == {}


async def test_cmd_flags_and_memory_are_real(make_client, settings):
    client = await make_client(settings.replace(api_key=KEY, port=8123))
    headers = {"Authorization": f"Bearer {KEY}"}
    flags = await (await client.get("/sdapi/v1/cmd-flags", headers=headers)).json()
    assert flags["api"] is True and flags["port"] == 8123 and flags["api_auth"] == "***"
    assert flags["lora_dir"] == str(settings.lora_dir)
    memory = await (await client.get("/sdapi/v1/memory", headers=headers)).json()
    assert memory["ram"]["total"] == psutil.virtual_memory().total
    assert 0 < memory["ram"]["free"] <= memory["ram"]["total"]
    assert "error" in memory["cuda"]  # the tests run on the CPU
    assert (await client.get("/internal/ping")).status == 200  # public, like /health


async def test_png_info_reads_the_parameters_of_an_image_made_here(client):
    resp = await client.post("/sdapi/v1/txt2img", json={"prompt": "a red fox", "negative_prompt": "blur", "seed": 9,
                                                        "steps": 1, "width": 64, "height": 64})
    png = (await resp.json())["images"][0]
    for image in (png, "data:image/png;base64," + png):
        info = await (await client.post("/sdapi/v1/png-info", json={"image": image})).json()
        assert info["info"].startswith("a red fox\nNegative prompt: blur\nSteps: 1,")
        params = info["parameters"]
        assert params["Prompt"] == "a red fox" and params["Negative prompt"] == "blur"
        assert params["Seed"] == "9" and params["Size-1"] == "64" and params["Size-2"] == "64"


async def test_png_info_of_other_pngs_and_of_garbage(client):
    chunk = PngImagePlugin.PngInfo()
    chunk.add_text("Software", "elsewhere")
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=chunk)
    body = {"image": base64.b64encode(buffer.getvalue()).decode()}
    info = await (await client.post("/sdapi/v1/png-info", json=body)).json()
    assert info == {"info": "", "items": {"Software": "elsewhere"}, "parameters": {}}
    for junk in ("bm90IGFuIGltYWdl", "%%%"):
        resp = await client.post("/sdapi/v1/png-info", json={"image": junk})
        assert resp.status == 422 and "image" in (await resp.json())["fields"]


async def test_png_info_answers_at_once_for_pngs_built_to_stall_it(client):
    """Its infotext parser took 13-19 s on a long line of spaces, and reading an APNG's text
    decoded every frame on the event loop; both are read off the loop now, the parser in one pass,
    an APNG's frames never decoded."""
    spaces = "a fox\n" + " " * 29_000 + ":" + " " * 1000
    frames = png_file(1024, 1024, frames=300, text={"parameters": "a fox\nSteps: 3, Seed: 7"})
    for png, seed in ((png_file(64, 64, text={"parameters": spaces}), None), (frames, "7")):
        started = time.perf_counter()
        body = json.dumps({"image": base64.b64encode(png).decode()}).encode()
        resp = await client.post("/sdapi/v1/png-info", data=io.BytesIO(body), headers={"Content-Type": "application/json"})
        assert resp.status == 200 and time.perf_counter() - started < 5  # it took 19 s
        assert (await resp.json())["parameters"].get("Seed") == seed


async def test_png_info_refuses_a_bomb_as_the_image_routes_do(client, settings):
    """100000x100000 declared in a 370-byte file: refused from its header (it answered 500)."""
    resp = await client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(png_file(100_000, 100_000)).decode()})
    assert resp.status == 413
    error = await resp.json()
    assert error["error"] == "image_too_large" and "image" in error["fields"] and "MAX_INPUT_PIXELS" in error["detail"]


def test_infotext_pairs_with_quotes_commas_and_a1111_keys():
    from sdxl_server.api.a1111_probes import parse_infotext

    parsed = parse_infotext('a fox\nNegative prompt: blur\nSteps: 3, Lora hashes: "ink: 0123, b: 4", CFG-rescale: 0.7, Size: 64x96')
    assert parsed["Lora hashes"] == "ink: 0123, b: 4" and parsed["CFG-rescale"] == "0.7"
    assert (parsed["Prompt"], parsed["Negative prompt"], parsed["Size-1"], parsed["Size-2"]) == ("a fox", "blur", "64", "96")
    assert parse_infotext("one line: no parameters") == {"Prompt": "one line: no parameters", "Negative prompt": ""}


@pytest.mark.parametrize("path", ["/sdapi/v1/upscalers", "/sdapi/v1/memory", "/sdapi/v1/cmd-flags"])
async def test_probes_need_the_key_when_one_is_set(make_client, settings, path):
    client = await make_client(settings.replace(api_key=KEY))
    assert (await client.get(path)).status == 401
    assert (await client.get(path, headers={"Authorization": "Basic " + base64.b64encode(f"st:{KEY}".encode()).decode()})).status == 200


async def test_png_info_takes_the_image_routes_body_limit(make_client, settings):
    """MAX_IMAGE_BODY_BYTES, as every route that carries an image (it had its own fixed 64 MiB)."""
    client = await make_client(settings.replace(max_image_body_bytes=200_000))
    chunk = PngImagePlugin.PngInfo()
    chunk.add_text("parameters", "a lighthouse\nSteps: 3, Seed: 1")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buffer, format="PNG", pnginfo=chunk)
    small = base64.b64encode(buffer.getvalue()).decode()
    padded = {"image": small, "padding": "x" * 150_000}  # above MAX_BODY_BYTES, below the image limit
    resp = await client.post("/sdapi/v1/png-info", json=padded)
    assert resp.status == 200 and (await resp.json())["parameters"]["Seed"] == "1"
    resp = await client.post("/sdapi/v1/png-info", json={"image": small, "padding": "x" * 250_000})
    assert resp.status == 413 and (await resp.json())["error"] == "body_too_large"


async def test_interrogate_says_plainly_it_is_not_available(make_client, settings):
    client = await make_client(settings.replace(api_key=KEY))
    body = {"image": base64.b64encode(png_file(8, 8)).decode(), "model": "clip"}
    assert (await client.post("/sdapi/v1/interrogate", json=body)).status == 401  # a route like the others
    resp = await client.post("/sdapi/v1/interrogate", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert resp.status == 501
    answer = await resp.json()
    assert answer["error"] == "not_available" and "interrogate is not available on this server" in answer["detail"]
