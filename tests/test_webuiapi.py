"""The real `webuiapi` client (what many A1111 scripts use) against a live server: models, the
model switch A1111's way, LoRAs, txt2img with a <lora:...> tag."""

from __future__ import annotations

import pytest
from live_server import LiveServer
from lora_builder import lora_weights, save_kohya_layout

webuiapi = pytest.importorskip("webuiapi")


@pytest.fixture
def server(tiny_cache, tiny_model_dir, tmp_path):
    from sdxl_server.pipeline.tiny import build_tiny_pipeline

    models, loras = tmp_path / "models", tmp_path / "loras"
    build_tiny_pipeline(seed=1).save_pretrained(models / "tiny-b")
    loras.mkdir()
    save_kohya_layout(lora_weights(tiny_model_dir, seed=1), loras / "ink.safetensors")
    live = LiveServer(tiny_cache, tmp_path / "outputs", MODELS_DIR=str(models), LORA_DIR=str(loras)).wait_ready()
    yield live
    live.stop()


@pytest.mark.slow(30)
def test_webuiapi_models_switch_loras_and_txt2img(server):
    api = webuiapi.WebUIApi(baseurl=f"{server.url}/sdapi/v1", steps=2)
    assert [m["title"] for m in api.get_sd_models()] == ["tiny", "tiny-b"]
    assert [lora["name"] for lora in api.get_loras()] == ["ink"]

    plain = api.txt2img(prompt="a lighthouse", seed=3, width=64, height=64)
    tagged = api.txt2img(prompt="a lighthouse <lora:ink:1>", seed=3, width=64, height=64)
    assert tagged.image.tobytes() != plain.image.tobytes()
    assert 'Lora hashes: "ink: ' in tagged.info["infotexts"][0]

    api.util_set_model("tiny-b")
    assert api.util_get_current_model() == "tiny-b"
    switched = api.txt2img(prompt="a lighthouse", seed=3, width=64, height=64)
    assert switched.image.tobytes() != plain.image.tobytes()
    assert switched.info["sd_model_name"].endswith("tiny-b")
    api.util_set_model("tiny")
    assert api.txt2img(prompt="a lighthouse", seed=3, width=64, height=64).image.tobytes() == plain.image.tobytes()


@pytest.mark.slow(25)
def test_webuiapi_with_api_key_sends_basic_auth(tiny_cache, tmp_path):
    # webuiapi can only send HTTP Basic auth (set_auth): API_KEY as its password opens the API.
    live = LiveServer(tiny_cache, tmp_path / "outputs", API_KEY="sk-local").wait_ready()
    try:
        api = webuiapi.WebUIApi(baseurl=f"{live.url}/sdapi/v1", steps=1)
        refused = api.get_sd_models()  # webuiapi returns the body whatever the status
        assert refused["error"] == "unauthorized" and "Basic auth with the key as the password" in refused["detail"]
        api.set_auth("webui", "sk-local")
        assert [m["title"] for m in api.get_sd_models()] == ["tiny"]
        result = api.txt2img(prompt="a lighthouse", seed=3, width=64, height=64)
        assert result.image.size == (64, 64) and result.info["seed"] == 3
    finally:
        live.stop()


async def test_webuiapi_interrupt_returns_the_image_as_far_as_it_got(make_client, settings):
    # A1111's interrupt ends the waiting txt2img with 200 and the image so far; webuiapi would
    # raise on anything else. Its calls are blocking: they run on threads while the server serves.
    import asyncio

    from doubles import PausingEngine
    from wsclient import events_until

    client = await make_client(settings, engine_factory=lambda s: PausingEngine(s, pause_after=2))
    api = await asyncio.to_thread(webuiapi.WebUIApi, baseurl=str(client.make_url("/sdapi/v1")), steps=4)  # it asks for scripts
    ws = await client.ws_connect("/api/v1/ws")
    await ws.receive_json()
    waiting = asyncio.create_task(asyncio.to_thread(api.txt2img, prompt="a lighthouse", seed=3, width=64, height=64))
    await events_until(ws, lambda e: e["type"] == "progress" and e["step"] == 2)
    await asyncio.to_thread(api.interrupt)
    result = await waiting
    assert result.image.size == (64, 64) and result.info["seed"] == 3
    assert "stopped at step 2 of 4" in result.info["extra_generation_params"]["Server notes"]
