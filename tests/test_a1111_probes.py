"""The A1111 endpoints clients probe (SillyTavern, Open WebUI, webuiapi), answered truthfully."""

from __future__ import annotations

import base64
import io

import psutil
import pytest
from PIL import Image, PngImagePlugin

KEY = "probe-key"


async def test_lists_of_what_this_server_does_not_have(client):
    assert [u["name"] for u in await (await client.get("/sdapi/v1/upscalers")).json()] == ["None"]
    for path in ("latent-upscale-modes", "sd-vae", "sd-modules", "face-restorers", "prompt-styles"):
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


@pytest.mark.parametrize("path", ["/sdapi/v1/upscalers", "/sdapi/v1/memory", "/sdapi/v1/cmd-flags"])
async def test_probes_need_the_key_when_one_is_set(make_client, settings, path):
    client = await make_client(settings.replace(api_key=KEY))
    assert (await client.get(path)).status == 401
    assert (await client.get(path, headers={"Authorization": "Basic " + base64.b64encode(f"st:{KEY}".encode()).decode()})).status == 200
