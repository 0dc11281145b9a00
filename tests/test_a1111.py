"""Requests shaped as AUTOMATIC1111's API documents them, round-tripping through /sdapi/v1."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import json
import logging
import time

import aiohttp
import pytest
import rawhttp
from doubles import GatedEngine, PausingEngine, SmallMemoryEngine
from PIL import Image
from wsclient import events_until, events_until_terminal

from aiohttp import web

from sdxl_server.api import keys
from sdxl_server.api.app import create_app

TXT2IMG = {  # field names as A1111's StableDiffusionTxt2ImgProcessingAPI documents them
    "prompt": "a lighthouse, oil painting",
    "negative_prompt": "blurry",
    "width": 64,
    "height": 128,
    "steps": 2,
    "cfg_scale": 6.5,
    "seed": -1,
    "sampler_name": "Euler a",
    "batch_size": 2,
    "n_iter": 1,
    "restore_faces": False,
    "tiling": False,
    "enable_hr": False,
    "override_settings": {},
    "alwayson_scripts": {},
}


async def test_txt2img_returns_images_parameters_and_info(client, settings):
    resp = await client.post("/sdapi/v1/txt2img", json=TXT2IMG)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    images = [Image.open(io.BytesIO(base64.b64decode(b))) for b in body["images"]]
    assert [image.size for image in images] == [(64, 128), (64, 128)]
    info = json.loads(body["info"])
    assert info["seed"] >= 0 and info["all_seeds"] == [info["seed"], info["seed"] + 1]
    assert info["sampler_name"] == "Euler a" and info["cfg_scale"] == 6.5 and info["steps"] == 2
    assert info["infotexts"][1].startswith("a lighthouse, oil painting\nNegative prompt: blurry\n")
    assert f"Seed: {info['seed'] + 1}" in images[1].text["parameters"]
    assert body["parameters"]["seed"] == info["seed"] and body["parameters"]["prompt"] == TXT2IMG["prompt"]
    # The same queue and outputs as our own API.
    jobs = await (await client.get("/api/v1/jobs")).json()
    assert jobs["jobs"][0]["params"]["sampler"] == "euler_a" and jobs["jobs"][0]["params"]["num_images"] == 2
    assert len(list((settings.output_dir / "images").iterdir())) == 2


async def test_samplers_karras_and_seed(client):
    body = {**TXT2IMG, "batch_size": 1, "seed": 1234, "sampler_name": "DPM++ 2M", "scheduler": "Karras"}
    info = json.loads((await (await client.post("/sdapi/v1/txt2img", json=body)).json())["info"])
    assert info["seed"] == 1234 and info["sampler_name"] == "DPM++ 2M"
    assert info["extra_generation_params"]["Schedule type"] == "Karras"  # A1111 1.9+'s split
    assert "Sampler: DPM++ 2M, Schedule type: Karras," in info["infotexts"][0]
    old = {**body, "sampler_name": "DPM++ 2M Karras", "scheduler": None}  # the combined name of A1111 before 1.9
    info = json.loads((await (await client.post("/sdapi/v1/txt2img", json=old)).json())["info"])
    assert (info["sampler_name"], info["extra_generation_params"]["Schedule type"]) == ("DPM++ 2M", "Karras")
    samplers = await (await client.get("/sdapi/v1/samplers")).json()
    assert {"Euler", "Euler a", "Heun", "LMS", "DPM2", "DPM++ 2M", "DDIM", "UniPC", "LCM", "TCD"} <= {s["name"] for s in samplers}
    for sampler in samplers:
        resp = await client.post("/sdapi/v1/txt2img", json={**body, "sampler_name": sampler["name"], "scheduler": None, "steps": 1})
        assert resp.status == 200, sampler


async def test_a1111_errors_name_a1111_fields(client, settings):
    for field, value in (("cfg_scale", 99), ("width", 0), ("sampler_name", "Heun++ 9000")):
        resp = await client.post("/sdapi/v1/txt2img", json={**TXT2IMG, field: value})
        assert resp.status == 422
        body = await resp.json()
        assert field in body["fields"] and body["detail"] == body["message"]


async def test_sizes_are_fitted_and_batches_above_max_batch_split(client, settings):
    # SillyTavern's 1344x768 on a server allowing 512x512 (the test limits): the shape is kept.
    body = {**TXT2IMG, "width": 1344, "height": 768, "batch_size": 3, "n_iter": 2, "seed": 10, "steps": 1}
    resp = await client.post("/sdapi/v1/txt2img", json=body)
    assert resp.status == 200, await resp.text()
    result = await resp.json()
    info = json.loads(result["info"])
    assert (info["width"], info["height"]) == (512, 296)
    assert "1344x768 made as 512x296" in info["extra_generation_params"]["Server notes"]
    images = [Image.open(io.BytesIO(base64.b64decode(b))) for b in result["images"]]
    assert len(images) == 6 > settings.max_batch and {image.size for image in images} == {(512, 296)}
    assert info["all_seeds"] == list(range(10, 16))
    assert [f"Seed: {seed}," in image.text["parameters"] for seed, image in zip(range(10, 16), images)] == [True] * 6


async def test_models_options_and_interrupt_when_idle(client):
    models = await (await client.get("/sdapi/v1/sd-models")).json()
    assert models[0]["title"] == "tiny" and models[0]["model_name"] == "tiny"
    options = await (await client.get("/sdapi/v1/options")).json()
    assert options["sd_model_checkpoint"] == "tiny"
    resp = await client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny", "CLIP_stop_at_last_layers": 1})
    assert resp.status == 200 and await resp.json() is None
    resp = await client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "other.safetensors"})
    assert resp.status == 422 and "unknown model 'other.safetensors'" in (await resp.json())["detail"]
    assert (await client.post("/sdapi/v1/interrupt")).status == 200
    idle = await (await client.get("/sdapi/v1/progress")).json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0 and idle["current_image"] is None
    schedulers = await (await client.get("/sdapi/v1/schedulers")).json()
    assert [s["label"] for s in schedulers] == ["Automatic", "Uniform", "SGM Uniform", "Karras", "Exponential",
                                                "Beta", "Align Your Steps"]


async def test_progress_while_a_job_runs_then_interrupt(make_client, settings):
    client = await make_client(settings, engine_factory=lambda s: PausingEngine(s, pause_after=2))
    await client.get("/sdapi/v1/progress")  # a poller is watching: previews are made
    ws = await client.ws_connect("/api/v1/ws")
    await ws.receive_json()
    running = asyncio.create_task(client.post("/sdapi/v1/txt2img", json={**TXT2IMG, "steps": 4, "batch_size": 1}))
    await events_until(ws, lambda e: e["type"] == "progress" and e["step"] == 2)  # the job now waits
    progress = await (await client.get("/sdapi/v1/progress")).json()
    assert progress["progress"] == 0.5
    assert progress["state"]["sampling_step"] == 2 and progress["state"]["sampling_steps"] == 4
    assert progress["state"]["job"] == client.app[keys.QUEUE].running.id and progress["state"]["job_count"] == 1
    assert progress["eta_relative"] >= 0
    preview = Image.open(io.BytesIO(base64.b64decode(progress["current_image"])))
    assert preview.size == (8, 16)
    skipped = await (await client.get("/sdapi/v1/progress?skip_current_image=true")).json()
    assert skipped["current_image"] is None

    interrupts = await asyncio.gather(*(client.post("/sdapi/v1/interrupt") for _ in range(2)))
    assert [r.status for r in interrupts] == [200, 200]  # twice is fine (Ctrl-C happy clients)
    resp = await running  # as A1111: 200, with the image as far as it got
    assert resp.status == 200
    body = await resp.json()
    info = json.loads(body["info"])
    assert "interrupted: 1 of 1 images made, the last stopped at step 2 of 4" in info["extra_generation_params"]["Server notes"]
    [image] = body["images"]
    assert Image.open(io.BytesIO(base64.b64decode(image))).size == (TXT2IMG["width"], TXT2IMG["height"])
    job = await (await client.get(f"/api/v1/jobs/{progress['state']['job']}")).json()
    assert job["status"] == "succeeded" and job["meta"]["interrupted_at_step"] == 2  # saved, and says so
    steps = [e["step"] for e in await events_until_terminal(ws, job["id"]) if e["type"] == "progress"]
    assert 3 not in steps and 4 not in steps  # the remaining steps never ran


async def test_a_null_seed_is_random_as_in_a1111(client):
    resp = await client.post("/sdapi/v1/txt2img", json={**TXT2IMG, "seed": None, "batch_size": 1, "steps": 1})
    assert resp.status == 200, await resp.text()
    info = json.loads((await resp.json())["info"])
    assert 0 <= info["seed"] <= 2**32 - 1


async def test_a_model_that_failed_to_load_is_not_listed(make_client, settings):
    client = await make_client(settings.replace(model_id="/nonexistent/sdxl-model"))
    assert (await (await client.get("/health")).json())["model"]["state"] == "failed"
    resp = await client.get("/sdapi/v1/sd-models")
    assert resp.status == 200 and await resp.json() == []


async def test_interrupt_keeps_the_batches_already_made_and_skip_goes_on(make_client, settings):
    # MAX_BATCH is 4 in the tests: 6 images are two jobs; the second pauses after its first step.
    engine = {}

    def factory(s):
        engine["e"] = PausingEngine(s, pause_after=1)
        return engine["e"]

    client = await make_client(settings, engine_factory=factory)
    ws = await client.ws_connect("/api/v1/ws")
    await ws.receive_json()
    body = {**TXT2IMG, "batch_size": 6, "steps": 2, "seed": 40}
    running = asyncio.create_task(client.post("/sdapi/v1/txt2img", json=body))
    await events_until(ws, lambda e: e["type"] == "progress" and e["step"] == 1)  # first job paused
    assert (await client.post("/sdapi/v1/skip")).status == 200  # skip it: the second job runs
    await events_until(ws, lambda e: e["type"] == "progress" and e["step"] == 1)
    assert (await client.post("/sdapi/v1/interrupt")).status == 200
    resp = await running
    assert resp.status == 200
    body = await resp.json()
    info = json.loads(body["info"])
    # Both jobs stopped after their first step and gave what they had: 4 images, then 2.
    assert len(body["images"]) == 6 and info["all_seeds"] == list(range(40, 46))
    assert "interrupted: 6 of 6 images made, the last stopped at step 1 of 2" in info["extra_generation_params"]["Server notes"]


async def test_a1111_leniency_strings_nulls_clamps_and_samplers(client, settings):
    body = {
        "prompt": "", "negative_prompt": None, "width": "64", "height": 64.0, "steps": "500", "cfg_scale": "7",
        "seed": "12", "sampler_name": "DPM++ SDE Karras", "scheduler": None, "batch_size": None, "n_iter": None,
        "send_images": None, "styles": None, "override_settings": None,
    }
    resp = await client.post("/sdapi/v1/txt2img", json=body)
    assert resp.status == 200, await resp.text()
    result = await resp.json()
    info = json.loads(result["info"])
    assert info["steps"] == settings.max_steps and info["cfg_scale"] == 7 and info["seed"] == 12 and info["prompt"] == ""
    assert info["sampler_name"] == "DPM++ 2M SDE" and len(result["images"]) == 1
    assert info["extra_generation_params"]["Schedule type"] == "Karras"
    notes = info["extra_generation_params"]["Server notes"]
    assert "steps 500 lowered to" in notes and "'DPM++ SDE Karras' is not available here" in notes
    for sampler, ours in (("Heun", "Heun"), ("LMS", "LMS"), ("LCM", "LCM"), ("DPM2", "DPM2"), ("DPM++ 2M SDE Heun", "DPM++ 2M SDE")):
        resp = await client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 1, "sampler_name": sampler, "width": 64, "height": 64})
        assert json.loads((await resp.json())["info"])["sampler_name"] == ours, sampler
    for field, value in (("cfg_scale", "seven"), ("steps", True), ("width", "NaN")):
        resp = await client.post("/sdapi/v1/txt2img", json={"prompt": "x", field: value})
        assert resp.status == 422 and field in (await resp.json())["fields"], field


async def test_a_base_url_with_a_trailing_slash_and_no_content_type(client):
    import rawhttp

    raw = json.dumps({"prompt": "x", "steps": 1, "width": 64, "height": 64}).encode()
    resp = await rawhttp.exchange(client.host, client.port, rawhttp.request("POST", "//sdapi/v1/txt2img", {}, raw))
    assert resp.status == 200 and len(resp.json()["images"]) == 1
    async with aiohttp.ClientSession() as session:  # what a client with base URL 'http://host:port/' requests
        async with session.get(f"http://{client.host}:{client.port}//sdapi/v1/options") as resp:
            assert resp.status == 200 and (await resp.json())["sd_model_checkpoint"] == "tiny"


async def test_interrupt_leaves_other_clients_jobs_alone(make_client, settings):
    # SillyTavern interrupts whenever its own client goes away, even while its job still waits:
    # a job from the page (or the OpenAI API) that happens to be running is not A1111's to stop.
    client = await make_client(settings, engine_factory=lambda s: PausingEngine(s, pause_after=1))
    ws = await client.ws_connect("/api/v1/ws")
    await ws.receive_json()
    job = await (await client.post("/api/v1/jobs", json={"prompt": "from the page", "steps": 3})).json()
    await events_until(ws, lambda e: e["type"] == "progress" and e["id"] == job["id"] and e["step"] == 1)
    assert (await client.post("/sdapi/v1/interrupt")).status == 200
    assert (await client.post("/sdapi/v1/skip")).status == 200
    progress = await (await client.get("/sdapi/v1/progress")).json()
    assert progress["state"]["job"] == job["id"] and not progress["state"]["interrupted"]
    assert (await client.delete(f"/api/v1/jobs/{job['id']}")).status == 200  # its owner may cancel it
    ended = (await events_until_terminal(ws, job["id"]))[-1]
    assert ended["type"] == "cancelled"


async def test_an_interrupt_after_the_out_of_memory_fallback_marks_only_the_stopped_image(make_client, settings):
    # A batch of 2 that runs out of memory is made one image at a time (steps 1-2, then 3-4);
    # stopped at step 3, the first image is whole and the second stopped at its own step 1.
    class SmallPausingEngine(PausingEngine, SmallMemoryEngine):
        pass

    client = await make_client(settings, engine_factory=lambda s: SmallPausingEngine(s, pause_after=3))
    ws = await client.ws_connect("/api/v1/ws")
    await ws.receive_json()
    running = asyncio.create_task(client.post("/sdapi/v1/txt2img", json={**TXT2IMG, "steps": 2, "batch_size": 2}))
    started = await events_until(ws, lambda e: e["type"] == "progress" and e["step"] == 3)
    assert (await client.post("/sdapi/v1/interrupt")).status == 200
    body = await (await running).json()
    assert len(body["images"]) == 2
    assert "the last stopped at step 1 of 2" in json.loads(body["info"])["extra_generation_params"]["Server notes"]
    job = await (await client.get(f"/api/v1/jobs/{started[-1]['id']}")).json()
    assert [image["meta"].get("interrupted_at_step") for image in job["images"]] == [None, 1]


# A valid value for every numeric field of the two A1111 request schemas (the walk below checks
# that this covers them all, so a field added later is walked too).
NUMERIC_SAMPLES = {
    "width": 64, "height": 64, "steps": 2, "cfg_scale": 6.5, "seed": 3, "batch_size": 1, "n_iter": 1, "refiner_switch_at": 0.5,
    "denoising_strength": 1.0, "mask_blur": 0, "inpainting_fill": 1, "inpaint_full_res_padding": 8,
    "inpainting_mask_invert": 0, "resize_mode": 0,
}


def _numeric_fields(schema) -> set[str]:
    from marshmallow import fields

    from sdxl_server.api.a1111 import Number

    return {name for name, field in schema.fields.items() if isinstance(field, (fields.Number, Number))}


@pytest.mark.parametrize("form", ["numeric string", "null"])
async def test_every_numeric_field_of_both_routes_takes_a_numeric_string_and_null(client, form):
    """A1111 (pydantic) reads "0.75" as 0.75 and null as the default; img2img's and the refiner's
    fields answered 422 (the AIYA Discord bot sends denoising_strength as a string)."""
    from images import b64, picture

    from sdxl_server.api.a1111 import Txt2ImgSchema
    from sdxl_server.api.a1111_img2img import Img2ImgSchema

    txt2img, img2img = _numeric_fields(Txt2ImgSchema()), _numeric_fields(Img2ImgSchema())
    assert txt2img | img2img == set(NUMERIC_SAMPLES)
    for path, names, extra in (("/sdapi/v1/txt2img", txt2img, {}),
                               ("/sdapi/v1/img2img", txt2img | img2img, {"init_images": [b64(picture(64, 64))]})):
        body = {"prompt": "x", **extra, **{name: str(NUMERIC_SAMPLES[name]) if form != "null" else None for name in names}}
        resp = await client.post(path, json=body)
        assert resp.status == 200, (path, await resp.text())
        info = json.loads((await resp.json())["info"])
        if form == "null":
            assert info["steps"] == client.app[keys.SETTINGS].default_steps
        else:
            assert (info["steps"], info["seed"], info["cfg_scale"]) == (2, 3, 6.5)
            assert path.endswith("txt2img") or info["denoising_strength"] == 1.0


async def test_a_huge_n_iter_is_lowered_to_the_request_limit(make_client, settings):
    client = await make_client(dataclasses.replace(settings, max_batch=2, max_request_images=3))
    body = {**TXT2IMG, "batch_size": 1, "n_iter": 1_000_000_000, "steps": 1, "width": 64, "height": 64}
    resp = await client.post("/sdapi/v1/txt2img", json=body)
    assert resp.status == 200, await resp.text()
    answer = await resp.json()
    assert len(answer["images"]) == 3
    notes = json.loads(answer["info"])["extra_generation_params"]["Server notes"]
    assert "batch_size x n_iter = 1000000000 lowered to 3 images (MAX_REQUEST_IMAGES)" in notes
    jobs = (await (await client.get("/api/v1/jobs")).json())["jobs"]
    assert sorted(job["params"]["num_images"] for job in jobs) == [1, 2]


async def test_no_more_batches_are_queued_once_the_client_has_gone(settings, caplog):
    """Served as ``web.run_app`` serves it (a handler goes on after its client leaves; the test
    client's server would cancel it instead)."""
    caplog.set_level(logging.INFO, logger="sdxl_server.api.batches")
    engine = None

    def gated(s):
        nonlocal engine
        engine = GatedEngine(s)
        return engine

    app = create_app(dataclasses.replace(settings, max_batch=1), engine_factory=gated)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        await app[keys.QUEUE].ready.wait()
        port = runner.addresses[0][1]
        body = json.dumps({**TXT2IMG, "batch_size": 1, "n_iter": 20, "steps": 1, "width": 64, "height": 64}).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(rawhttp.request("POST", "/sdapi/v1/txt2img", {"Content-Type": "application/json"}, body))
        await writer.drain()
        await asyncio.get_running_loop().run_in_executor(None, engine.entered.acquire)  # the first job runs
        writer.close()  # the client gives up
        await writer.wait_closed()
        engine.gate.set()
        store = app[keys.JOB_STORE]
        deadline = time.monotonic() + 60
        while "left after 1 images" not in caplog.text and len(await store.page(100, None, None)) < 2:
            assert time.monotonic() < deadline, "the request neither stopped nor queued a second job"
            await asyncio.sleep(0.01)
        assert len(await store.page(100, None, None)) == 1 and not app[keys.QUEUE].active()
    finally:
        await runner.cleanup()


async def test_a_size_whose_shape_cannot_be_kept_is_a_422_naming_what_can_be_made(client):
    resp = await client.post("/sdapi/v1/txt2img", json={**TXT2IMG, "width": 1000, "height": 7})
    assert resp.status == 422
    error = await resp.json()
    assert set(error["fields"]) == {"width", "height"} and "64x512 (1:8)" in error["detail"]
