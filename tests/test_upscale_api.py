"""Upscaling through the API: ``GET /api/v1/upscalers``, ``POST /api/v1/upscale`` (a job with
tiles as its progress, the same outputs and metadata as a generation), A1111's
``/sdapi/v1/upscalers``, ``extra-single-image`` and ``extra-batch-images``, and the bad input:
unknown or broken upscalers, scales out of range, a size over ``MAX_OUTPUT_PIXELS``, a file
corrupted after it was listed."""

from __future__ import annotations

import base64
import io
import json

import pytest
from doubles import PausingEngine
from images import b64, picture
from PIL import Image
from wsclient import events_until, events_until_terminal

from sdxl_server.api import keys
from sdxl_server.pipeline.tiny import write_tiny_upscaler


@pytest.fixture
def settings(settings):
    folder = settings.upscalers_dir
    write_tiny_upscaler(folder / "compact-4x.pth", scale=4, seed=3)
    (folder / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    return settings.replace(upscale_tile=32, upscale_tile_overlap=4, max_output_pixels=256 * 256)


async def upscaled(client, ws, body: dict) -> tuple[dict, list[dict], Image.Image]:
    """Queue ``body``; its job once finished, its events, and its image."""
    resp = await client.post("/api/v1/upscale", json=body)
    assert resp.status == 202, await resp.text()
    job = await resp.json()
    assert resp.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    events = await events_until_terminal(ws, job["id"])
    done = await (await client.get(resp.headers["Location"])).json()
    image = Image.open(io.BytesIO(await (await client.get(done["image_url"])).read())) if done["status"] == "succeeded" else None
    return done, events, image


async def test_the_upscalers_are_listed_with_scale_and_architecture_and_broken_ones_with_why(client):
    listing = await (await client.get("/api/v1/upscalers")).json()
    found = {entry["name"]: entry for entry in listing["upscalers"]}
    assert list(found) == ["Lanczos", "Nearest", "tiny-compact-2x", "broken", "compact-4x"]
    assert found["compact-4x"]["scale"] == 4 and found["compact-4x"]["architecture"] == "RealESRGAN Compact"
    assert found["tiny-compact-2x"]["scale"] == 2 and found["Lanczos"]["kind"] == "builtin"
    assert found["broken"]["broken"] and found["compact-4x"]["broken"] is None
    a1111 = await (await client.get("/sdapi/v1/upscalers")).json()
    assert [u["name"] for u in a1111] == ["None", "Lanczos", "Nearest", "tiny-compact-2x", "compact-4x"]
    assert a1111[4]["scale"] == 4 and a1111[4]["model_path"].endswith("compact-4x.pth")


async def test_an_upscale_job_counts_tiles_and_saves_its_image_with_metadata(client):
    ws = await client.ws_connect("/api/v1/ws")
    await ws.receive_json()
    done, events, image = await upscaled(client, ws, {"image": b64(picture(48, 40)), "upscaler": "compact-4x", "scale": 3})
    assert done["status"] == "succeeded" and image.size == (144, 120)
    assert done["total_steps"] == 4 and done["step"] == 4  # 48x40 in 32 px tiles
    assert [e["step"] for e in events if e["type"] == "progress"] == [1, 2, 3, 4]
    meta = done["meta"]
    assert meta["mode"] == "upscale" and meta["upscaler"] == "compact-4x" and (meta["width"], meta["height"]) == (144, 120)
    assert len(meta["upscale_image_sha256"]) == 64
    assert image.text["parameters"].startswith("Postprocess upscale to: 144x120, Postprocess upscaler: compact-4x")

    done, _, image = await upscaled(client, ws, {"image": b64(picture(48, 40)), "upscaler": "Lanczos", "width": 64,
                                                 "height": 64, "upscaler_2": "tiny-compact-2x", "upscaler_2_visibility": 0.5})
    assert image.size == (64, 64) and done["meta"]["upscale_crop_width"] == 64  # covered (77x64), then cropped


async def test_cancel_stops_an_upscale_between_tiles_and_leaves_no_file(make_client, settings):
    client = await make_client(settings, engine_factory=lambda s: PausingEngine(s, pause_after=2))
    ws = await client.ws_connect("/api/v1/ws")
    await ws.receive_json()
    resp = await client.post("/api/v1/upscale", json={"image": b64(picture(64, 64)), "upscaler": "tiny-compact-2x"})
    job = await resp.json()
    await events_until(ws, lambda e: e["type"] == "progress" and e["step"] == 2)
    cancelled = await (await client.delete(f"/api/v1/jobs/{job['id']}")).json()
    assert cancelled["status"] == "cancelled" and cancelled["step"] == 2 and cancelled["total_steps"] == 4
    assert not list((settings.output_dir / "images").glob("*.png"))


@pytest.mark.parametrize("body, field, words", [
    ({"upscaler": "4x-UltraSharp"}, "upscaler", "Unknown upscaler; one of: Lanczos, Nearest, tiny-compact-2x, compact-4x"),
    ({"upscaler": "broken"}, "upscaler", "Unusable"),
    ({"upscaler": "Lanczos", "upscaler_2": "nope", "upscaler_2_visibility": 0.3}, "upscaler_2", "Unknown upscaler"),
    ({"scale": 9}, "scale", "less than or equal to 8.0"),
    ({"scale": 8}, "scale", "MAX_OUTPUT_PIXELS = 65536 pixels: from 48x40 the largest scale allowed is 5.84"),
    ({"width": 4000}, "width", "MAX_OUTPUT_PIXELS"),
    ({"image": "bm90IGFuIGltYWdl"}, "image", ""),
    ({"sharpen": True}, "sharpen", "Unknown field"),
])
async def test_bad_upscale_requests_are_clear_422s(client, body, field, words):
    resp = await client.post("/api/v1/upscale", json={"image": b64(picture(48, 40)), **body})
    answer = await resp.json()
    assert resp.status == 422 and field in answer["fields"], answer
    assert words in json.dumps(answer["fields"][field]) + answer["message"]


async def test_a_file_corrupted_after_it_was_listed_fails_its_job_with_422_and_the_next_job_runs(client, settings):
    assert (await client.get("/api/v1/upscalers")).status == 200  # compact-4x listed (read) as usable
    (settings.upscalers_dir / "compact-4x.pth").write_bytes(b"replaced by something else")
    resp = await client.post("/sdapi/v1/extra-single-image", json={"image": b64(picture(32, 32)), "upscaler_1": "compact-4x"})
    assert resp.status == 422 and "compact-4x" in json.dumps(await resp.json())
    resp = await client.post("/sdapi/v1/extra-single-image", json={"image": b64(picture(32, 32)), "upscaler_1": "Nearest"})
    assert resp.status == 200


def decoded(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


async def test_a1111_extras_answer_as_a1111_does(client):
    image = b64(picture(40, 40))
    single = await (await client.post("/sdapi/v1/extra-single-image", json={
        "image": image, "upscaler_1": "tiny-compact-2x", "upscaling_resize": "2", "codeformer_visibility": 0.5,
        "codeformer_weight": 0.7, "show_extras_results": None, "unknown_field": 1})).json()
    assert set(single) == {"html_info", "image"} and decoded(single["image"]).size == (80, 80)
    assert single["html_info"].startswith("<p>Postprocess upscale by: 2, Postprocess upscaler: tiny-compact-2x")
    assert "codeformer_visibility: 0.5 not applied" in single["html_info"]
    assert "codeformer_weight: 0.7 not applied" in single["html_info"]

    batch = await (await client.post("/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": image, "name": "a.png"}, {"data": b64(picture(24, 16)), "name": "b.png"}],
        "upscaler_1": "Lanczos", "resize_mode": 1, "upscaling_resize_w": 64, "upscaling_resize_h": 48,
        "upscaling_crop": False})).json()
    assert set(batch) == {"html_info", "images"}
    assert [decoded(i).size for i in batch["images"]] == [(64, 64), (72, 48)]  # covering 64x48, not cropped
    assert "Postprocess upscale to:" in batch["html_info"]

    refused = await client.post("/sdapi/v1/extra-single-image", json={"image": image, "upscaler_1": "nope"})
    body = await refused.json()
    assert refused.status == 422 and "upscaler_1" in json.dumps(body)
    refused = await client.post("/sdapi/v1/extra-single-image", json={"image": image, "upscaling_resize": 12})
    assert refused.status == 422 and "upscaling_resize" in json.dumps(await refused.json())


async def test_upscale_jobs_are_in_the_job_list_like_generations(client):
    ws = await client.ws_connect("/api/v1/ws")
    await ws.receive_json()
    done, _, _ = await upscaled(client, ws, {"image": b64(picture(16, 16)), "upscaler": "Nearest", "scale": 2})
    listed = await (await client.get("/api/v1/jobs")).json()
    assert listed["jobs"][0]["id"] == done["id"] and listed["jobs"][0]["params"]["upscaler"] == "Nearest"
    assert client.app[keys.UPSCALERS].directory.name == "upscalers"


# ExtrasBaseRequest's fields (A1111 modules/api/models.py at 008a8e75), and each route's image field
EXTRAS_FIELDS = """resize_mode show_extras_results gfpgan_visibility codeformer_visibility codeformer_weight
    upscaling_resize upscaling_resize_w upscaling_resize_h upscaling_crop upscaler_1 upscaler_2
    extras_upscaler_2_visibility upscale_first""".split()


def test_every_extras_field_is_applied_warned_or_without_effect():
    from sdxl_server.api.applied import TABLES

    for route in ("/sdapi/v1/extra-single-image", "/sdapi/v1/extra-batch-images"):
        assert set(TABLES[route]) == {*EXTRAS_FIELDS, "image", "imageList"}, route


async def test_extras_fields_without_effect_leave_the_image_as_it_was(client):
    body = {"image": b64(picture(24, 24)), "upscaler_1": "tiny-compact-2x"}
    plain = await (await client.post("/sdapi/v1/extra-single-image", json=body)).json()
    same = await (await client.post("/sdapi/v1/extra-single-image",
                                    json={**body, "show_extras_results": False, "upscale_first": True})).json()
    assert decoded(plain["image"]).tobytes() == decoded(same["image"]).tobytes()
    assert same["html_info"] == plain["html_info"] and "Warning" not in same["html_info"]


async def test_our_upscale_api_is_strict_about_types(client):
    for body in ({"crop": 0}, {"scale": "2"}, {"width": True}):
        resp = await client.post("/api/v1/upscale", json={"image": b64(picture(16, 16)), **body})
        assert resp.status == 422 and set((await resp.json())["fields"]) == set(body), body
