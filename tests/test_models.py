"""Several models: MODELS_DIR next to the default, picked per request on every route, the default
changed A1111's way, listings, broken checkpoints (422, the server keeps its model), caches."""

from __future__ import annotations

import base64
import io

import pytest
from images import generate_png, pixels
from lora_builder import write_fake_safetensors
from PIL import Image
from yarl import URL

from sdxl_server.api import keys

BODY = {"prompt": "a lighthouse", "seed": 5}


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    from sdxl_server.pipeline.tiny import build_tiny_pipeline

    folder = tmp_path_factory.mktemp("models")
    build_tiny_pipeline(seed=1).save_pretrained(folder / "tiny-b")
    (folder / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    write_fake_safetensors(folder / "just-a-vae.safetensors", {"decoder.conv_in.weight": [4, 4]})
    return folder


@pytest.fixture
def model_settings(settings, models_dir):
    return settings.replace(models_dir=models_dir)


@pytest.fixture
async def model_client(make_client, model_settings):
    return await make_client(model_settings)


async def test_each_model_gives_its_own_pixels(make_client, model_settings, models_dir):
    alone = await make_client(model_settings.replace(model_id=str(models_dir / "tiny-b")))
    b_alone = await pixels(alone, BODY)
    await alone.close()

    client = await make_client(model_settings)
    a = await pixels(client, BODY)
    data, b = await generate_png(client, {**BODY, "model": "tiny-b"})
    assert b.tobytes() == b_alone and b_alone != a
    assert data["meta"]["model_id"] == str(models_dir / "tiny-b")
    assert await pixels(client, BODY) == a  # back to the default
    assert await pixels(client, {**BODY, "model": "tiny"}) == a


async def test_listing_says_kind_size_default_loaded_and_broken(model_client, models_dir):
    await pixels(model_client, {**BODY, "model": "tiny-b"})
    listing = await (await model_client.get("/api/v1/models")).json()
    models = {m["name"]: m for m in listing["models"]}
    assert listing["default"] == "tiny" and models["tiny"]["default"] is True
    assert models["tiny-b"]["kind"] == "folder" and models["tiny-b"]["size"] > 0
    assert models["tiny-b"]["loaded"] == "cpu" and models["tiny"]["loaded"] is None  # MODEL_CACHE=1
    assert models["corrupt"]["broken"].startswith("unreadable")
    assert "no UNet weights" in models["just-a-vae"]["broken"]
    openai = await (await model_client.get("/v1/models")).json()
    assert [m["id"] for m in openai["data"]] == ["tiny", "tiny-b"]
    a1111 = await (await model_client.get("/sdapi/v1/sd-models")).json()
    assert [m["title"] for m in a1111] == ["tiny", "tiny-b"]
    health = await (await model_client.get("/health")).json()
    assert health["models"]["running"] == "tiny-b"


@pytest.mark.parametrize(("name", "words"), [("nope", ["nope", "tiny, tiny-b"]), ("corrupt", ["corrupt", "unreadable"])])
async def test_unknown_or_broken_model_is_422_and_the_server_keeps_its_model(model_client, name, words):
    before = await pixels(model_client, BODY)
    resp = await model_client.post("/api/v1/generate", json={**BODY, "model": name})
    assert resp.status == 422
    error = await resp.json()
    assert "model" in error["fields"]
    for word in words:
        assert word in error["message"]
    assert await pixels(model_client, BODY) == before


async def test_a1111_options_change_the_default_and_override_settings_pick_one(model_client):
    a = await pixels(model_client, BODY)
    b = await pixels(model_client, {**BODY, "model": "tiny-b"})
    resp = await model_client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny-b"})
    assert resp.status == 200
    assert (await (await model_client.get("/sdapi/v1/options")).json())["sd_model_checkpoint"] == "tiny-b"
    assert await pixels(model_client, BODY) == b
    bad = await model_client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope"})
    assert bad.status == 422 and "tiny-b" in (await bad.text())
    body = {**BODY, "steps": 3, "width": 64, "height": 64, "override_settings": {"sd_model_checkpoint": "tiny [0123456789]"}}
    answer = await (await model_client.post("/sdapi/v1/txt2img", json=body)).json()
    image = Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))).convert("RGB")
    assert image.tobytes() == a


async def test_openai_model_names_a_local_model_and_dall_e_means_the_default(model_client):
    async def made_with(model):
        resp = await model_client.post("/v1/images/generations", json={"prompt": "x", "model": model, "size": "64x64"})
        assert resp.status == 200, await resp.text()
        path = URL((await resp.json())["data"][0]["url"]).path
        meta = await (await model_client.get(path.replace("/images/", "/metadata/").replace(".png", ".json"))).json()
        return meta["model_id"]

    assert await made_with("dall-e-3") == "tiny"
    assert (await made_with("tiny-b")).endswith("tiny-b")
    resp = await model_client.post("/v1/images/generations", json={"prompt": "x", "model": "sdxl-turbo"})
    assert resp.status == 400 and "tiny-b" in (await resp.text())


async def test_refresh_finds_a_new_model(model_client, models_dir, tiny_model_dir):
    import shutil

    shutil.copytree(tiny_model_dir, models_dir / "late")
    try:
        assert "late" not in [m["name"] for m in (await (await model_client.get("/api/v1/models")).json())["models"]]
        resp = await model_client.post("/sdapi/v1/refresh-checkpoints")
        assert resp.status == 200
        assert "late" in [m["title"] for m in await (await model_client.get("/sdapi/v1/sd-models")).json()]
    finally:
        shutil.rmtree(models_dir / "late")
        await model_client.post("/api/v1/models/refresh")


async def test_a_ram_cache_keeps_both_loaded(make_client, model_settings):
    client = await make_client(model_settings.replace(model_ram_cache=1))
    engine = client.app[keys.ENGINE]
    default_pipe = engine.pipe
    b = await pixels(client, {**BODY, "model": "tiny-b"})
    b_pipe = engine.pipe
    a = await pixels(client, BODY)
    assert engine.pipe is default_pipe  # back from the cache, not loaded again
    models = {m["name"]: m["loaded"] for m in (await (await client.get("/api/v1/models")).json())["models"]}
    assert models["tiny"] == "cpu" and models["tiny-b"] == "cpu"
    assert await pixels(client, {**BODY, "model": "tiny-b"}) == b and engine.pipe is b_pipe
    assert await pixels(client, BODY) == a


async def test_without_a_ram_cache_only_the_running_model_stays(model_client):
    await pixels(model_client, {**BODY, "model": "tiny-b"})
    await pixels(model_client, BODY)
    models = {m["name"]: m["loaded"] for m in (await (await model_client.get("/api/v1/models")).json())["models"]}
    assert models == {"tiny": "cpu", "tiny-b": None, "corrupt": None, "just-a-vae": None}


async def test_a_switch_is_announced_measured_and_shown(model_client):
    from wsclient import events_until_terminal, next_event

    ws = await model_client.ws_connect("/api/v1/ws")
    await next_event(ws)
    job = await (await model_client.post("/api/v1/jobs", json={**BODY, "model": "tiny-b"})).json()
    events = await events_until_terminal(ws, job["id"])
    kinds = [e["type"] for e in events if e["id"] == job["id"]]
    assert kinds.index("started") < kinds.index("loading_model") < kinds.index("progress")
    assert [e["model"] for e in events if e["type"] == "loading_model"] == ["tiny-b"]
    assert model_client.app[keys.QUEUE].estimate.switch_seconds("tiny-b") > 0
    info = await (await model_client.get("/api/v1/info")).json()
    assert info["models"]["running"] == "tiny-b" and info["models"]["default"] == "tiny"
    assert info["models"]["available"] == ["tiny", "tiny-b"] and info["prompt_syntax"] == "a1111"
    # The same model again: no switch, no loading_model.
    job = await (await model_client.post("/api/v1/jobs", json={**BODY, "model": "tiny-b"})).json()
    assert "loading_model" not in [e["type"] for e in await events_until_terminal(ws, job["id"])]


async def test_the_eta_of_a_waiting_job_includes_its_model_switch(make_client, model_settings):
    import asyncio

    from doubles import GatedEngine

    client = await make_client(model_settings.replace(queue_size=3), engine_factory=GatedEngine)
    engine, queue = client.app[keys.ENGINE], client.app[keys.QUEUE]
    engine.gate.set()
    for model in ("tiny", "tiny-b", "tiny"):  # measures steps and both switches
        await pixels(client, {**BODY, "model": model})
    switch_b = queue.estimate.switch_seconds("tiny-b")
    assert switch_b > 0
    while engine.entered.acquire(blocking=False):
        pass
    engine.gate.clear()
    running = await (await client.post("/api/v1/jobs", json={**BODY, "model": "tiny"})).json()
    await asyncio.get_running_loop().run_in_executor(None, engine.entered.acquire)
    same = await (await client.post("/api/v1/jobs", json={**BODY, "model": "tiny"})).json()
    other = await (await client.post("/api/v1/jobs", json={**BODY, "model": "tiny-b"})).json()
    etas = {job.id: eta for job, eta in queue.schedule()}  # one pass: the same clock for both
    one_job = queue.estimate.job_seconds((await queue.find(other["id"])).params)
    assert etas[other["id"]] - etas[same["id"]] == pytest.approx(one_job + switch_b, rel=1e-6)
    shown = (await (await client.get(f"/api/v1/jobs/{other['id']}")).json())["eta_s"]
    assert shown >= etas[other["id"]] - 1  # what a client sees is that schedule, a moment later
    engine.gate.set()
    for job in (running, same, other):
        await (await queue.find(job["id"])).wait()


async def test_the_openapi_document_names_the_models_a_request_may_use(model_client):
    spec = await (await model_client.get("/openapi.json")).json()
    request = spec["components"]["schemas"]["GenerateRequest"]["properties"]
    assert request["model"]["enum"] == ["", "tiny", "tiny-b"]  # the broken ones are not offered
    assert request["loras"]["maxItems"] == 0  # no LORA_DIR here


async def test_a_single_file_checkpoint_in_models_dir_is_a_model(make_client, settings, tiny_model_dir, tmp_path):
    from sdxl_checkpoint import save_original_checkpoint

    from sdxl_server.pipeline.tiny import build_tiny_pipeline

    folder = tmp_path / "single-models"
    folder.mkdir()
    save_original_checkpoint(build_tiny_pipeline(seed=1), folder / "tiny-b-file.safetensors")
    build_tiny_pipeline(seed=1).save_pretrained(tmp_path / "tiny-b-folder")
    alone = await make_client(settings.replace(model_id=str(tmp_path / "tiny-b-folder")))
    _, expected = await generate_png(alone, BODY)
    await alone.close()

    client = await make_client(settings.replace(models_dir=folder, model_config=str(tiny_model_dir)))
    listing = {m["name"]: m for m in (await (await client.get("/api/v1/models")).json())["models"]}
    assert listing["tiny-b-file"]["kind"] == "single_file" and listing["tiny-b-file"]["broken"] is None
    _, image = await generate_png(client, {**BODY, "model": "tiny-b-file"})
    difference = max(abs(a - b) for a, b in zip(image.tobytes(), expected.tobytes()))
    assert difference <= 1  # the same weights; converting them may move a level, as in test_engine
    assert image.tobytes() != (await generate_png(client, BODY))[1].tobytes()  # not the default model


@pytest.mark.parametrize(("mode", "cache"), [
    ("ensemble", {"preload": False}),  # the refiner loads on first use, beside whichever model runs then
    ("image", {"model_ram_cache": 1}),  # a switch back restores tiny from RAM: nothing is loaded again
])
async def test_the_refiner_after_a_switch_shares_the_running_models_encoder_and_vae(
    make_client, model_settings, models_dir, mode, cache,
):
    """The refiner borrows the base's text encoder 2 and VAE: after a switch, the running model's
    (tiny-b's differ from tiny's), as on a server that started on that model."""
    settings = model_settings.replace(refiner_id="tiny", **cache)
    body = {**BODY, "refiner": mode, "steps": 4}
    alone = await make_client(settings.replace(model_id=str(models_dir / "tiny-b")))
    b_alone = await pixels(alone, body)
    await alone.close()

    client = await make_client(settings)
    a = await pixels(client, body)  # the refiner runs beside tiny
    assert await pixels(client, {**body, "model": "tiny-b"}) == b_alone
    assert await pixels(client, body) == a  # and back


async def test_a_switch_frees_the_previous_model_even_with_a_refiner_loaded(make_client, model_settings):
    """The refiner borrows the running model's text encoder 2 and VAE; a switch (no RAM cache)
    frees the previous model's, whether or not the next request asks for the refiner."""
    import gc
    import weakref

    client = await make_client(model_settings.replace(refiner_id="tiny", preload=False))
    await pixels(client, {**BODY, "refiner": "image", "steps": 4})
    engine = client.app[keys.ENGINE]
    first = [weakref.ref(module) for module in (engine.pipe.text_encoder_2, engine.pipe.vae)]
    await pixels(client, {**BODY, "model": "tiny-b"})
    gc.collect()
    assert [ref() for ref in first] == [None, None]


async def test_checkpoints_with_headers_of_another_shape_are_listed_broken(make_client, settings, tmp_path):
    """Valid JSON of an unexpected shape (a list __metadata__, a text shape, an empty part in
    model_index.json) is one broken model with the reason, never a 500 on the listing."""
    import json
    import struct

    folder = tmp_path / "odd-models"
    folder.mkdir()
    unet = "model.diffusion_model.conv_in.weight"
    for name, header in {"metadata_list": {"__metadata__": [1], unet: {"dtype": "F16", "shape": [4], "data_offsets": [0, 8]}},
                         "text_shape": {unet: {"dtype": "F16", "shape": ["4"], "data_offsets": [0, 8]}}}.items():
        raw = json.dumps(header).encode()
        (folder / f"{name}.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    (folder / "odd-folder").mkdir()
    (folder / "odd-folder" / "model_index.json").write_text(json.dumps({"unet": ["diffusers", "UNet2DConditionModel"], "vae": []}))
    client = await make_client(settings.replace(models_dir=folder))
    for method, path in (("GET", "/api/v1/models"), ("POST", "/api/v1/models/refresh"), ("GET", "/sdapi/v1/sd-models")):
        assert (await client.request(method, path)).status == 200, path
    models = {m["name"]: m for m in (await (await client.get("/api/v1/models")).json())["models"]}
    assert "not a safetensors file" in models["metadata_list"]["broken"] and "not a safetensors file" in models["text_shape"]["broken"]
    assert "unet" in models["odd-folder"]["broken"]
    resp = await client.post("/api/v1/generate", json={**BODY, "model": "text_shape"})
    assert resp.status == 422 and "not a safetensors file" in str((await resp.json())["fields"]["model"])
