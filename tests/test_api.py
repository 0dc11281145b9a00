"""POST /api/v1/generate, GET /, GET /health and the output files, as a client sees them."""

from __future__ import annotations

import io
import json

from PIL import Image

SEED_REQUEST = {
    "prompt": "a beautiful landscape with mountains and a lake, sunset, highly detailed",
    "negative_prompt": "blurry, low quality, distorted",
    "width": 128,
    "height": 64,
    "steps": 3,
    "guidance_scale": 7.0,
    "seed": 42,
}


async def generate(client, **body):
    resp = await client.post("/api/v1/generate", json=body)
    return resp.status, await resp.json()


async def fetch_png(client, url: str) -> Image.Image:
    resp = await client.get(url)
    assert resp.status == 200
    assert resp.content_type == "image/png"
    image = Image.open(io.BytesIO(await resp.read()))
    image.load()
    return image


async def test_seed_request_returns_png_and_metadata(client, settings):
    status, body = await generate(client, **SEED_REQUEST)
    assert status == 200
    assert set(body) == {"id", "image_url", "meta_url", "meta"}
    assert body["image_url"] == f"/outputs/images/{body['id']}.png"
    assert body["meta_url"] == f"/outputs/metadata/{body['id']}.json"
    meta = body["meta"]
    for key, value in SEED_REQUEST.items():
        assert meta[key] == value
    assert meta["model_id"] == "tiny"
    assert meta["device"] == "cpu" and meta["dtype"] == "float32"
    assert meta["sampler"] == "default" and meta["schedule"] == "automatic"
    assert meta["sampler_name"] == "Euler" and meta["schedule_type"] == "Automatic"
    assert meta["vae_upcast"] is False
    assert meta["created_at"].endswith("+00:00")
    assert meta["timings"]["inference_s"] > 0 and meta["timings"]["total_s"] >= meta["timings"]["inference_s"]

    image = await fetch_png(client, body["image_url"])
    assert image.size == (128, 64)
    parameters = image.text["parameters"]
    assert parameters.startswith(SEED_REQUEST["prompt"] + "\nNegative prompt: blurry")
    assert "Steps: 3, Sampler: Euler, CFG scale: 7.0, Seed: 42, Size: 128x64, Model: tiny" in parameters  # Automatic: unsaid, as A1111

    resp = await client.get(body["meta_url"])
    assert resp.status == 200
    assert json.loads(await resp.read()) == meta
    assert (settings.output_dir / "images" / f"{body['id']}.png").is_file()
    assert (settings.output_dir / "metadata" / f"{body['id']}.json").is_file()


async def test_defaults_come_from_settings(client, settings):
    status, body = await generate(client, prompt="defaults")
    assert status == 200
    meta = body["meta"]
    assert (meta["width"], meta["height"], meta["steps"]) == (64, 64, 3)
    assert meta["guidance_scale"] == settings.default_guidance


async def test_same_seed_same_pixels_and_missing_seed_is_drawn(client):
    _, first = await generate(client, prompt="repeat", seed=7)
    _, second = await generate(client, prompt="repeat", seed=7)
    _, other = await generate(client, prompt="repeat", seed=8)
    a, b, c = [await fetch_png(client, r["image_url"]) for r in (first, second, other)]
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()

    _, drawn = await generate(client, prompt="repeat")
    seed = drawn["meta"]["seed"]
    assert 0 <= seed <= 2**32 - 1
    _, again = await generate(client, prompt="repeat", seed=seed)
    assert (await fetch_png(client, drawn["image_url"])).tobytes() == (await fetch_png(client, again["image_url"])).tobytes()

    _, random_again = await generate(client, prompt="repeat", seed=-1)
    assert random_again["meta"]["seed"] >= 0


async def test_the_older_scheduler_field_still_takes_every_name(client):
    """Before samplers and schedules were two fields, ``scheduler`` took both ("dpmpp_2m_karras")."""
    from sdxl_server.sampling import combined_label, sampler_names, split_combined

    images = {}
    for name in sampler_names():
        status, body = await generate(client, prompt="samplers", scheduler=name, seed=3, steps=2)
        assert status == 200, body
        assert (body["meta"]["sampler"], body["meta"]["schedule"]) == split_combined(name)
        if name != "default":
            assert f'{body["meta"]["sampler_name"]} {body["meta"]["schedule_type"]}'.removesuffix(" Automatic") == combined_label(name)
        images[name] = (await fetch_png(client, body["image_url"])).tobytes()
    assert images["euler"] == images["default"]  # SDXL's own scheduler is Euler
    assert images["euler_a"] != images["euler"]
    assert images["dpmpp_2m_karras"] != images["dpmpp_2m"]


async def test_health_reports_model_device_and_queue(client):
    resp = await client.get("/health")
    assert resp.status == 200
    health = await resp.json()
    assert health["status"] == "ok"
    assert health["cuda_available"] is False
    assert (health["device"], health["dtype"]) == ("cpu", "float32")
    assert health["model"]["id"] == "tiny" and health["model"]["source"] == "tiny"
    assert health["model"]["loaded"] is True and health["model"]["tiny"] is True
    assert health["attention"] == "sdpa"
    assert health["options"]["vae_tiling"] is False and health["options"]["cpu_offload"] == "none"
    assert health["queue"] == {
        "running": None, "running_jobs": [], "concurrency": 1, "waiting": 0, "capacity": 2, "eta_s": 0.0, "problem": None
    }


async def test_index_is_html_for_browsers_and_json_otherwise(client):
    resp = await client.get("/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert resp.status == 200 and resp.content_type == "text/html"
    assert "<form" in await resp.text()

    resp = await client.get("/", headers={"Accept": "application/json"})
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "ok" and body["model"] == "tiny"
    assert body["endpoints"]["generate"] == "POST /api/v1/generate"

    resp = await client.get("/static/js/main.js")
    assert resp.status == 200


async def test_index_tells_caches_it_depends_on_accept(client):
    for accept in ("text/html", "application/json", "*/*"):
        resp = await client.get("/", headers={"Accept": accept})
        assert resp.status == 200
        varies = [name.strip().lower() for header in resp.headers.getall("Vary", []) for name in header.split(",")]
        assert "accept" in varies, (accept, varies)


async def test_unknown_routes_and_methods_are_json_errors(client):
    resp = await client.get("/api/v1/nothing")
    assert resp.status == 404
    assert (await resp.json())["error"] == "not_found"
    resp = await client.get("/api/v1/generate")
    assert resp.status == 405
    body = await resp.json()
    assert body["error"] == "method_not_allowed" and "POST" in body["message"]
    assert resp.headers["Allow"] == "POST"


async def test_info_gives_what_a_form_needs(client, settings):
    resp = await client.get("/api/v1/info")
    assert resp.status == 200
    info = await resp.json()
    assert info["model"] == {"id": "tiny", "tiny": True, "state": "ready", "source": "tiny"}
    assert info["limits"]["max_width"] == settings.max_width == 512
    assert info["limits"]["max_steps"] == settings.max_steps
    assert info["limits"]["min_size"] == 64 and info["limits"]["size_multiple"] == 8
    assert info["defaults"] == {"width": 64, "height": 64, "steps": 3, "guidance_scale": 7.0,
                                "sampler": "default", "schedule": "automatic"}
    assert info["schedulers"]["euler_a"] == "Euler a" and info["schedulers"]["dpmpp_2m_karras"] == "DPM++ 2M Karras"
    assert info["samplers"]["lcm"] == {"label": "LCM", "schedules": ["automatic"]}
    assert "align_your_steps" in info["samplers"]["euler"]["schedules"] and info["schedules"]["karras"]["label"] == "Karras"
    assert info["job_statuses"] == ["queued", "running", "succeeded", "failed", "cancelled"]
    assert info["terminal_statuses"] == ["succeeded", "failed", "cancelled"]


async def test_several_images_in_one_request_each_with_its_own_files(client, settings):
    status, body = await generate(client, prompt="batch", num_images=3, seed=100, steps=2)
    assert status == 200
    images = body["images"]
    assert [i["id"] for i in images] == [body["id"], f"{body['id']}-1", f"{body['id']}-2"]
    assert [i["meta"]["seed"] for i in images] == [100, 101, 102]
    assert [i["meta"]["index"] for i in images] == [0, 1, 2]
    assert body["image_url"] == images[0]["image_url"] and body["meta"] == images[0]["meta"]
    pixels = [(await fetch_png(client, i["image_url"])).tobytes() for i in images]
    assert len(set(pixels)) == 3
    for image in images:
        resp = await client.get(image["meta_url"])
        assert json.loads(await resp.read()) == image["meta"]
    # Image i is seed + i on its own: it can be redone alone (batched arithmetic may round differently).
    _, alone = await generate(client, prompt="batch", seed=101, steps=2)
    redone = (await fetch_png(client, alone["image_url"])).tobytes()
    assert max(abs(a - b) for a, b in zip(redone, pixels[1])) <= 2

    status, body = await generate(client, prompt="too many", num_images=settings.max_batch + 1)
    assert status == 422 and "num_images" in body["fields"]


async def test_a_batch_that_runs_out_of_memory_is_made_one_at_a_time(make_client, settings):
    from doubles import SmallMemoryEngine

    client = await make_client(settings, engine_factory=SmallMemoryEngine)
    ws = await client.ws_connect("/api/v1/ws")
    await ws.receive_json()
    status, body = await generate(client, prompt="fallback", num_images=2, seed=5, steps=2)
    assert status == 200
    assert [i["meta"]["seed"] for i in body["images"]] == [5, 6]
    from wsclient import events_until_terminal

    events = await events_until_terminal(ws, body["id"])
    steps = [(e["step"], e["total_steps"]) for e in events if e["type"] == "progress"]
    assert steps == [(1, 4), (2, 4), (3, 4), (4, 4)]
