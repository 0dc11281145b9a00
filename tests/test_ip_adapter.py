"""IP-Adapter on the tiny model with a tiny IP-Adapter and image encoder built by the project: it
changes the image, the next job without it is a fresh server's image, the listing, the A1111
extension's ip-adapter units, start/end (and A1111's guidance_start/guidance_end) choosing the
steps it acts on, hires fix's second pass, and the refusals."""

from __future__ import annotations

import base64
import dataclasses
import io
import json

import numpy as np
import pytest
from images import b64
from PIL import Image

from sdxl_server.params import MAX_IP_ADAPTERS
from sdxl_server.pipeline.tiny import write_tiny_ip_adapter

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def ip_adapter_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("ip-adapter")
    write_tiny_ip_adapter(root)
    (root / "not-an-adapter.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    return root


@pytest.fixture
def ip_settings(settings, ip_adapter_dir):
    return dataclasses.replace(settings, ip_adapter_dir=ip_adapter_dir)


def _reference() -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray((rng.random((48, 48, 3)) * 255).astype(np.uint8))


async def _generate(client, **fields) -> np.ndarray:
    response = await client.post("/api/v1/generate", json={"prompt": "a house", "seed": 3, "steps": 4, **fields})
    assert response.status == 200, await response.text()
    result = await response.json()
    png = await (await client.get(result["image_url"])).read()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


async def test_ip_adapter_changes_the_image_and_the_next_job_is_untouched(make_client, ip_settings):
    fresh = await make_client(ip_settings)
    untouched = await _generate(fresh)
    await fresh.close()
    client = await make_client(dataclasses.replace(ip_settings, output_dir=ip_settings.output_dir.parent / "second"))
    adapted = await _generate(client, ip_adapter=[{"name": "tiny-ip-adapter", "image": b64(_reference())}])
    assert np.abs(adapted - untouched).mean() > 1
    weaker = await _generate(client, ip_adapter=[{"name": "tiny-ip-adapter", "image": b64(_reference()), "weight": 0.3}])
    assert np.abs(weaker - adapted).mean() > 0.5
    after = await _generate(client)
    assert np.array_equal(after, untouched)


async def _refusal(client, unit: dict) -> str:
    """The 422 a generation with IP-Adapter ``unit`` gets, as text."""
    response = await client.post("/api/v1/generate", json={"prompt": "x", "ip_adapter": [{"image": b64(_reference()), **unit}]})
    assert response.status == 422
    return json.dumps(await response.json())


async def test_listing_and_refusals(make_client, ip_settings):
    client = await make_client(ip_settings)
    listing = await (await client.get("/api/v1/ip-adapters")).json()
    listed = {e["name"]: e for e in listing["ip_adapters"]}
    assert listing["max_ip_adapters"] == MAX_IP_ADAPTERS
    assert listed["tiny-ip-adapter"]["usable"] and not listed["not-an-adapter"]["usable"]
    for unit, words in (({"name": "nope"}, "tiny-ip-adapter"), ({"name": "not-an-adapter"}, "cannot be used"),
                        ({"name": "tiny-ip-adapter", "weight": 9}, "weight")):
        assert words in await _refusal(client, unit)


async def test_a1111_ip_adapter_units(make_client, ip_settings):
    client = await make_client(ip_settings)
    body = {"prompt": "a house", "seed": 3, "steps": 4, "width": 64, "height": 64}
    unit = {"enabled": True, "module": "ip-adapter_clip_sdxl", "model": "tiny-ip-adapter [abcdef12]",
            "image": b64(_reference()), "weight": 1, "pixel_perfect": True}
    adapted = await (await client.post("/sdapi/v1/txt2img", json={**body, "alwayson_scripts": {"controlnet": {"args": [unit]}}})).json()
    plain = await (await client.post("/sdapi/v1/txt2img", json=body)).json()
    assert len(adapted["images"]) == 1  # no detected map for an IP-Adapter unit
    first = np.asarray(Image.open(io.BytesIO(base64.b64decode(adapted["images"][0])))).astype(int)
    second = np.asarray(Image.open(io.BytesIO(base64.b64decode(plain["images"][0])))).astype(int)
    assert np.abs(first - second).mean() > 1
    assert 'IP-Adapter 0: "Model: tiny-ip-adapter, Weight: 1, Guidance Start: 0, Guidance End: 1"' in json.loads(adapted["info"])["infotexts"][0]


async def test_start_and_end_choose_the_steps_it_acts_on(make_client, ip_settings):
    client = await make_client(ip_settings)
    unit = {"name": "tiny-ip-adapter", "image": b64(_reference())}
    plain = await _generate(client)
    everywhere = await _generate(client, ip_adapter=[unit])
    nowhere = await _generate(client, ip_adapter=[{**unit, "start": 0.99}])  # 4 steps: none starts at 99% or later
    first_half = await _generate(client, ip_adapter=[{**unit, "end": 0.5}])
    late = await _generate(client, ip_adapter=[{**unit, "start": 0.5, "weight": 2}])
    assert np.array_equal(nowhere, plain)
    assert np.abs(everywhere - plain).mean() > 1
    assert np.abs(first_half - plain).mean() > 1 and np.abs(first_half - everywhere).mean() > 0.1  # the last steps change little
    assert np.abs(late - plain).mean() > 0.1 and np.abs(late - everywhere).mean() > 0.5
    assert np.array_equal(await _generate(client, ip_adapter=[unit]), everywhere)  # the weight is back for the next job
    response = await client.post("/api/v1/generate", json={"prompt": "a house", "seed": 3, "steps": 4,
                                                           "ip_adapter": [{**unit, "start": 0.25, "end": 0.75}]})
    result = await response.json()
    assert result["meta"]["ip_adapter"] == [{"name": "tiny-ip-adapter", "weight": 1.0, "start": 0.25, "end": 0.75}]
    png = Image.open(io.BytesIO(await (await client.get(result["image_url"])).read()))
    assert 'IP-Adapter 0: "Model: tiny-ip-adapter, Weight: 1, Guidance Start: 0.25, Guidance End: 0.75"' in png.info["parameters"]


@pytest.mark.parametrize(("fields", "where"), [
    ({"start": 1.5}, "ip_adapter[0].start"), ({"end": -0.1}, "ip_adapter[0].end"),
    ({"start": 0.5, "end": 0.5}, "ip_adapter[0].start"), ({"start": "0.5"}, "ip_adapter[0].start"),
])
async def test_start_and_end_out_of_range_are_refused(make_client, ip_settings, fields, where):
    client = await make_client(ip_settings)
    assert where in await _refusal(client, {"name": "tiny-ip-adapter", **fields})


async def test_a1111_guidance_start_and_end_are_applied(make_client, ip_settings):
    client = await make_client(ip_settings)
    body = {"prompt": "a house", "seed": 3, "steps": 4, "width": 64, "height": 64}
    unit = {"enabled": True, "module": "ip-adapter_clip_sdxl", "model": "tiny-ip-adapter",
            "image": b64(_reference()), "weight": "1", "guidance_start": "0.99", "guidance_end": None}

    async def images(**fields):
        answer = await (await client.post("/sdapi/v1/txt2img", json={**body, **fields})).json()
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(answer["images"][0])))).astype(int), json.loads(answer["info"])

    late, info = await images(alwayson_scripts={"controlnet": {"args": [unit]}})
    plain, _ = await images()
    early, _ = await images(alwayson_scripts={"controlnet": {"args": [{**unit, "guidance_start": 0, "guidance_end": 0.5}]}})
    assert np.array_equal(late, plain) and np.abs(early - plain).mean() > 0.5
    assert not info.get("warnings") and "Guidance Start: 0.99, Guidance End: 1" in info["infotexts"][0]
    refused = await client.post("/sdapi/v1/txt2img", json={
        **body, "alwayson_scripts": {"controlnet": {"args": [{**unit, "guidance_start": 0.6, "guidance_end": 0.4}]}}})
    assert refused.status == 422 and "guidance_start" in await refused.text()


async def test_hires_fix_second_pass_takes_the_adapter_over_its_own_steps(make_client, ip_settings):
    client = await make_client(ip_settings)
    hires = {"width": 64, "height": 64, "hires": {"scale": 1.5, "upscaler": "Latent", "denoise": 0.6, "steps": 3}}
    unit = {"name": "tiny-ip-adapter", "image": b64(_reference())}
    plain = await _generate(client, **hires)
    adapted = await _generate(client, **hires, ip_adapter=[unit])
    nowhere = await _generate(client, **hires, ip_adapter=[{**unit, "start": 0.99}])
    assert adapted.shape == (96, 96, 3) and np.abs(adapted - plain).mean() > 1
    assert np.array_equal(nowhere, plain)
