"""The sd-webui-controlnet extension's API on the tiny model: the ControlNet payloads the Photoshop
plugin (Auto-Photoshop-StableDiffusion-Plugin, typescripts/controlnet/entry.ts) and the GIMP plugin
(stable-gimpfusion, stable_gimpfusion.py) send, built as their code builds them, the detected maps
after the images, the extension's routes, disabled units and the refusals."""

from __future__ import annotations

import base64
import dataclasses
import io
import json

import numpy as np
import pytest
from images import b64
from PIL import Image

from sdxl_server.pipeline.tiny import ensure_tiny_controlnet

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def controlnet_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("controlnet")
    ensure_tiny_controlnet(root / "tiny-canny")
    return root


@pytest.fixture
async def client(make_client, settings, controlnet_dir):
    return await make_client(dataclasses.replace(settings, controlnet_dir=controlnet_dir))


def _drawing(size: int = 64) -> Image.Image:
    pixels = np.full((size, size, 3), 20, np.uint8)
    pixels[8:40, 12:44] = 235
    pixels[48:52, :] = (200, 60, 60)
    return Image.fromarray(pixels)


def _array(encoded: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(encoded))).convert("RGB")).astype(int)


def photoshop_unit(enabled: bool, image: str = "", module: str = "none", model: str = "None") -> dict:
    """One of entry.ts's controlnet_units (controlnet API version 2: control_mode and pixel_perfect),
    from DefaultControlNetUnitData's values."""
    return {
        "enabled": enabled, "input_image": image, "mask": "", "module": module, "model": model, "weight": 1.0,
        "resize_mode": "Crop and Resize", "lowvram": True, "processor_res": 512, "threshold_a": 0, "threshold_b": 0,
        "guidance_start": 0, "guidance_end": 1, "control_mode": "Balanced", "pixel_perfect": True,
    }


def photoshop_txt2img(units: list[dict], adetailer: bool = True) -> dict:
    """The plugin's txt2img payload with ControlNet: its settings, controlnet_units kept for old
    servers, and alwayson_scripts (ADetailer's entry when that extension is installed)."""
    scripts = {"controlnet": {"args": units}}
    if adetailer:
        scripts["ADetailer"] = {"args": [True, {"ad_model": "face_yolov8n.pt", "ad_prompt": "", "ad_confidence": 0.3}]}
    return {
        "prompt": "a castle", "negative_prompt": "", "seed": 11, "batch_size": 1, "steps": 4, "cfg_scale": 7,
        "width": 64, "height": 64, "sampler_index": "Euler a", "restore_faces": False, "denoising_strength": 0.7,
        "controlnet_units": units, "subseed": -1, "override_settings": {}, "override_settings_restore_afterwards": True,
        "alwayson_scripts": scripts,
    }


def gimp_unit(image: str, module: str, model: str) -> dict:
    """getControlNetParams: CONTROLNET_DEFAULT_SETTINGS updated by the layer's saved settings and image."""
    return {
        "input_image": image, "mask": "", "module": module, "model": model, "weight": 1.0,
        "resize_mode": "Scale to Fit (Inner Fit)", "lowvram": False, "processor_res": 64, "threshold_a": 64,
        "threshold_b": 64, "guidance": 1.0, "guidance_start": 0.0, "guidance_end": 1.0, "control_mode": 0,
    }


def gimp_img2img(init: str, units: list[dict]) -> dict:
    """imageToImage's payload (its roundToMultiple(…, 8) sizes and SAMPLERS names)."""
    return {
        "resize_mode": 0, "init_images": [init], "prompt": "a castle", "negative_prompt": "", "denoising_strength": 0.8,
        "steps": 4, "cfg_scale": 7.5, "width": 64, "height": 64, "sampler_index": "Euler a", "batch_size": 1, "seed": 5,
        "alwayson_scripts": {"controlnet": {"args": units}},
    }


async def test_the_photoshop_plugins_txt2img_with_controlnet(client):
    models = (await (await client.get("/controlnet/model_list")).json())["model_list"]
    assert models == ["tiny-canny"]
    units = [photoshop_unit(True, b64(_drawing()), "canny", models[0]), photoshop_unit(False), photoshop_unit(False)]
    response = await client.post("/sdapi/v1/txt2img", json=photoshop_txt2img(units))
    assert response.status == 200, await response.text()
    body = await response.json()
    info = json.loads(body["info"])
    # The plugin takes images[batch_size:] as the annotators' maps.
    assert len(body["images"]) == 2 and len(info["all_seeds"]) == 1
    import cv2

    expected = cv2.Canny(np.asarray(_drawing()), 1, 1)  # thresholds 0 brought to canny's least, 1
    assert np.array_equal(_array(body["images"][1])[..., 0], expected)
    assert any("alwayson_scripts.ADetailer" in warning for warning in info["warnings"])
    assert not any("controlnet" in warning.lower() for warning in info["warnings"])
    assert 'ControlNet 0: "Module: canny, Model: tiny-canny' in info["infotexts"][0]
    plain = await (await client.post("/sdapi/v1/txt2img", json=photoshop_txt2img([photoshop_unit(False)] * 3))).json()
    assert len(plain["images"]) == 1
    assert np.abs(_array(plain["images"][0]) - _array(body["images"][0])).mean() > 1


async def test_the_gimp_plugins_img2img_with_two_units(client):
    init = b64(_drawing())
    units = [gimp_unit(b64(_drawing()), "canny", "tiny-canny"), gimp_unit(b64(_drawing().rotate(90)), "none", "tiny-canny")]
    response = await client.post("/sdapi/v1/img2img", json=gimp_img2img(init, units))
    assert response.status == 200, await response.text()
    body = await response.json()
    info = json.loads(body["info"])
    assert len(body["images"]) == 3 and len(info["all_seeds"]) == 1  # the plugin's "Annotator Layer"s follow
    import cv2

    assert np.array_equal(_array(body["images"][1])[..., 0], cv2.Canny(np.asarray(_drawing()), 64, 64))
    assert np.array_equal(_array(body["images"][2]), np.asarray(_drawing().rotate(90)).astype(int))
    plain = await (await client.post("/sdapi/v1/img2img", json=gimp_img2img(init, []))).json()
    assert np.abs(_array(plain["images"][0]) - _array(body["images"][0])).mean() > 1


async def test_an_img2img_unit_without_an_image_takes_the_init_image(client):
    unit = {"module": "canny", "model": "tiny-canny [0123abcd]", "threshold_a": "60", "threshold_b": 180, "pixel_perfect": True}
    response = await client.post("/sdapi/v1/img2img", json=gimp_img2img(b64(_drawing()), [unit]))
    assert response.status == 200, await response.text()
    import cv2

    images = (await response.json())["images"]
    assert np.array_equal(_array(images[1])[..., 0], cv2.Canny(np.asarray(_drawing()), 60, 180))


async def test_disabled_units_change_nothing(client):
    disabled = photoshop_txt2img([{**photoshop_unit(False, b64(_drawing()), "canny", "tiny-canny")}], adetailer=False)
    plain = photoshop_txt2img([], adetailer=False)
    first = await (await client.post("/sdapi/v1/txt2img", json=disabled)).json()
    second = await (await client.post("/sdapi/v1/txt2img", json=plain)).json()
    assert first["images"] == second["images"] and json.loads(first["info"])["warnings"] == []


@pytest.mark.parametrize(("change", "field", "words"), [
    ({"model": "control_v11p_sd15_canny [d14c016b]"}, "args[0].model", "tiny-canny"),
    ({"module": "depth_midas"}, "args[0].module", "depth_midas, which has none"),
    ({"module": "mlsd"}, "args[0].module", "does not load"),
    ({"module": "sharpen"}, "args[0].module", "canny"),
    ({"weight": "heavy"}, "args[0].weight", "number"),
    ({"weight": 5}, "args[0].weight", "0 to 2"),
    ({"resize_mode": "Stretch it"}, "args[0].resize_mode", "Crop and Resize"),
    ({"control_mode": 7}, "args[0].control_mode", "Balanced"),
    ({"guidance_start": 0.9, "guidance_end": 0.2}, "args[0].guidance_start", "guidance_end"),
    ({"input_image": "", "image": None}, "args[0].image", "needs its image"),
    ({"input_image": "bm90IGFuIGltYWdl"}, "args[0].image", ""),
])
async def test_bad_units_are_422s_naming_the_unit(client, change, field, words):
    unit = {**photoshop_unit(True, b64(_drawing()), "canny", "tiny-canny"), **change}
    response = await client.post("/sdapi/v1/txt2img", json=photoshop_txt2img([unit], adetailer=False))
    assert response.status == 422
    text = json.dumps(await response.json())
    assert f"alwayson_scripts.controlnet.{field}" in text and words in text


async def test_the_extensions_routes(client):
    assert await (await client.get("/controlnet/version")).json() == {"version": 2}
    modules = await (await client.get("/controlnet/module_list")).json()
    assert "canny" in modules["module_list"] and "depth_midas" not in modules["module_list"]
    assert [s["name"] for s in modules["module_detail"]["canny"]["sliders"]][1:] == ["Canny Low Threshold", "Canny High Threshold"]
    types = (await (await client.get("/controlnet/control_types")).json())["control_types"]
    assert types["Canny"]["model_list"] == ["None", "tiny-canny"] and types["Canny"]["default_option"] == "canny"
    assert (await (await client.get("/controlnet/settings")).json()) == {"control_net_unit_count": 3}
    detected = await client.post("/controlnet/detect", json={
        "controlnet_module": "canny", "controlnet_input_images": [b64(_drawing())], "controlnet_processor_res": 64,
        "controlnet_threshold_a": 100, "controlnet_threshold_b": 200})
    assert detected.status == 200
    import cv2

    body = await detected.json()
    assert body["info"] == "Success"
    assert np.array_equal(_array(body["images"][0])[..., 0], cv2.Canny(np.asarray(_drawing()), 100, 200))
    refused = await client.post("/controlnet/detect", json={"controlnet_module": "openpose", "controlnet_input_images": [b64(_drawing())]})
    assert refused.status == 422 and "controlnet_module" in json.dumps(await refused.json())
