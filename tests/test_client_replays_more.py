"""More replays of what clients send, built from their source, parsed the way they parse it
(tests/test_client_replays.py has the first ones and the fixtures; versions in docs/compatible-apis.md).

- AIYA, Kilvoctu/aiyabot at eb8ff684 (2025-12): core/settings.py (startup: GET cmd-flags without
  auth, a 401 meaning ``--api-auth``; ``authenticate_user``: a requests session with Basic
  ``(apiuser, apipass)``, GET /config, POST /login, neither checked; lists of samplers,
  prompt-styles, face-restorers, embeddings, hypernetworks, upscalers, sd-models, loras; /config
  parsed as JSON outside any try), core/stablecog.py (``dream``: options ``{sd_model_checkpoint}``,
  then txt2img or img2img with ``sampler_index``, ``seed_resize_from_*: -1``, ``denoising_strength:
  None`` or the user's strength *as a string*, ``styles: [style]`` with the default style
  ``"None"``, ``override_settings: {CLIP_stop_at_last_layers}``, ``init_images`` as data URLs; hires
  fix adds ``enable_hr``, ``hr_upscaler``, ``hr_scale``, ``hr_second_pass_steps: steps / 2`` (a
  float) and the user's ``denoising_strength``; reads ``images``, then POSTs each to /png-info and keeps its ``info``) and
  core/upscalecog.py (``extra-single-image``, reading ``image``).
- Auto-Photoshop-StableDiffusion-Plugin, AbdullahAlfaraj at 6f6d4907 (2023-12): utility/session.js
  (``getSettings``: the whole UI state, ``seed`` as a string, ``selection_info``, ``mode``,
  ``uniqueDocumentId``, prompt-shortcut fields; inpaint adds ``mask``, ``expanded_mask``,
  ``mask_expansion``, ``inpainting_fill``, ``inpaint_full_res*``), utility/sdapi/python_replacement.js
  (``fetch`` with ``Accept`` and ``Content-Type`` only: no credentials; reads ``images``, each
  through /png-info's ``info``, parsed by ``convertMetadataToJson``) and typescripts/controlnet/entry.ts
  (``mapPluginSettingsToControlNet``: ``controlnet_units`` and ``alwayson_scripts.controlnet.args``).
- stable-gimpfusion, ArtBIT at 3a92fcf7 (2024-01), stable_gimpfusion.py: urllib2 JSON posts without
  credentials; txt2img/img2img/inpainting bodies with ``sampler_index``, ``denoising_strength``
  always, ``resize_mode`` and ``inpainting_mask_invert`` as numbers, ControlNet units (defaults
  plus ``input_image``, no ``enabled``); ``ResponseLayers`` reads ``info`` as JSON, its
  ``infotexts`` and ``all_seeds``, one layer per seed.
- Dify, langgenius/dify api/core/tools/provider/builtin/: stablediffusion/tools/stable_diffusion.py
  at 04bcf81d (httpx ``post(url, data=json.dumps(...))``: no Content-Type; ``base_url`` joined by
  yarl, its ``user:password@`` sent as Basic auth by httpx; options ``{sd_model_checkpoint}`` must
  answer 200; models by ``model_name``; txt2img with ``DRAW_TEXT_OPTIONS`` (``s_noise: 0``, ``eta:
  0``, ``hr_scale: 2``...), img2img with ``script_args: ['outpainting mk2']``; reads
  ``images[0]``) and dalle/tools/dalle3.py at 18f0c324 (the openai SDK at ``openai_base_url/v1``,
  ``response_format: b64_json``, sizes 1024x1024, 1024x1792, 1792x1024; decodes ``b64_json``).
- Home Assistant, home-assistant/core homeassistant/components/openai_conversation/__init__.py at
  004090ee: ``generate_image`` calls ``images.generate(model='dall-e-3', prompt, size, quality,
  style, response_format='url', n=1)`` (sizes ``256``/``512``/``1024`` become ``1024x1024``) on
  ``AsyncOpenAI(api_key)`` (the base URL from ``OPENAI_BASE_URL``), after ``models.list`` at set-up;
  it answers ``data[0]`` without ``b64_json``: ``url`` and ``revised_prompt``.
"""

from __future__ import annotations

import base64
import io
import json

import openai
import pytest
from images import encode, picture
from PIL import Image
from rawhttp import RawResponse, exchange, request
from test_client_replays import KEY, basic
from yarl import URL

# The fixtures of tests/test_client_replays.py: every replay runs without and with API_KEY.
from test_client_replays import key, settings  # noqa: F401  (pytest fixtures)


def b64png(width: int = 64, height: int = 64) -> str:
    return base64.b64encode(encode(picture(width, height))).decode()


def decoded(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def warnings_of(res: dict) -> list[str]:
    return json.loads(res["info"]).get("warnings", [])


# --- AIYA -------------------------------------------------------------------------------------

def aiya_auth(key: str | None) -> dict[str, str]:
    return {} if key is None else basic(f"aiya:{key}")  # s.auth = (apiuser, apipass)


async def test_aiya_startup(client, key):
    flags = await client.get("/sdapi/v1/cmd-flags")  # requests.get, no auth: a 401 means --api-auth
    assert flags.status == (200 if key is None else 401)  # never 404 ("API is unreachable!")
    auth = aiya_auth(key)
    for method, path in (("GET", "/config"), ("POST", "/login")):  # authenticate_user: neither checked
        assert (await client.request(method, path, headers=auth)).status < 500
    samplers = [s["name"] for s in await (await client.get("/sdapi/v1/samplers", headers=auth)).json()]
    styles = {"None": ""} | {s["name"]: (s["prompt"], s["negative_prompt"])
                             for s in await (await client.get("/sdapi/v1/prompt-styles", headers=auth)).json()}
    facefix = [s["name"] for s in await (await client.get("/sdapi/v1/face-restorers", headers=auth)).json()]
    embeddings = await (await client.get("/sdapi/v1/embeddings", headers=auth)).json()
    assert all(isinstance(embeddings.get(k, {}), dict) for k in ("loaded", "skipped"))
    hypernetworks = await (await client.get("/sdapi/v1/hypernetworks", headers=auth)).json()
    assert isinstance(hypernetworks, (list, dict))  # a JSON 404: no names taken from it
    upscalers = [s["name"] for s in await (await client.get("/sdapi/v1/upscalers", headers=auth)).json()]
    models = await (await client.get("/sdapi/v1/sd-models", headers=auth)).json()
    loras = [s["alias"] for s in await (await client.get("/sdapi/v1/loras", headers=auth)).json()]
    assert "Euler a" in samplers and styles == {"None": ""} and facefix == [] and loras == []
    assert upscalers == ["None", "Lanczos", "Nearest", "tiny-compact-2x"]  # the tiny model's demo upscaler
    assert {(m["title"], m["model_name"]) for m in models} == {("tiny", "tiny")}
    assert "filename" in models[0] and "hash" in models[0]  # matched against models.csv
    config = await (await client.get("/config", headers=auth)).text()
    assert isinstance(json.loads(config), dict)  # `config_url.json()` is outside its try


def aiya_payload(**chosen) -> dict:
    """``dream``'s payload with the bot's default settings (``chosen``: the user's)."""
    payload = {
        "prompt": "a lighthouse", "negative_prompt": "", "steps": 30, "width": 512, "height": 512,
        "cfg_scale": "7.0", "sampler_index": "Euler a", "seed": 1234567, "seed_resize_from_h": -1,
        "seed_resize_from_w": -1, "denoising_strength": None, "n_iter": 1, "batch_size": 1, "styles": ["None"],
        "override_settings": {"CLIP_stop_at_last_layers": 1},
    }
    return {**payload, **chosen}


async def aiya_dream(client, auth, payload, route="txt2img") -> tuple[list[str], dict]:
    assert (await client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny"}, headers=auth)).ok
    resp = await client.post(f"/sdapi/v1/{route}", json=payload, headers=auth)
    response_data = await resp.json()
    assert resp.status == 200, response_data  # else: "txt2img failed: An invalid parameter was found! 'images'"
    infos = []
    for i in response_data["images"]:
        decoded(i)
        png = await client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + i}, headers=auth)
        infos.append((await png.json()).get("info"))
    assert all(isinstance(info, str) and "Seed: " in info for info in infos)
    return infos, response_data


async def test_aiya_draw(client, key):
    auth = aiya_auth(key)
    infos, res = await aiya_dream(client, auth, aiya_payload(steps=20))  # style "None" is no style, as in A1111
    assert "Steps: 20" in infos[0] and "Seed: 1234567" in infos[0] and warnings_of(res) == []

    hires = aiya_payload(steps=4, n_iter=2, width=64, height=64, enable_hr=True, hr_upscaler="Latent", hr_scale=1,
                         hr_second_pass_steps=5 / 2, denoising_strength="0.75")  # the bot's steps / 2, a float
    infos, res = await aiya_dream(client, auth, hires)
    assert len(infos) == 2 and warnings_of(res) == []
    assert "Hires upscale: 1, Hires steps: 2, Hires upscaler: Latent" in infos[0] and "Denoising strength: 0.75" in infos[0]
    hires = aiya_payload(steps=4, width=64, height=64, enable_hr=True, hr_upscaler="Latent (nearest-exact)", hr_scale=2,
                         hr_second_pass_steps=4, denoising_strength="0.5")
    infos, res = await aiya_dream(client, auth, hires)
    assert decoded(res["images"][0]).size == (128, 128) and "Size: 64x64" in infos[0] and "Hires upscale: 2" in infos[0]

    init = aiya_payload(steps=4, init_images=["data:image/png;base64," + b64png(64, 64)], denoising_strength="0.75",
                        width=64, height=64, override_settings={"CLIP_stop_at_last_layers": 2})
    infos, res = await aiya_dream(client, auth, init, "img2img")  # strength sent as the string it was typed as
    info = json.loads(res["info"])
    assert info["denoising_strength"] == 0.75 and info["clip_skip"] == 2 and decoded(res["images"][0]).size == (64, 64)


def aiya_upscale_payload(resize, upscaler_1: str, image: str, **options) -> dict:
    """upscalecog's payload: the slash command's options as Discord gives them (strings), and
    ``upscaler_2`` with its strength whenever it is not None (its default is the string "None")."""
    chosen = {"upscaler_2": "None", "upscaler_2_strength": "0.5", "gfpgan": "0.0", "codeformer": "0.0",
              "upscale_first": False, **options}
    payload = {"upscaling_resize": resize, "upscaler_1": upscaler_1, "image": "data:image/png;base64," + image,
               "gfpgan_visibility": chosen["gfpgan"], "codeformer_visibility": chosen["codeformer"],
               "upscale_first": chosen["upscale_first"]}
    if chosen["upscaler_2"] is not None:
        payload |= {"upscaler_2": chosen["upscaler_2"], "extras_upscaler_2_visibility": chosen["upscaler_2_strength"]}
    return payload


async def test_aiya_upscale(client, key):
    auth = aiya_auth(key)
    resp = await client.post("/sdapi/v1/extra-single-image", json=aiya_upscale_payload(2.0, "tiny-compact-2x", b64png(48, 40)),
                             headers=auth)
    body = await resp.json()
    image = decoded(body["image"])  # base64.b64decode(response_data['image']), then Image.open
    assert resp.status == 200 and image.size == (96, 80)
    assert "Postprocess upscaler: tiny-compact-2x" in body["html_info"] and "Warning" not in body["html_info"]

    blended = aiya_upscale_payload("1.5", "Lanczos", b64png(48, 40), upscaler_2="tiny-compact-2x", gfpgan="0.4")
    body = await (await client.post("/sdapi/v1/extra-single-image", json=blended, headers=auth)).json()
    assert decoded(body["image"]).size == (72, 56)  # A1111's multiples of 8, rounded down
    assert "Postprocess upscaler 2: tiny-compact-2x" in body["html_info"]
    assert "gfpgan_visibility: &#x27;0.4&#x27; not applied (face restoration is not available" in body["html_info"]

    resp = await client.post("/sdapi/v1/extra-single-image", json=aiya_upscale_payload(2.0, "4x-UltraSharp", b64png()),
                             headers=auth)
    body = await resp.json()  # a clear error, in A1111's shape, naming what there is
    assert resp.status == 422 and "image" not in body and "tiny-compact-2x" in json.dumps(body)


# --- Auto-Photoshop-StableDiffusion-Plugin ----------------------------------------------------

PHOTOSHOP_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}  # no credentials


def photoshop_settings(mode: str = "txt2img", **chosen) -> dict:
    """``getSettings``' payload with the plugin's default UI state (``chosen``: the user's)."""
    payload = {
        "selection_info": {"left": 0, "top": 0, "right": 512, "bottom": 512, "width": 512, "height": 512},
        "alwayson_scripts": {},  # ADetailer deleted when it is not installed
        "prompt": "a lighthouse", "negative_prompt": "fog", "original_prompt": "a lighthouse",
        "original_negative_prompt": "fog", "clip_skip": 1, "steps": 20, "sampler_index": "Euler a",
        "width": 512, "height": 512, "denoising_strength": 0.7, "batch_size": 1, "cfg_scale": 7, "seed": "-1",
        "mask_blur": 4, "use_sharp_mask": False, "use_prompt_shortcut": True, "prompt_shortcut_ui_dict": {},
        "uniqueDocumentId": "2f9e1d40-0000", "mode": mode, "restore_faces": False, "tiling": False,
    }
    if mode != "txt2img":
        payload |= {"denoising_strength": 0.7, "init_images": [b64png(64, 64)]}
    if mode == "inpaint":
        mask = b64png(64, 64)
        payload |= {"inpaint_full_res": False, "inpaint_full_res_padding": 32, "inpainting_fill": 1,
                    "mask_expansion": 20, "mask": mask, "expanded_mask": mask}
    return {**payload, **chosen}


def photoshop_controlnet(settings: dict) -> dict:
    """``mapPluginSettingsToControlNet``: one enabled unit (of the plugin's maximum, the rest off)."""
    units = [{"enabled": index == 0, "input_image": b64png(64, 64) if index == 0 else None, "mask": "",
              "module": "canny", "model": "control_v11p_sd15_canny [d14c016b]", "weight": 1, "resize_mode": "Crop and Resize",
              "lowvram": False, "processor_res": 512, "threshold_a": 100, "threshold_b": 200, "guidance_start": 0,
              "guidance_end": 1, "control_mode": 0, "pixel_perfect": False} for index in range(3)]
    return {**settings, "controlnet_units": units, "subseed": -1, "override_settings": {},
            "override_settings_restore_afterwards": True,
            "alwayson_scripts": {**settings["alwayson_scripts"], "controlnet": {"args": units}}}


def photoshop_metadata(metadata_str: str) -> dict:
    """``convertMetadataToJson``, as the plugin reads /png-info's ``info``."""
    last = metadata_str.rindex("\n")
    settings_json = dict(zip(("prompt", "negative_prompt"), metadata_str[:last].split("Negative prompt: ")))
    for setting in metadata_str[last + 1:-1].split(","):
        key, _, value = (s.lstrip() for s in setting.partition(":"))
        settings_json[key] = value
    return settings_json


async def photoshop_request(client, route: str, payload: dict) -> tuple[dict, list[dict]]:
    r = await (await client.post(f"/sdapi/v1/{route}", json=payload, headers=PHOTOSHOP_HEADERS)).json()
    metadata = []
    for i in r["images"]:
        png = await client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + i}, headers=PHOTOSHOP_HEADERS)
        metadata.append(photoshop_metadata((await png.json())["info"]))
    return r, metadata


async def test_photoshop_plugin(client, key):
    if key is not None:  # the plugin's fetch sends no credentials: refused, in JSON it can log
        resp = await client.post("/sdapi/v1/txt2img", json=photoshop_settings(), headers=PHOTOSHOP_HEADERS)
        assert resp.status == 401 and "images" not in await resp.json()
        return
    r, metadata = await photoshop_request(client, "txt2img", photoshop_settings(
        width=64, height=64, steps=4, enable_hr=True, hr_scale=2, hr_upscaler="Latent", hr_second_pass_steps=0))
    assert metadata[0]["Seed"].isdigit() and metadata[0]["prompt"] == "a lighthouse\n"
    assert warnings_of(r) == [] and decoded(r["images"][0]).size == (128, 128)
    assert metadata[0]["Hires upscale"] == "2" and metadata[0]["Denoising strength"] == "0.7"
    r, metadata = await photoshop_request(client, "img2img", photoshop_settings("img2img", width=64, height=64))
    assert decoded(r["images"][0]).size == (64, 64) and metadata[0]["Denoising strength"] == "0.7"
    r, _ = await photoshop_request(client, "img2img", photoshop_settings("inpaint", width=64, height=64))
    assert decoded(r["images"][0]).size == (64, 64) and warnings_of(r) == []

    for route, mode in (("txt2img", "txt2img"), ("img2img", "img2img")):  # requestControlNet{Txt2Img,Img2Img}
        # Its SD 1.5 ControlNet is not in CONTROLNET_DIR: refused, naming the unit (the units that
        # run, and their maps after the images: tests/test_a1111_controlnet.py)
        resp = await client.post(f"/sdapi/v1/{route}", json=photoshop_controlnet(photoshop_settings(mode, width=64, height=64)),
                                 headers=PHOTOSHOP_HEADERS)
        body = await resp.json()
        assert resp.status == 422 and "alwayson_scripts.controlnet.args[0].model" in body["fields"]
        assert "control_v11p_sd15_canny" in body["detail"]


def photoshop_upscale_settings(selection: int, **extras) -> dict:
    """``UpscaleMode.getSettings``: the extras page's store (its defaults, then the user's choices)."""
    store = {"upscaling_resize": 2, "upscaler_1": "", "upscaler_2": "", "resize_mode": 0, "show_extras_results": 0,
             "gfpgan_visibility": 0, "codeformer_visibility": 0, "codeformer_weight": 0, "upscaling_crop": True,
             "extras_upscaler_2_visibility": 0, "upscale_first": False, **extras}
    return {
        "resize_mode": store["resize_mode"], "show_extras_results": store["show_extras_results"],
        "gfpgan_visibility": store["gfpgan_visibility"], "codeformer_visibility": store["codeformer_visibility"],
        "codeformer_weight": store["codeformer_weight"], "upscaling_resize": store["upscaling_resize"],
        "upscaling_resize_w": selection * store["upscaling_resize"], "upscaling_resize_h": selection * store["upscaling_resize"],
        "upscaling_crop": store["upscaling_crop"], "upscaler_1": store["upscaler_1"] or "None",
        "upscaler_2": store["upscaler_2"] or "None", "extras_upscaler_2_visibility": store["extras_upscaler_2_visibility"],
        "upscale_first": store["upscale_first"], "image": b64png(selection, selection),
    }


async def test_photoshop_plugin_upscale(client, key):
    if key is not None:  # no credentials: refused in JSON (its request.json() works, then r['image'] is undefined)
        resp = await client.post("/sdapi/v1/extra-single-image", json=photoshop_upscale_settings(32), headers=PHOTOSHOP_HEADERS)
        assert resp.status == 401
        return
    for extras, size in (({"upscaler_1": "tiny-compact-2x", "upscaling_resize": 2.5}, (80, 80)),
                         ({"upscaler_1": "Nearest", "resize_mode": 1, "upscaling_resize": 1.5}, (48, 48)),
                         ({}, (32, 32))):  # no upscaler chosen: "None", the image as it was
        resp = await client.post("/sdapi/v1/extra-single-image", json=photoshop_upscale_settings(32, **extras),
                                 headers=PHOTOSHOP_HEADERS)
        r = await resp.json()
        assert resp.status == 200 and decoded(r["image"]).size == size, (extras, r)


# --- stable-gimpfusion ------------------------------------------------------------------------

CONTROLNET_DEFAULT_SETTINGS = {
    "input_image": "", "mask": "", "module": "none", "model": "none", "weight": 1.0,
    "resize_mode": "Scale to Fit (Inner Fit)", "lowvram": False, "processor_res": 64, "threshold_a": 64,
    "threshold_b": 64, "guidance": 1.0, "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": 0,
}


def gimpfusion_data(**chosen) -> dict:
    """``textToImage``'s data with the plugin's defaults (``chosen``: the dialog's and the mode's)."""
    data = {"prompt": "a lighthouse", "negative_prompt": "", "cfg_scale": 7.5, "denoising_strength": 0.8, "steps": 20,
            "width": 64, "height": 64, "sampler_index": "Euler a", "batch_size": 2, "seed": -1}
    return {**data, **chosen}


async def gimpfusion_post(client, endpoint: str, data: dict) -> tuple[list[tuple[Image.Image, dict]], list[str]]:
    resp = await client.post(endpoint, data=json.dumps(data),
                             headers={"Content-Type": "application/json", "Accept": "application/json"})
    assert resp.status == 200, await resp.text()
    response = await resp.json()
    info = json.loads(response["info"])  # ResponseLayers
    infotexts, seeds = info["infotexts"], info["all_seeds"]
    assert len(seeds) == len(response["images"])  # else images past the seeds are taken for annotator layers
    layers = [(decoded(image), {"info": infotexts[index], "seed": seeds[index]})
              for index, image in enumerate(response["images"])]
    return layers, info.get("warnings", [])


async def test_gimpfusion(client, key):
    if key is not None:  # urllib2 without credentials: refused, and its HTTPError is shown
        resp = await client.post("/sdapi/v1/txt2img", json=gimpfusion_data())
        assert resp.status == 401
        return
    layers, warnings = await gimpfusion_post(client, "/sdapi/v1/txt2img", gimpfusion_data())
    assert len(layers) == 2 and layers[0][1]["seed"] + 1 == layers[1][1]["seed"] and warnings == []
    unit = {**CONTROLNET_DEFAULT_SETTINGS, "input_image": b64png(64, 64)}
    image = {"resize_mode": 0, "init_images": [b64png(64, 64)]}
    # A ControlNet layer left on the plugin's defaults (model "none"): refused, naming the unit (the
    # units that run, and the annotator layers: tests/test_a1111_controlnet.py)
    resp = await client.post("/sdapi/v1/img2img", json=gimpfusion_data(**image, alwayson_scripts={"controlnet": {"args": [unit]}}))
    assert resp.status == 422 and "alwayson_scripts.controlnet.args[0].model" in (await resp.json())["fields"]
    inpaint = {"mask": b64png(64, 64), "inpaint_full_res": 0, "inpaint_full_res_padding": 10, "inpainting_mask_invert": 1}
    layers, _ = await gimpfusion_post(client, "/sdapi/v1/img2img", gimpfusion_data(**image, **inpaint, batch_size=1))
    assert layers[0][0].size == (64, 64) and "Denoising strength: 0.8" in layers[0][1]["info"]



# --- Dify -------------------------------------------------------------------------------------

DIFY_DRAW_TEXT_OPTIONS = {
    "prompt": "", "negative_prompt": "", "seed": -1, "subseed": -1, "subseed_strength": 0, "seed_resize_from_h": -1,
    "sampler_index": "DPM++ SDE Karras", "seed_resize_from_w": -1, "batch_size": 1, "n_iter": 1, "steps": 10,
    "cfg_scale": 7, "width": 1024, "height": 1024, "restore_faces": False, "do_not_save_samples": False,
    "do_not_save_grid": False, "eta": 0, "denoising_strength": 0, "s_min_uncond": 0, "s_churn": 0, "s_tmax": 0,
    "s_tmin": 0, "s_noise": 0, "override_settings": {}, "override_settings_restore_afterwards": True,
    "refiner_switch_at": 0, "disable_extra_networks": False, "comments": {}, "enable_hr": False,
    "firstphase_width": 0, "firstphase_height": 0, "hr_scale": 2, "hr_second_pass_steps": 0, "hr_resize_x": 0,
    "hr_resize_y": 0, "hr_prompt": "", "hr_negative_prompt": "", "script_args": [], "send_images": True,
    "save_images": False, "alwayson_scripts": {},
}


async def dify_post(client, auth: dict, path: str, body: dict) -> RawResponse:
    """httpx ``post(url, data=json.dumps(body))``: a str body, which httpx sends as it is, with no Content-Type."""
    return await exchange(client.host, client.port, request("POST", path, headers=auth, body=json.dumps(body).encode()))


async def test_dify_stable_diffusion_tool(client, key):
    auth = {} if key is None else basic(f"dify:{key}")  # base_url http://dify:KEY@host:8001, kept by yarl's `/`
    models = [d["model_name"] for d in await (await client.get("/sdapi/v1/sd-models", headers=auth)).json()]
    assert models == ["tiny"]  # validate_models: the model set in the credentials must be listed
    assert (await dify_post(client, auth, "/sdapi/v1/options", {"sd_model_checkpoint": "tiny"})).status == 200

    draw_options = {**DIFY_DRAW_TEXT_OPTIONS, "prompt": "a cat", "steps": 1,
                    "override_settings": {"sd_model_checkpoint": "tiny"}}
    resp = await dify_post(client, auth, "/sdapi/v1/txt2img", draw_options)
    assert resp.status == 200, resp.body  # else "Failed to generate image"
    res = resp.json()
    assert decoded(res["images"][0]).size == (512, 512)
    assert warnings_of(res) == ["s_noise: 0 not applied (sampler parameters are not adjustable)"]

    img2img = {"init_images": [b64png(64, 64)], "prompt": "a cat", "negative_prompt": "", "denoising_strength": 0.9,
               "width": 64, "height": 64, "cfg_scale": 7, "sampler_name": "Euler a", "restore_faces": False,
               "steps": 2, "script_args": ["outpainting mk2"], "override_settings": {"sd_model_checkpoint": "tiny"}}
    resp = await dify_post(client, auth, "/sdapi/v1/img2img", img2img)
    assert resp.status == 200, resp.body
    res = resp.json()
    assert decoded(res["images"][0]).size == (64, 64) and warnings_of(res) == []  # script_args without script_name


@pytest.mark.parametrize("size", ["square", "vertical", "horizontal"])
async def test_dify_dalle3_tool(client, key, size):
    size = {"square": "1024x1024", "vertical": "1024x1792", "horizontal": "1792x1024"}[size]
    base_url = str(URL(str(client.make_url("/"))) / "v1")  # openai_base_url / "v1"
    async with openai.AsyncOpenAI(api_key=key or "sk-dify", base_url=base_url, max_retries=0) as ai:
        response = await ai.images.generate(prompt="a cat", model="dall-e-3", size=size, n=1, style="vivid",
                                            quality="standard", response_format="b64_json")
    for image in response.data:
        assert not image.b64_json.startswith("data:image")  # _is_plain_base64: decoded as image/png
        width, height = decoded(image.b64_json).size
        assert (width > height) == (size == "1792x1024") and (height > width) == (size == "1024x1792")


# --- Home Assistant ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", ["1024x1024", "1792x1024", "512"])
async def test_home_assistant_generate_image(client, key, size):
    # openai.AsyncOpenAI(api_key=...), the server given by OPENAI_BASE_URL.
    async with openai.AsyncOpenAI(api_key=key or "sk-ha", base_url=str(client.make_url("/v1")), max_retries=0) as ai:
        await ai.with_options(timeout=10.0).models.list()  # async_setup_entry: an AuthenticationError fails it
        size = "1024x1024" if size in ("256", "512", "1024") else size  # deprecated sizes
        response = await ai.images.generate(model="dall-e-3", prompt="a cosy living room", size=size,
                                            quality="standard", style="vivid", response_format="url", n=1)
    result = response.data[0].model_dump(exclude={"b64_json"})  # what the service call answers
    assert result["revised_prompt"] == "a cosy living room"
    image = await client.get(URL(result["url"]).path)  # shown by URL in a dashboard or notification
    assert image.status == 200 and Image.open(io.BytesIO(await image.read())).format == "PNG"


async def test_home_assistant_with_a_wrong_key(client, key):
    if key is None:
        pytest.skip("without API_KEY any key works")
    async with openai.AsyncOpenAI(api_key="sk-wrong", base_url=str(client.make_url("/v1")), max_retries=0) as ai:
        with pytest.raises(openai.AuthenticationError):  # "Invalid API key": the entry is not set up
            await ai.models.list()
