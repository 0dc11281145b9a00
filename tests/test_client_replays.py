"""Replays of what popular clients send, built from their source, parsed the way they parse it.

Sources read (field names, types, nulls, headers):
- Open WebUI, backend/open_webui/routers/images.py (main, 2026): A1111 mode (``authorization``
  header, empty or ``Basic base64(user:pass)``; options read then written back whole to switch
  models; txt2img ``{prompt, batch_size, width, height, steps, negative_prompt}``; reads
  ``res['images']`` and ``res['info']`` without checking the status) and OpenAI mode (``Bearer``;
  ``{model, prompt, n, size}`` plus ``response_format: b64_json`` except for models answering
  base64 anyway, i.e. ``gpt-image-*``; reads ``url`` or ``b64_json``).
- SillyTavern, src/endpoints/stable-diffusion.js (release, 2026): every call carries
  ``Authorization: Basic base64(auth)`` (``"Basic "`` when auth is empty); ping is GET options;
  set-model POSTs ``{sd_model_checkpoint}`` then polls /progress until ``progress == 0`` and
  ``job_count == 0``; generate POSTs the whole request body (with SillyTavern's own ``url`` and
  ``auth`` fields in it) and POSTs /interrupt when its own client disconnects.
- LibreChat, api/app/clients/tools/structured/OpenAIImageTools.js (``image_gen_oai``:
  ``{model: 'gpt-image-1', prompt, n, background: 'auto', output_format, output_compression
  (jpeg/webp only), quality: 'auto', size: 'auto'}``, reads ``data[0].b64_json``), DALLE3.js
  (``{model: 'dall-e-3', quality, style, size, prompt, n: 1}``, reads ``data[0].url`` and
  downloads it) and StableDiffusion.js (txt2img ``{prompt, negative_prompt, cfg_scale: 4.5,
  steps: 22, width: 1024, height: 1024}``, then png-info on ``images[0]``).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json

import pytest
from doubles import PausingEngine
from PIL import Image
from wsclient import events_until
from yarl import URL

KEY = "sk-replay"


@pytest.fixture(params=[None, KEY], ids=["no-key", "api-key"])
def key(request):
    return request.param


@pytest.fixture
def settings(settings, key):
    return settings.replace(api_key=key, max_steps=25)


def basic(user_pass: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(user_pass.encode()).decode()}


def open_webui_a1111_auth(key: str | None) -> dict[str, str]:
    # get_automatic1111_api_auth: '' when unset, else Basic of the 'user:password' setting.
    return {"authorization": ""} if key is None else {"authorization": basic(f"openwebui:{key}")["Authorization"]}


def sillytavern_auth(key: str | None) -> dict[str, str]:
    return basic("" if key is None else f"st:{key}")  # getBasicAuthHeader('') is 'Basic '


def bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key or 'sk-anything'}", "Content-Type": "application/json"}


async def test_open_webui_a1111_mode(client, key):
    auth = open_webui_a1111_auth(key)
    options = await (await client.get("/sdapi/v1/options", headers=auth)).json()
    assert options["sd_model_checkpoint"] == "tiny"  # get_image_model
    resp = await client.post("/sdapi/v1/options", json={**options, "sd_model_checkpoint": "tiny"}, headers=auth)
    resp.raise_for_status()  # set_image_model writes the whole options back
    data = {"prompt": "a lighthouse", "batch_size": 2, "width": 960, "height": 540, "steps": 2, "negative_prompt": "fog"}
    res = await (await client.post("/sdapi/v1/txt2img", json=data, headers=auth)).json()
    images = [Image.open(io.BytesIO(base64.b64decode(image))) for image in res["images"]]
    assert len(images) == 2 and images[0].size == (512, 288)  # 960x540 fitted into the tests' 512x512
    assert json.loads(res["info"])["width"] == 512


async def test_open_webui_a1111_errors_are_readable(client, key):
    res = await (await client.post("/sdapi/v1/txt2img", json={"prompt": "x", "cfg_scale": 99},
                                   headers=open_webui_a1111_auth(key))).json()
    assert "images" not in res and "cfg_scale" in res["detail"]  # Open WebUI shows the KeyError; the log has detail


@pytest.mark.parametrize("model", ["dall-e-3", "gpt-image-1"])
async def test_open_webui_openai_mode(client, key, model):
    data = {"model": model, "prompt": "a lighthouse", "n": 1, "size": "1024x1024"}
    if not model.startswith("gpt-image"):
        data["response_format"] = "b64_json"
    resp = await client.post("/v1/images/generations", json=data, headers=bearer(key))
    resp.raise_for_status()
    res = await resp.json()
    image = res["data"][0]
    assert "url" not in image  # Open WebUI refuses URLs on private addresses
    assert Image.open(io.BytesIO(base64.b64decode(image["b64_json"]))).size == (512, 512)


async def test_sillytavern_connect_lists_set_model_generate(client, key):
    auth = sillytavern_auth(key)
    assert (await client.get("/sdapi/v1/options", headers=auth)).ok  # /ping
    upscalers = [x["name"] for x in await (await client.get("/sdapi/v1/upscalers", headers=auth)).json()]
    latent = [x["name"] for x in await (await client.get("/sdapi/v1/latent-upscale-modes", headers=auth)).json()]
    assert upscalers[:1] + latent + upscalers[1:] == ["None"]
    vaes = await (await client.get("/sdapi/v1/sd-vae", headers=auth)).json()
    assert [x["model_name"] for x in vaes] == []
    samplers = [x["name"] for x in await (await client.get("/sdapi/v1/samplers", headers=auth)).json()]
    schedulers = [x["name"] for x in await (await client.get("/sdapi/v1/schedulers", headers=auth)).json()]
    models = [{"value": x["title"], "text": x["title"]} for x in await (await client.get("/sdapi/v1/sd-models", headers=auth)).json()]
    assert "Euler a" in samplers and "karras" in schedulers and models == [{"value": "tiny", "text": "tiny"}]

    resp = await client.post("/sdapi/v1/options", data=json.dumps({"sd_model_checkpoint": "tiny"}),
                             headers={"Content-Type": "application/json", **auth})
    assert resp.ok
    progress = await (await client.get("/sdapi/v1/progress", headers=auth)).json()
    assert progress["progress"] == 0.0 and progress["state"]["job_count"] == 0  # the model is ready

    body = {  # the extension's request, forwarded whole with SillyTavern's url and auth in it
        "url": "http://127.0.0.1:8001", "auth": "" if key is None else f"st:{key}",
        "prompt": "a lighthouse", "negative_prompt": "lowres", "sampler_name": "DPM++ SDE", "scheduler": "Karras",
        "steps": 40, "cfg_scale": 7, "width": 1344, "height": 768, "restore_faces": False, "enable_hr": False,
        "hr_upscaler": "None", "hr_scale": 1, "hr_additional_modules": [], "denoising_strength": 0.7,
        "hr_second_pass_steps": 0, "seed": -1, "override_settings": {"CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic"},
        "override_settings_restore_afterwards": True, "clip_skip": 1, "save_images": True, "send_images": True,
        "do_not_save_grid": False, "do_not_save_samples": False,
    }
    resp = await client.post("/sdapi/v1/txt2img", data=json.dumps(body), headers={"Content-Type": "application/json", **auth})
    assert resp.ok, await resp.text()
    data = await resp.json()
    assert Image.open(io.BytesIO(base64.b64decode(data["images"][0]))).size == (512, 296)
    info = json.loads(data["info"])
    assert info["steps"] == 25 and info["sampler_name"] == "DPM++ 2M SDE Karras"


async def test_sillytavern_interrupts_when_its_client_disconnects(make_client, settings, key):
    client = await make_client(settings, engine_factory=lambda s: PausingEngine(s, pause_after=1))
    auth = sillytavern_auth(key)
    ws = await client.ws_connect("/api/v1/ws", headers={} if key is None else {"Authorization": f"Bearer {key}"})
    await ws.receive_json()
    body = {"prompt": "a lighthouse", "steps": 3, "width": 64, "height": 64, "send_images": True}
    generating = asyncio.create_task(client.post("/sdapi/v1/txt2img", json=body, headers=auth))
    await events_until(ws, lambda e: e["type"] == "progress" and e["step"] == 1)
    assert (await client.post("/sdapi/v1/interrupt", headers=auth)).ok  # socket 'close' handler
    resp = await generating
    assert resp.status == 200 and (await resp.json())["images"] == []


async def test_librechat_gpt_image_tool(client, key):
    for output_format in ("png", "webp"):
        data = {"model": "gpt-image-1", "prompt": "a lighthouse", "n": 1, "background": "auto",
                "output_format": output_format, "quality": "auto", "size": "auto"}
        if output_format != "png":
            data["output_compression"] = 100
        resp = await client.post("/v1/images/generations", json=data, headers=bearer(key))
        resp.raise_for_status()
        base64_image = (await resp.json())["data"][0]["b64_json"]
        assert base64_image, "No image data returned from OpenAI API."
        assert Image.open(io.BytesIO(base64.b64decode(base64_image))).format == output_format.upper()


async def test_librechat_dalle3_tool(client, key):
    data = {"model": "dall-e-3", "quality": "standard", "style": "vivid", "size": "1792x1024", "prompt": "a lighthouse", "n": 1}
    resp = await client.post("/v1/images/generations", json=data, headers=bearer(key))
    resp.raise_for_status()
    url = (await resp.json())["data"][0]["url"]
    image = await client.get(URL(url).path)  # the tool downloads the URL
    assert Image.open(io.BytesIO(await image.read())).size == (512, 296)


async def test_librechat_stable_diffusion_tool(client, key):
    auth = {} if key is None else basic(f"librechat:{key}")
    payload = {"prompt": "a lighthouse", "negative_prompt": "fog", "cfg_scale": 4.5, "steps": 22, "width": 1024, "height": 1024}
    generation = await (await client.post("/sdapi/v1/txt2img", json=payload, headers=auth)).json()
    image = generation["images"][0]
    resp = await client.post("/sdapi/v1/png-info", json={"image": image}, headers=auth)
    info = await resp.json()
    assert resp.status == 200, info
    assert info["info"].startswith("a lighthouse\nNegative prompt: fog\nSteps: 22, ")
