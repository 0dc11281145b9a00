"""Hires fix on the tiny model: the scaled size with one progress count over both passes, the
latent and pixel upscalers, cancel in each phase, the limits, the metadata, with image to image
and the refiner, and the tiled decode a large image falls back to."""

from __future__ import annotations

import asyncio
import io
import json

import pytest
import torch
from doubles import PausingEngine, UpscalePausingEngine, cuda_out_of_memory
from images import b64, picture
from PIL import Image
from wsclient import events_until

from sdxl_server.api import keys
from sdxl_server.jobs.states import TERMINAL_EVENTS as TERMINAL
from sdxl_server.params import LATENT_UPSCALERS, GenerationParams, HiresOptions
from sdxl_server.pipeline.decode import decode_latents
from sdxl_server.pipeline.memory import decode_needs_tiling
from sdxl_server.pipeline.tiny import TINY_UPSCALER, ensure_tiny_refiner

STEPS = 3


def hires_job(**hires) -> dict:
    return {"prompt": "a lighthouse", "steps": STEPS, "width": 64, "height": 64, "seed": 7,
            "hires": {"denoise": 0.67, **hires}}  # int(3 x 0.67) = 2 second-pass steps


async def run_job(client, body: dict) -> tuple[dict, list[dict], Image.Image]:
    """Queue ``body``; its final state, its progress events and its image."""
    resp = await client.post("/api/v1/jobs", json=body)
    assert resp.status == 202, await resp.text()
    job_id = (await resp.json())["id"]
    ws = await client.ws_connect(f"/api/v1/ws?job={job_id}")
    events = await events_until(ws, lambda e: e["id"] == job_id and e["type"] in TERMINAL)
    state = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert state["status"] == "succeeded", state
    image = Image.open(io.BytesIO(await (await client.get(state["image_url"])).read()))
    return state, [e for e in events if e["type"] == "progress"], image


@pytest.mark.parametrize("upscaler", ["Latent", "Latent (bicubic antialiased)", "Lanczos", TINY_UPSCALER])
async def test_hires_makes_the_scaled_size_with_one_progress_count(client, upscaler):
    state, progress, image = await run_job(client, hires_job(scale=2, upscaler=upscaler))
    assert image.size == (128, 128)
    total = STEPS + 2
    assert [e["step"] for e in progress] == list(range(1, total + 1))  # both passes, one count
    assert {e["total_steps"] for e in progress} == {total} and state["total_steps"] == total
    assert progress[-1]["progress"] == 1.0 and progress[-1]["eta_s"] is not None
    meta = state["meta"]
    assert (meta["width"], meta["height"], meta["image_width"], meta["image_height"]) == (64, 64, 128, 128)
    assert meta["hires_upscaler"] == upscaler and meta["timings"]["hires_second_pass_s"] > 0


async def test_every_upscaler_the_api_offers_runs(client):
    listed = [u["name"] for u in (await (await client.get("/api/v1/upscalers")).json())["upscalers"] if u["name"] != "None"]
    assert {"Lanczos", "Nearest", TINY_UPSCALER} <= set(listed)  # the tiny model's server has the tiny upscaler
    for upscaler in (*LATENT_UPSCALERS, *listed):
        resp = await client.post("/api/v1/generate", json=hires_job(width=96, height=80, upscaler=upscaler, steps=2))
        assert resp.status == 200, (upscaler, await resp.text())
        image = Image.open(io.BytesIO(await (await client.get((await resp.json())["image_url"])).read()))
        assert image.size == (96, 80), upscaler  # covered, then the centre cropped


async def test_the_metadata_and_png_chunk_say_it_in_a1111s_words(client):
    body = hires_job(scale=1.5, upscaler="Lanczos", steps=4, prompt="a lighthouse, detailed",
                     negative_prompt="blur", scheduler="euler_a")
    resp = await client.post("/api/v1/generate", json=body)
    assert resp.status == 200, await resp.text()
    data = await resp.json()
    png = Image.open(io.BytesIO(await (await client.get(data["image_url"])).read()))
    text = png.text["parameters"]
    assert png.size == (96, 96) and "Size: 64x64" in text
    for said in ("Denoising strength: 0.67", "Hires upscale: 1.5", "Hires steps: 4", "Hires upscaler: Lanczos",
                 "Hires sampler: Euler a", 'Hires prompt: "a lighthouse, detailed"', 'Hires negative prompt: "blur"'):
        assert said in text, said
    meta = data["meta"]
    assert meta["hires"] is True and meta["hires_scale"] == 1.5 and meta["hires_sampler_name"] == "Euler a"
    plain = await (await client.post("/api/v1/generate", json={"prompt": "a lighthouse", "steps": 2})).json()
    assert "hires" not in plain["meta"] and "Hires" not in json.dumps(plain["meta"])


async def test_the_second_pass_changes_with_its_own_prompt_and_sampler(client):
    async def image(**hires):
        data = await (await client.post("/api/v1/generate", json=hires_job(**hires))).json()
        return await (await client.get(data["image_url"])).read()

    same = await image()
    assert await image() == same  # deterministic
    assert await image(prompt="a red barn") != same
    assert await image(scheduler="ddim") != same
    assert await image(upscaler="Nearest") != same


async def test_image_to_image_then_hires(client):
    body = {**hires_job(scale=2), "init_image": b64(picture(64, 64)), "strength": 0.67}
    state, progress, image = await run_job(client, body)
    assert image.size == (128, 128) and state["total_steps"] == 2 + 2  # int(3 x 0.67) in each pass
    text = image.text["parameters"]
    assert "Denoising strength: 0.67" in text and "Hires denoising strength: 0.67" in text


async def test_refiner_runs_within_the_first_pass(make_client, settings):
    ensure_tiny_refiner(settings.tiny_cache)
    client = await make_client(settings.replace(refiner_id="tiny"))
    state, progress, image = await run_job(client, {**hires_job(scale=2), "steps": 4, "refiner": "ensemble",
                                                    "refiner_switch_at": 0.5})
    assert image.size == (128, 128) and state["total_steps"] == 4 + 2  # base 2 + refiner 2, then the second pass
    assert [e["step"] for e in progress] == list(range(1, 7))


@pytest.mark.parametrize("phase, pause_after", [("first pass", 2), ("second pass", STEPS + 1)])
async def test_cancel_in_a_pass(make_client, settings, phase, pause_after):
    client = await make_client(settings, engine_factory=lambda s: PausingEngine(s, pause_after=pause_after))
    job_id = (await (await client.post("/api/v1/jobs", json=hires_job(scale=2))).json())["id"]
    ws = await client.ws_connect(f"/api/v1/ws?job={job_id}")
    await events_until(ws, lambda e: e["type"] == "progress" and e["step"] == pause_after)
    assert (await client.delete(f"/api/v1/jobs/{job_id}")).status == 200
    assert (await events_until(ws, lambda e: e["type"] in TERMINAL))[-1]["type"] == "cancelled"
    state = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert state["status"] == "cancelled" and state["step"] == pause_after, phase
    assert list((settings.output_dir / "images").iterdir()) == []


async def test_cancel_while_upscaling(make_client, settings):
    client = await make_client(settings, engine_factory=UpscalePausingEngine)
    engine = client.app[keys.ENGINE]
    job_id = (await (await client.post("/api/v1/jobs", json=hires_job(scale=2, upscaler="Lanczos"))).json())["id"]
    assert await asyncio.get_running_loop().run_in_executor(None, engine.upscaling.wait, 30)
    assert (await client.delete(f"/api/v1/jobs/{job_id}")).status in (200, 202)
    await (await client.app[keys.QUEUE].find(job_id)).wait()
    state = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
    assert state["status"] == "cancelled" and state["step"] == STEPS  # the first pass done, no second-pass step
    assert list((settings.output_dir / "images").iterdir()) == []


@pytest.fixture
def limited(settings):
    return settings.replace(max_output_pixels=160 * 160)


async def test_the_final_size_has_its_own_limit(make_client, limited):
    client = await make_client(limited)
    resp = await client.post("/api/v1/generate", json=hires_job(scale=3))
    body = await resp.json()
    assert resp.status == 422 and list(body["fields"]) == ["hires.scale"]
    assert "MAX_OUTPUT_PIXELS = 25600" in body["message"] and "largest scale allowed is 2.5" in body["message"]
    resp = await client.post("/api/v1/generate", json=hires_job(width=320, height=96))
    assert resp.status == 422 and list((await resp.json())["fields"]) == ["hires.width"]
    # past MAX_WIDTH (512 here) is fine for the final size while its pixels are within the limit
    client2 = await make_client(limited.replace(max_width=64, max_height=64, max_output_pixels=640 * 64,
                                                output_dir=limited.output_dir.parent / "second", jobs_db=None))
    resp = await client2.post("/api/v1/generate", json=hires_job(width=640, height=64, steps=1, denoise=1))
    assert resp.status == 200, await resp.text()
    resp = await client2.post("/api/v1/generate", json={**hires_job(), "width": 72})
    assert resp.status == 422 and "width" in (await resp.json())["fields"]  # the first pass keeps MAX_WIDTH


@pytest.mark.parametrize("hires, field", [
    ({"upscaler": "4x-UltraSharp"}, "hires.upscaler"),
    ({"scale": 4.5}, "hires"),
    ({"scale": "2"}, "hires"),
    ({"width": 100}, "hires"),
    ({"height": 40}, "hires"),
    ({"denoise": 0}, "hires"),
    ({"denoise": 0.2}, "hires.denoise"),  # int(3 x 0.2) = 0: no second-pass step
    ({"scheduler": "k_lms"}, "hires"),
    ({"sharpen": True}, "hires"),
])
async def test_bad_hires_requests_are_named(client, hires, field):
    resp = await client.post("/api/v1/jobs", json={**hires_job(), "hires": hires})
    body = await resp.json()
    assert resp.status == 422 and field in body["fields"], body
    if field == "hires.upscaler":
        assert "Latent (nearest-exact), Lanczos, Nearest" in body["message"]


async def test_an_upscaler_file_that_cannot_be_read_is_refused(make_client, settings, tmp_path):
    folder = tmp_path / "upscalers"
    folder.mkdir()
    (folder / "4x-broken.pth").write_bytes(b"not a model")
    client = await make_client(settings.replace(upscalers_dir=folder))
    resp = await client.post("/api/v1/jobs", json=hires_job(upscaler="4x-broken"))
    body = await resp.json()
    assert resp.status == 422 and list(body["fields"]) == ["hires.upscaler"] and "cannot be used" in body["message"]


async def test_hires_takes_no_mask(client):
    mask = Image.new("L", (64, 64), 255)
    resp = await client.post("/api/v1/jobs", json={**hires_job(), "init_image": b64(picture(64, 64)), "mask": b64(mask)})
    body = await resp.json()
    assert resp.status == 422 and list(body["fields"]) == ["mask"] and "Hires fix does not take a mask" in body["message"]


async def test_a1111_hires_fix(client):
    body = {"prompt": "a fox", "steps": 3, "width": 64, "height": 64, "seed": 3, "enable_hr": True, "hr_scale": "2",
            "hr_upscaler": "Latent (nearest-exact)", "hr_second_pass_steps": 4.0, "denoising_strength": 0.5,
            "hr_sampler_name": "DDIM", "hr_checkpoint_name": "Use same checkpoint"}
    resp = await client.post("/sdapi/v1/txt2img", json=body)
    answer = await resp.json()
    assert resp.status == 200, answer
    info = json.loads(answer["info"])
    assert Image.open(io.BytesIO(__import__("base64").b64decode(answer["images"][0]))).size == (128, 128)
    assert info["denoising_strength"] == 0.5 and info["warnings"] == [] and (info["width"], info["height"]) == (64, 64)
    assert info["extra_generation_params"]["Hires upscale"] == 2.0
    assert "Hires steps: 4, Hires upscaler: Latent (nearest-exact), Hires sampler: DDIM" in info["infotexts"][0]
    resized = await (await client.post("/sdapi/v1/txt2img", json={**body, "hr_resize_x": 100, "hr_resize_y": 0})).json()
    assert Image.open(io.BytesIO(__import__("base64").b64decode(resized["images"][0]))).size == (96, 96)
    other = await (await client.post("/sdapi/v1/txt2img", json={**body, "hr_checkpoint_name": "other.safetensors"})).json()
    assert json.loads(other["info"])["warnings"] == [
        "hr_checkpoint_name: 'other.safetensors' not applied (the second pass runs on the first pass's model)"]
    lanczos = await (await client.post("/sdapi/v1/txt2img", json={**body, "hr_upscaler": "None"})).json()
    assert "Hires upscaler: Lanczos" in json.loads(lanczos["info"])["infotexts"][0]  # resized, as A1111 does
    resp = await client.post("/sdapi/v1/txt2img", json={**body, "hr_upscaler": "R-ESRGAN 4x+"})
    assert resp.status == 422 and list((await resp.json())["fields"]) == ["hr_upscaler"]
    resp = await client.post("/sdapi/v1/txt2img", json={**body, "hr_scale": 40})
    assert resp.status == 422 and "enable_hr" in (await resp.json())["fields"]


async def test_latent_upscale_modes_are_listed(client):
    modes = await (await client.get("/sdapi/v1/latent-upscale-modes")).json()
    assert [mode["name"] for mode in modes] == list(LATENT_UPSCALERS)


def test_the_eta_weighs_the_second_pass_by_its_size():
    params = GenerationParams.from_dict({"prompt": "x", "negative_prompt": "", "width": 64, "height": 64, "steps": 10,
                                         "guidance_scale": 5, "seed": 1, "hires": True, "hires_scale": 2, "hires_denoise": 0.5})
    assert params.hires_steps == 5 and params.total_steps == 15
    first, second = 64 * 64 / 1e6, 128 * 128 / 1e6
    assert params.megapixel_steps(0, 15) == pytest.approx(10 * first + 5 * second)
    assert params.megapixel_steps(12, 15) == pytest.approx(3 * second)
    assert params.step_megapixels(1, 15) == pytest.approx(first) and params.step_megapixels(15, 15) == pytest.approx(second)


def test_targets_follow_a1111():
    assert HiresOptions(scale=1.5).target(512, 768) == ((768, 1152), (768, 1152))
    assert HiresOptions(width=1024).target(512, 768) == ((1024, 1536), (1024, 1536))
    assert HiresOptions(height=1024).target(768, 512) == ((1536, 1024), (1536, 1024))
    assert HiresOptions(width=1024, height=1024).target(512, 768) == ((1024, 1536), (1024, 1024))  # cover, crop


def test_a_decode_too_large_for_the_free_memory_is_tiled():
    assert not decode_needs_tiling(2048 * 2048, None, "float16")  # no GPU: not measured
    assert decode_needs_tiling(2048 * 2048, 6 * 2**30, "float16")  # about 12 GiB untiled
    assert not decode_needs_tiling(1024 * 1024, 6 * 2**30, "float16")
    assert decode_needs_tiling(1024 * 1024, 6 * 2**30, "float32")


def test_a_decode_that_runs_out_of_memory_is_redone_in_tiles():
    from sdxl_server.pipeline.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline()
    decode, tiled = pipe.vae.decode, []

    def small_memory_decode(latents, *args, **kwargs):  # a fault double: the untiled decode does not fit
        tiled.append(pipe.vae.use_tiling)
        if not pipe.vae.use_tiling:
            raise cuda_out_of_memory()
        return decode(latents, *args, **kwargs)

    pipe.vae.decode = small_memory_decode
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        images, _ = decode_latents(pipe, latents)
    assert images[0].size == (128, 128) and tiled == [False, True] and pipe.vae.use_tiling is False



async def test_loras_and_another_model_run_both_passes(make_client, settings, tmp_path, tiny_model_dir):
    from lora_builder import lora_weights, save_diffusers_layout

    from sdxl_server.pipeline.tiny import build_tiny_pipeline

    (tmp_path / "loras").mkdir()
    save_diffusers_layout(lora_weights(tiny_model_dir, seed=1), tmp_path / "loras" / "ink.safetensors")
    build_tiny_pipeline(seed=1).save_pretrained(tmp_path / "models" / "tiny-b")
    client = await make_client(settings.replace(lora_dir=tmp_path / "loras", models_dir=tmp_path / "models"))

    async def made(**extra) -> tuple[bytes, dict]:
        resp = await client.post("/api/v1/generate", json={**hires_job(scale=2, upscaler="Lanczos"), "num_images": 2, **extra})
        assert resp.status == 200, await resp.text()
        data = await resp.json()
        images = [Image.open(io.BytesIO(await (await client.get(i["image_url"])).read())) for i in data["images"]]
        assert [image.size for image in images] == [(128, 128)] * 2  # a batch through the pixel upscaler
        return images[0].tobytes(), data["meta"]

    plain, _ = await made()
    with_lora, meta = await made(loras=[{"name": "ink", "weight": 1.0}])
    assert with_lora != plain and meta["lora_hashes"]
    other, meta = await made(model="tiny-b")
    assert other != plain and meta["model"] == "tiny-b" and meta["image_width"] == 128
    assert (await made())[0] == plain  # the default model again, LoRA off: as before


def test_the_second_pass_sampler_and_schedule_type():
    """Hires fix's second pass runs the request's pair unless it names its own: an older combined
    name carries its schedule type, a schedule the sampler does not take runs as automatic."""
    from sdxl_server.params import GenerationParams
    from sdxl_server.pipeline.passes.hires import second_pass_sampler

    def pair(**hires):
        params = GenerationParams.from_dict({"prompt": "x", "negative_prompt": "", "width": 64, "height": 64, "steps": 4,
                                             "guidance_scale": 5.0, "seed": 1, "sampler": "euler", "schedule": "karras", "hires": True,
                                             **{f"hires_{name}": value for name, value in hires.items()}})
        return second_pass_sampler(params)

    assert pair() == ("euler", "karras")
    assert pair(scheduler="dpmpp_2m_karras") == ("dpmpp_2m", "karras")
    assert pair(scheduler="ddim") == ("ddim", "automatic")
    assert pair(schedule="exponential") == ("euler", "exponential")
    assert pair(scheduler="lcm", schedule="karras") == ("lcm", "automatic")  # LCM takes only its own spacing
