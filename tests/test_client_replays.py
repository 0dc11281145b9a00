"""Replays of what popular clients send, built from their source, parsed the way they parse it (more in
tests/test_client_replays_more.py: AIYA, the Photoshop and GIMP plugins, Dify, Home Assistant).

Sources read line by line (the versions are listed in docs/compatible-apis.md too):
- Open WebUI, backend/open_webui/routers/images.py (main, 2026): A1111 mode (``authorization``
  header, empty or ``Basic base64(user:pass)``; options read then written back whole to switch
  models; txt2img ``{prompt, batch_size, width, height, steps, negative_prompt}``; reads
  ``res['images']`` and ``res['info']`` without checking the status) and OpenAI mode (``Bearer``;
  ``{model, prompt, n, size}`` plus ``response_format: b64_json`` except for models answering
  base64 anyway, i.e. ``gpt-image-*``; reads ``url`` or ``b64_json``).
- SillyTavern 1.12.6 (staging 1ac6780e, 2024-10): the extension,
  public/scripts/extensions/stable-diffusion/index.js (``generateAutoImage``: its defaults are
  sampler ``DDIM``, scheduler ``normal``, 20 steps, scale 7, 512x512, seed -1 left out, its own
  ``url`` and ``auth`` inside the body), and the server, src/endpoints/stable-diffusion.js (every
  call carries ``Authorization: Basic base64(auth)``, ``"Basic "`` when auth is empty; ping is GET
  options; models by ``title``; set-model POSTs ``{sd_model_checkpoint}`` then polls /progress
  until ``progress == 0`` and ``state.job_count == 0``; generate forwards the whole body and, when
  its own client goes away, POSTs /interrupt with no body and aborts the request).
- LibreChat, api/app/clients/tools/structured/ (upstream 37d31ec and 7cacd8a, 2024; 8731432, 2025;
  and a 2025 fork snapshot 00b3bc3): OpenAIImageTools.js (``image_gen_oai``: ``{model:
  'gpt-image-1', prompt, n, background: 'auto', output_format, output_compression (jpeg/webp only),
  quality: 'auto', size: 'auto'}``, reads ``data[0].b64_json``; ``image_edit_oai``: multipart
  ``model, prompt, quality, size`` and one ``image[]`` part a picture, reads ``data[0].b64_json``),
  DALLE3.js (``{model: 'dall-e-3', quality, style, size, prompt, n: 1}`` through the openai SDK at
  ``DALLE_REVERSE_PROXY`` cut after ``/v1``, with every ``"`` deleted from the prompt; reads
  ``data[0].url`` and downloads it, without credentials, naming the file by its extension; an error
  shows ``error.message``) and StableDiffusion.js (axios POST ``${SD_WEBUI_URL}/sdapi/v1/txt2img``,
  so a URL ending in ``/`` gives ``//sdapi``; ``{prompt, negative_prompt, sampler_index: 'DPM++ 2M
  Karras' (2024 only), cfg_scale: 4.5, steps: 22, width: 1024, height: 1024}``; no auth header but
  the URL's own ``user:password@``; decodes ``images[0].split(',', 1)[0]``, parses ``info`` as JSON
  and reads its ``width``, ``height``, ``seed`` and the last line of ``infotexts[0]``).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json

import aiohttp
import pytest
from doubles import PausingEngine
from images import encode, picture
from PIL import Image
from wsclient import events_until
from yarl import URL

from sdxl_server.params import LATENT_UPSCALERS

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


@pytest.mark.parametrize("model", ["gpt-image-1", "dall-e-2"])
async def test_open_webui_openai_mode_edits(client, key, model):
    # image_edits: multipart of str(value) fields, response_format only for models not matching
    # IMAGE_URL_RESPONSE_MODELS_REGEX_PATTERN ('^gpt-image'), one `image` part (several: `image[]`).
    form = aiohttp.FormData()
    fields = {"model": model, "prompt": "make it night", "n": 1, "size": "512x512", "background": "auto"}
    if not model.startswith("gpt-image"):
        fields["response_format"] = "b64_json"
    for name, value in fields.items():
        form.add_field(name, str(value))
    form.add_field("image", encode(picture(64, 64)), filename="0b5e0c1e-0000.png", content_type="image/png")
    resp = await client.post("/v1/images/edits", data=form, headers={"Authorization": bearer(key)["Authorization"]})
    resp.raise_for_status()
    [image] = (await resp.json())["data"]
    assert "url" not in image  # Open WebUI refuses URLs on private addresses
    assert Image.open(io.BytesIO(base64.b64decode(image["b64_json"]))).size == (512, 512)


def sillytavern_auto_payload(key: str | None, **chosen) -> dict:
    """``generateAutoImage``'s body with the extension's default settings (``chosen``: the user's)."""
    payload = {
        "url": "http://127.0.0.1:8001", "auth": "" if key is None else f"st:{key}",
        "prompt": "best quality, absurdres, aesthetic, a lighthouse", "negative_prompt": "lowres, bad anatomy",
        "sampler_name": "DDIM", "scheduler": "normal", "steps": 20, "cfg_scale": 7, "width": 512, "height": 512,
        "restore_faces": False, "enable_hr": False, "hr_upscaler": "Latent", "hr_scale": 1.0,
        "denoising_strength": 0.7, "hr_second_pass_steps": 0,
        "override_settings": {"CLIP_stop_at_last_layers": 1}, "override_settings_restore_afterwards": True,
        "clip_skip": 1, "save_images": True, "send_images": True, "do_not_save_grid": False, "do_not_save_samples": False,
    }  # seed -1 is left out (undefined); sd_vae only when a VAE was chosen
    return {**payload, **chosen}


async def test_sillytavern_connect_lists_set_model_generate(client, key):
    auth = sillytavern_auth(key)
    assert (await client.get("/sdapi/v1/options", headers=auth)).ok  # /ping
    upscalers = [x["name"] for x in await (await client.get("/sdapi/v1/upscalers", headers=auth)).json()]
    latent = [x["name"] for x in await (await client.get("/sdapi/v1/latent-upscale-modes", headers=auth)).json()]
    listed = upscalers[:1] + latent + upscalers[1:]  # the extension's upscaler list, latent modes after None
    assert listed == ["None", *LATENT_UPSCALERS, "Lanczos", "Nearest", "tiny-compact-2x"]
    vaes = await (await client.get("/sdapi/v1/sd-vae", headers=auth)).json()
    assert [x["model_name"] for x in vaes] == []
    samplers = [x["name"] for x in await (await client.get("/sdapi/v1/samplers", headers=auth)).json()]
    schedulers = [x["name"] for x in await (await client.get("/sdapi/v1/schedulers", headers=auth)).json()]
    models = [{"value": x["title"], "text": x["title"]} for x in await (await client.get("/sdapi/v1/sd-models", headers=auth)).json()]
    assert "Euler a" in samplers and "karras" in schedulers and models == [{"value": "tiny", "text": "tiny"}]
    current = await (await client.get("/sdapi/v1/options", headers=auth)).json()  # /get-model sends this as text
    assert current["sd_model_checkpoint"] in [m["value"] for m in models]

    resp = await client.post("/sdapi/v1/options", data=json.dumps({"sd_model_checkpoint": "tiny"}),
                             headers={"Content-Type": "application/json", **auth})
    assert resp.ok
    progress = await (await client.get("/sdapi/v1/progress", headers=auth)).json()
    assert progress["progress"] == 0.0 and progress["state"]["job_count"] == 0  # the model is ready

    for chosen, size in (({}, (512, 512)),  # the extension's defaults: DDIM, scheduler "normal", no seed
                         ({"sampler_name": "DPM++ SDE", "scheduler": "karras", "steps": 40, "width": 1344,
                           "height": 768, "seed": 5, "override_settings": {"CLIP_stop_at_last_layers": 1, "sd_vae": "Automatic"}},
                          (512, 296))):
        body = sillytavern_auto_payload(key, **chosen)
        resp = await client.post("/sdapi/v1/txt2img", data=json.dumps(body), headers={"Content-Type": "application/json", **auth})
        assert resp.ok, await resp.text()
        data = await resp.json()
        assert Image.open(io.BytesIO(base64.b64decode(data["images"][0]))).size == size  # format: 'png', data: images[0]
    info = json.loads(data["info"])
    assert info["seed"] == 5 and info["steps"] == 25 and info["sampler_name"] == "DPM++ 2M SDE"
    assert info["extra_generation_params"]["Schedule type"] == "Karras"


async def test_sillytavern_interrupts_when_its_client_disconnects(make_client, settings, key):
    client = await make_client(settings, engine_factory=lambda s: PausingEngine(s, pause_after=1))
    auth = sillytavern_auth(key)
    ws = await client.ws_connect("/api/v1/ws", headers={} if key is None else {"Authorization": f"Bearer {key}"})
    await ws.receive_json()
    body = sillytavern_auto_payload(key, steps=3, width=64, height=64)
    generating = asyncio.create_task(client.post("/sdapi/v1/txt2img", data=json.dumps(body),
                                                 headers={"Content-Type": "application/json", **auth}))
    started = await events_until(ws, lambda e: e["type"] == "progress" and e["step"] == 1)
    # request.socket.on('close'): POST /interrupt with the Basic header alone (no body, no
    # Content-Type), then controller.abort() of the generation request.
    assert (await client.post("/sdapi/v1/interrupt", headers=auth)).ok
    generating.cancel()
    job_id = started[-1]["id"]
    ended = (await events_until(ws, lambda e: e["id"] == job_id and e["type"] in ("completed", "failed", "cancelled")))[-1]
    assert ended["type"] == "completed" and ended["meta"]["interrupted_at_step"] == 1  # saved as far as it got
    progress = await (await client.get("/sdapi/v1/progress", headers=auth)).json()
    assert progress["state"]["job_count"] == 0 and not progress["state"]["interrupted"]  # ready for the next one


async def test_librechat_gpt_image_tools(client, key):
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

    # image_edit_oai: axios multipart to {baseURL}/images/edits, one image[] part a picture, no n, no mask.
    form = aiohttp.FormData()
    for name, value in (("model", "gpt-image-1"), ("prompt", "make it night"), ("quality", "auto"), ("size", "auto")):
        form.add_field(name, value)
    form.add_field("image[]", encode(picture(64, 64)), filename="img-1.png", content_type="image/png")
    resp = await client.post("/v1/images/edits", data=form, headers={"Authorization": bearer(key)["Authorization"]})
    assert resp.status == 200, await resp.text()
    edited = Image.open(io.BytesIO(base64.b64decode((await resp.json())["data"][0]["b64_json"])))
    assert edited.size == (64, 64)


def librechat_dalle3_base_url(reverse_proxy: str) -> str:
    """extractBaseURL(DALLE_REVERSE_PROXY): cut after ``/v1``; the SDK then joins ``/images/generations``."""
    return reverse_proxy[: reverse_proxy.index("/v1") + 3] if "/v1" in reverse_proxy else reverse_proxy


async def test_librechat_dalle3_tool(client, key):
    base = librechat_dalle3_base_url(str(client.make_url("/v1/images/generations")))
    prompt = 'A "lighthouse"\nat dusk'.replace("\n", " ").replace('"', "").strip()  # replaceUnwantedChars
    data = {"model": "dall-e-3", "quality": "standard", "style": "vivid", "size": "1792x1024", "prompt": prompt, "n": 1}
    resp = await client.post(URL(base + "/images/generations").path, json=data, headers=bearer(key))
    resp.raise_for_status()
    url = (await resp.json())["data"][0]["url"]
    assert url, "No image URL returned from OpenAI API."
    assert URL(url).path.endswith(".png")  # the saved file is named by the URL's extension
    image = await client.get(URL(url).path)  # downloaded with a plain fetch: no credentials
    assert image.status == 200 and Image.open(io.BytesIO(await image.read())).size == (512, 296)

    # An error is shown as `${status} ${body.error.message}`: the message must say what to change.
    resp = await client.post(URL(base + "/images/generations").path, json={**data, "prompt": ""}, headers=bearer(key))
    error = (await resp.json())["error"]
    assert resp.status == 400 and "prompt" in error["message"]


@pytest.mark.parametrize("version", ["2024", "2025"])
async def test_librechat_stable_diffusion_tool(client, key, version):
    # SD_WEBUI_URL as people write it, with a trailing slash (and, with a key, the URL's own
    # credentials, which axios sends as Basic auth): `${url}/sdapi/v1/txt2img` has a double slash.
    auth = {} if key is None else basic(f"librechat:{key}")
    payload = {"prompt": "a lighthouse", "negative_prompt": "fog", "cfg_scale": 4.5, "steps": 22, "width": 1024, "height": 1024}
    if version == "2024":
        payload = {**payload, "sampler_index": "DPM++ 2M Karras"}
    async with aiohttp.ClientSession() as axios, axios.post(
            f"http://{client.host}:{client.port}/" + "/sdapi/v1/txt2img", json=payload, headers=auth) as resp:
        assert resp.status == 200, await resp.text()
        generation = await resp.json()
    image = Image.open(io.BytesIO(base64.b64decode(generation["images"][0].split(",", 1)[0])))
    info = json.loads(generation["info"])
    assert (info["width"], info["height"]) == image.size == (512, 512)  # 1024 fitted into the tests' limits
    assert isinstance(info["seed"], int)
    generation_info = info["infotexts"][0].split("\n").pop()
    assert generation_info.startswith("Steps: 22, ") and "CFG scale: 4.5" in generation_info
    if version == "2024":
        assert "Sampler: DPM++ 2M, Schedule type: Karras" in generation_info
