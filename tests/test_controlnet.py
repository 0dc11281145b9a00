"""ControlNet on our own API, on the tiny model with tiny SDXL ControlNets built by the project:
what a unit does to the image, its weight, start and end, two units, inpainting, the catalog, the
preprocessors (canny's map is OpenCV's), the listings and the refusals."""

from __future__ import annotations

import base64
import dataclasses
import io
import json

import numpy as np
import pytest
from images import b64 as png_b64, edges
from PIL import Image

from sdxl_server.pipeline.tiny import ensure_tiny_controlnet, ensure_tiny_union_controlnet

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def controlnet_dir(tmp_path_factory):
    """CONTROLNET_DIR with the tiny SDXL ControlNet, an SD 1.x-shaped config and a file that is no ControlNet."""
    root = tmp_path_factory.mktemp("controlnet")
    ensure_tiny_controlnet(root / "tiny-canny")
    ensure_tiny_union_controlnet(root / "tiny-union")
    (root / "sd15-depth").mkdir()
    (root / "sd15-depth" / "config.json").write_text(json.dumps({"_class_name": "ControlNetModel", "cross_attention_dim": 768}))
    (root / "notes.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    return root


@pytest.fixture
async def cn_client(make_client, settings, controlnet_dir):
    return await make_client(dataclasses.replace(settings, controlnet_dir=controlnet_dir))


async def _generate(client, **fields) -> tuple[np.ndarray, dict]:
    body = {"prompt": "a house", "seed": 7, "steps": 4, **fields}
    response = await client.post("/api/v1/generate", json=body)
    assert response.status == 200, await response.text()
    result = await response.json()
    png = Image.open(io.BytesIO(await (await client.get(result["image_url"])).read()))
    return np.asarray(png.convert("RGB")).astype(int), {**result["meta"], "parameters": png.info["parameters"]}


def _unit(**fields):
    return {"model": "tiny-canny", "image": png_b64(edges()), "module": "none", **fields}


async def test_a_unit_changes_the_image_and_weight_zero_equals_none(cn_client):
    plain, _ = await _generate(cn_client)
    guided, meta = await _generate(cn_client, controlnet=[_unit()])
    zero, _ = await _generate(cn_client, controlnet=[_unit(weight=0)])
    assert np.abs(plain - guided).mean() > 2
    assert np.array_equal(plain, zero)
    assert meta["controlnet"][0]["model"] == "tiny-canny" and meta["control0_image_sha256"]


async def test_start_end_and_two_units(cn_client):
    whole, _ = await _generate(cn_client, controlnet=[_unit()])
    late, _ = await _generate(cn_client, controlnet=[_unit(start=0.5)])
    plain, _ = await _generate(cn_client)
    assert np.abs(whole - late).mean() > 1 and np.abs(plain - late).mean() > 0.1
    two, meta = await _generate(cn_client, controlnet=[_unit(), _unit(module="invert", weight=0.5)])
    assert np.abs(two - whole).mean() > 1
    assert [unit["module"] for unit in meta["controlnet"]] == ["none", "invert"]


async def test_inpainting_with_a_unit_keeps_unmasked_pixels(cn_client):
    source = edges()
    mask = np.zeros((64, 64), np.uint8)
    mask[:32, :32] = 255
    body = {"init_image": png_b64(source), "mask": png_b64(Image.fromarray(mask)), "mask_blur": 0, "strength": 0.9}
    inpainted, meta = await _generate(cn_client, **body, controlnet=[_unit()])
    plain, _ = await _generate(cn_client, **body)
    keep = mask == 0
    assert np.array_equal(inpainted[keep], np.asarray(source).astype(int)[keep])
    assert np.abs(inpainted - plain)[~keep].mean() > 1
    assert meta["mode"] == "inpaint"


async def test_image_to_image_with_a_unit(cn_client):
    body = {"init_image": png_b64(edges()), "strength": 0.8}
    guided, meta = await _generate(cn_client, **body, controlnet=[_unit(module="canny")])
    plain, _ = await _generate(cn_client, **body)
    assert meta["mode"] == "img2img" and np.abs(guided - plain).mean() > 1


async def test_metadata_in_the_extensions_words(cn_client):
    _, meta = await _generate(cn_client, controlnet=[_unit(module="canny", threshold_a=50, threshold_b=150, end=0.8)])
    assert ('ControlNet 0: "Module: canny, Model: tiny-canny, Weight: 1, Resize Mode: Crop and Resize, '
            'Threshold A: 50, Threshold B: 150, Guidance Start: 0, Guidance End: 0.8, Control Mode: Balanced"'
            ) in meta["parameters"]


async def test_canny_map_equals_opencvs(cn_client):
    import cv2

    picture = edges(96)
    response = await cn_client.post("/api/v1/preprocess", json={
        "image": png_b64(picture), "module": "canny", "threshold_a": 60, "threshold_b": 180})
    assert response.status == 200, await response.text()
    body = await response.json()
    made = np.asarray(Image.open(io.BytesIO(base64.b64decode(body["image"]))).convert("RGB"))
    expected = cv2.Canny(np.asarray(picture), 60, 180)
    assert (body["width"], body["height"]) == (96, 96)
    assert np.array_equal(made[..., 0], expected) and expected.any()


async def test_listings(cn_client):
    listed = await (await cn_client.get("/api/v1/controlnets")).json()
    by_name = {entry["name"]: entry for entry in listed["controlnets"]}
    assert by_name["tiny-canny"]["usable"] and by_name["tiny-canny"]["type"] == "canny"
    assert "not an SDXL ControlNet" in by_name["sd15-depth"]["problem"]
    assert not by_name["notes"]["usable"]
    preprocessors = {p["name"]: p for p in (await (await cn_client.get("/api/v1/preprocessors")).json())["preprocessors"]}
    assert preprocessors["canny"]["available"] and not preprocessors["depth_midas"]["available"]
    assert "annotators/depth_midas, which has none" in preprocessors["depth_midas"]["problem"]
    assert not preprocessors["mlsd"]["available"] and "does not load" in preprocessors["mlsd"]["problem"]


@pytest.mark.parametrize(("unit", "field", "words"), [
    ({"model": "nope"}, "controlnet[0].model", "tiny-canny"),
    ({"model": "sd15-depth"}, "controlnet[0].model", "not an SDXL ControlNet"),
    ({"module": "depth_midas"}, "module", "depth_midas, which has none"),
    ({"module": "mlsd"}, "module", "does not load"),
    ({"module": "sharpen"}, "module", "canny"),
    ({"weight": 3}, "weight", ""),
    ({"start": 0.6, "end": 0.4}, "start", "below end"),
    ({"image": "bm90IGFuIGltYWdl"}, "controlnet[0].image", ""),
    ({"module": "canny", "threshold_a": 900}, "threshold_a", "255"),
])
async def test_bad_units_are_clear_422s(cn_client, unit, field, words):
    response = await cn_client.post("/api/v1/generate", json={"prompt": "x", "controlnet": [_unit(**unit)]})
    assert response.status == 422
    body = await response.json()
    text = json.dumps(body)
    assert field.split(".")[-1] in text and words in text
    if "[" in field:
        assert field in text


async def test_more_units_than_allowed(cn_client, settings):
    units = [_unit()] * (settings.max_controlnets + 1)
    response = await cn_client.post("/api/v1/generate", json={"prompt": "x", "controlnet": units})
    assert response.status == 422 and "controlnet" in (await response.json())["fields"]


async def test_union_with_two_control_types(cn_client):
    listed = {e["name"]: e for e in (await (await cn_client.get("/api/v1/controlnets")).json())["controlnets"]}
    assert listed["tiny-union"]["union"] and "canny" in listed["tiny-union"]["control_types"]
    canny, meta = await _generate(cn_client, controlnet=[_unit(model="tiny-union", type="canny")])
    depth, _ = await _generate(cn_client, controlnet=[_unit(model="tiny-union", type="depth")])
    plain, _ = await _generate(cn_client)
    assert np.abs(canny - plain).mean() > 1 and np.abs(canny - depth).mean() > 1
    both, _ = await _generate(cn_client, controlnet=[_unit(model="tiny-union", type="canny"),
                                                     _unit(model="tiny-union", type="depth", weight=0.6)])
    assert np.abs(both - canny).mean() > 0.5
    assert "Control Type: canny" in meta["parameters"]


@pytest.mark.parametrize(("units", "field", "words"), [
    ([{"model": "tiny-union"}], "controlnet[0].type", "needs a control type"),
    ([{"model": "tiny-union", "type": "sketchy"}], "controlnet[0].type", "canny"),
    ([{"model": "tiny-canny", "type": "canny"}], "controlnet[0].type", "Only a ControlNet-Union"),
    ([{"model": "tiny-canny"}, {"model": "tiny-union", "type": "canny"}], "controlnet[0].model", "cannot be mixed"),
])
async def test_union_refusals(cn_client, units, field, words):
    response = await cn_client.post("/api/v1/generate", json={"prompt": "x", "controlnet": [_unit(**u) for u in units]})
    assert response.status == 422
    text = json.dumps(await response.json())
    assert field in text and words in text
