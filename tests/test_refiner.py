"""The SDXL refiner on the tiny model and the tiny refiner: ensemble and image modes, one
continuous progress count, cancel in the refiner phase, where it comes from, and without one."""

from __future__ import annotations

import io
import json
import shutil

import pytest
from doubles import PausingEngine
from files import seed_layout
from images import b64, picture, pixels
from PIL import Image
from wsclient import events_until

from sdxl_server.jobs.states import TERMINAL_EVENTS as TERMINAL
from sdxl_server.pipeline.engine import Engine
from sdxl_server.pipeline.sources import resolve_refiner_source
from sdxl_server.pipeline.tiny import ensure_tiny_refiner


@pytest.fixture
def settings(settings):
    return settings.replace(refiner_id="tiny")


class TracingEngine(Engine):
    """A real engine that records which UNet ran each step and the progress it reported."""

    def __init__(self, settings):
        super().__init__(settings)
        self.unets: list[str] = []
        self.progress: list[tuple[int, int]] = []

    def generate(self, params, on_step, cancelled, **inputs):
        for name, pipe in (("base", self.pipe), ("refiner", self.refiner.ensure(self.pipe, self.options))):
            if not hasattr(pipe.unet, "_traced"):
                forward = pipe.unet.forward
                pipe.unet.forward = lambda *a, _name=name, _forward=forward, **k: (self.unets.append(_name), _forward(*a, **k))[1]
                pipe.unet._traced = True

        def traced(step, total, latents):
            self.progress.append((step, total))
            on_step(step, total, latents)

        return super().generate(params, traced, cancelled, **inputs)


async def _run(client, **body):
    resp = await client.post("/api/v1/generate", json={"prompt": "a lighthouse", "seed": 3, **body})
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def test_ensemble_runs_base_then_refiner_steps_with_one_continuous_count(make_client, settings):
    engines = []
    client = await make_client(settings, engine_factory=lambda s: engines.append(TracingEngine(s)) or engines[-1])
    data = await _run(client, steps=10, refiner="ensemble", refiner_switch_at=0.8)
    engine = engines[0]
    assert engine.unets == ["base"] * 8 + ["refiner"] * 2
    assert engine.progress == [(step, 10) for step in range(1, 11)]
    meta = data["meta"]
    assert (meta["refiner"], meta["refiner_switch_at"], meta["refiner_id"]) == ("ensemble", 0.8, "tiny")
    text = Image.open(io.BytesIO(await (await client.get(data["image_url"])).read())).info["parameters"]
    assert "Refiner: tiny" in text and "Refiner switch at: 0.8" in text
    job = await (await client.get(f"/api/v1/jobs/{data['id']}")).json()
    assert job["step"] == job["total_steps"] == 10


async def test_image_mode_refines_the_base_result_after_its_steps(make_client, settings):
    engines = []
    client = await make_client(settings, engine_factory=lambda s: engines.append(TracingEngine(s)) or engines[-1])
    await _run(client, steps=10, refiner="image", refiner_strength=0.3)
    assert engines[0].unets == ["base"] * 10 + ["refiner"] * 3
    assert engines[0].progress == [(step, 13) for step in range(1, 14)]


async def test_the_refiner_works_with_image_to_image(make_client, settings):
    engines = []
    client = await make_client(settings, engine_factory=lambda s: engines.append(TracingEngine(s)) or engines[-1])
    data = await _run(client, steps=10, strength=0.5, init_image=b64(picture(64, 64)), refiner="ensemble")
    assert engines[0].unets == ["base"] * 3 + ["refiner"] * 2  # 0.5 of 10 steps, split at 0.8 of the schedule
    assert data["meta"]["mode"] == "img2img"


async def test_cancel_in_the_refiner_phase_leaves_no_file(make_client, settings):
    client = await make_client(settings, engine_factory=lambda s: PausingEngine(s, pause_after=9))
    resp = await client.post("/api/v1/jobs", json={"prompt": "x", "steps": 10, "refiner": "ensemble"})
    job_id = (await resp.json())["id"]
    ws = await client.ws_connect(f"/api/v1/ws?job={job_id}")
    events = await events_until(ws, lambda e: e["type"] == "progress" and e["step"] == 9)  # the refiner's first
    assert events[-1]["total_steps"] == 10
    resp = await client.delete(f"/api/v1/jobs/{job_id}")
    assert resp.status == 200 and (await resp.json())["status"] == "cancelled"
    assert (await events_until(ws, lambda e: e["type"] in TERMINAL))[-1]["type"] == "cancelled"
    assert list((settings.output_dir / "images").iterdir()) == []


async def test_health_and_info_report_the_refiner_and_it_loads_on_first_use(make_client, settings):
    client = await make_client(settings.replace(preload=False))
    health = await (await client.get("/health")).json()
    assert health["refiner"]["id"] == "tiny" and health["refiner"]["state"] == "not_loaded"
    info = await (await client.get("/api/v1/info")).json()
    assert info["refiner"]["id"] == "tiny"
    resp = await client.post("/api/v1/generate", json={"prompt": "x", "steps": 2, "refiner": "image"})
    assert resp.status == 422 and list((await resp.json())["fields"]) == ["refiner_strength"]  # 2 x 0.3: no step
    resp = await client.post("/api/v1/generate", json={"prompt": "x", "steps": 1, "refiner": "ensemble"})
    assert resp.status == 422 and list((await resp.json())["fields"]) == ["refiner_switch_at"]
    await _run(client, steps=4, refiner="image", refiner_strength=0.5)
    health = await (await client.get("/health")).json()
    assert health["refiner"]["state"] == "ready" and health["refiner"]["loaded"]


async def test_asking_for_a_refiner_when_none_is_configured_says_how_to_configure_one(make_client, settings):
    client = await make_client(settings.replace(refiner_id=None))
    assert (await (await client.get("/health")).json())["refiner"] is None
    resp = await client.post("/api/v1/generate", json={"prompt": "x", "refiner": "ensemble"})
    assert resp.status == 422
    error = await resp.json()
    assert list(error["fields"]) == ["refiner"] and "REFINER_ID" in error["message"]
    resp = await client.post("/sdapi/v1/txt2img", json={"prompt": "x", "refiner_checkpoint": "sd_xl_refiner_1.0"})
    assert resp.status == 422 and list((await resp.json())["fields"]) == ["refiner_checkpoint"]


async def test_a1111_refiner_checkpoint_and_switch_at(client):
    resp = await client.post("/sdapi/v1/txt2img", json={
        "prompt": "x", "steps": 4, "width": 64, "height": 64, "refiner_checkpoint": "sd_xl_refiner_1.0", "refiner_switch_at": 0.5,
    })
    assert resp.status == 200, await resp.text()
    info = json.loads((await resp.json())["info"])
    assert "Refiner: tiny, Refiner switch at: 0.5" in info["infotexts"][0]


def test_the_seed_layout_finds_a_refiner_file_beside_the_base(settings, tmp_path):
    folder = seed_layout(tmp_path / "model")
    source = resolve_refiner_source(settings.replace(refiner_id=None, model_dir=folder))
    assert (source.kind, source.location, source.origin) == ("single_file", str(folder / "sd_xl_refiner_1.0.safetensors"), "MODEL_DIR")
    assert resolve_refiner_source(settings.replace(refiner_id=None, model_dir=tmp_path / "empty")) is None
    explicit = resolve_refiner_source(settings.replace(refiner_id="stabilityai/stable-diffusion-xl-refiner-1.0", model_dir=folder))
    assert (explicit.kind, explicit.origin) == ("hub", "REFINER_ID")


async def test_a_refiner_folder_in_the_local_model_folder_loads(make_client, settings, tiny_model_dir, tiny_cache, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    shutil.copytree(ensure_tiny_refiner(tiny_cache), folder / "sd_xl_refiner_1.0")
    client = await make_client(settings.replace(model_id=None, refiner_id=None, model_dir=folder))
    health = await (await client.get("/health")).json()
    assert health["refiner"]["origin"] == "MODEL_DIR" and health["refiner"]["location"] == str(folder / "sd_xl_refiner_1.0")
    data = await _run(client, steps=4, refiner="ensemble")
    assert data["meta"]["refiner_id"] == str(folder / "sd_xl_refiner_1.0")


@pytest.fixture(scope="module")
def seed_checkpoints(tiny_model_dir, tiny_cache, tmp_path_factory):
    """The seed's model folder with real files: the tiny base and the tiny refiner written as
    original-layout single files, named as Stability publishes them."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
    from sdxl_checkpoint import save_original_checkpoint, save_original_refiner

    folder = tmp_path_factory.mktemp("model")
    save_original_checkpoint(StableDiffusionXLPipeline.from_pretrained(tiny_model_dir), folder / "sd_xl_base_1.0.safetensors")
    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(ensure_tiny_refiner(tiny_cache))
    save_original_refiner(refiner, folder / "sd_xl_refiner_1.0.safetensors")
    return folder


async def test_the_seed_layout_with_a_refiner_file_loads_it_offline(make_client, settings, tiny_model_dir, tiny_cache, seed_checkpoints, tmp_path):
    body = {"steps": 6, "refiner": "ensemble", "refiner_switch_at": 0.5}
    reference = await make_client(settings)
    expected = await _run(reference, **body)
    expected_image = Image.open(io.BytesIO(await (await reference.get(expected["image_url"])).read()))
    await reference.close()

    # The refiner's configs alone (no weights), as one keeps a copy of the Hub repository's JSON files.
    configs = tmp_path / "refiner-configs"
    shutil.copytree(ensure_tiny_refiner(tiny_cache), configs, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    assert not list(configs.rglob("*.safetensors"))
    client = await make_client(settings.replace(
        model_id=None, refiner_id=None, model_dir=seed_checkpoints, model_config=str(tiny_model_dir), refiner_config=str(configs)))
    health = await (await client.get("/health")).json()
    refiner_file = str(seed_checkpoints / "sd_xl_refiner_1.0.safetensors")
    assert (health["refiner"]["source"], health["refiner"]["origin"], health["refiner"]["location"]) == ("single_file", "MODEL_DIR", refiner_file)
    data = await _run(client, **body)
    assert data["meta"]["refiner_id"] == refiner_file
    image = Image.open(io.BytesIO(await (await client.get(data["image_url"])).read()))
    # The same weights as the tiny base and refiner, read back from the files: the same picture.
    assert max(abs(a - b) for a, b in zip(image.tobytes(), expected_image.tobytes())) <= 1


async def test_a_refiner_file_without_its_configs_offline_says_to_set_refiner_config(make_client, settings, tiny_model_dir, seed_checkpoints):
    client = await make_client(settings.replace(refiner_id=str(seed_checkpoints / "sd_xl_refiner_1.0.safetensors")))
    resp = await client.post("/api/v1/generate", json={"prompt": "x", "steps": 4, "refiner": "ensemble"})
    assert resp.status == 503, await resp.text()
    assert "REFINER_CONFIG" in (await resp.json())["message"]
    health = await (await client.get("/health")).json()
    assert health["refiner"]["state"] == "failed" and "set REFINER_CONFIG to a local" in health["refiner"]["error"]


async def test_where_both_unets_do_not_fit_only_the_one_in_use_is_on_the_device(make_client, settings, monkeypatch):
    # A GPU too small for both (refiner_placement says "swapped"): the base's UNet leaves the
    # device while the refiner runs and comes back after. On this CPU the moves are recorded.
    from sdxl_server.pipeline.refiner import Refiner

    monkeypatch.setattr(Refiner, "_placement", lambda self, options: ("swapped", "a small GPU"))
    events: list[str] = []
    engines = []

    def factory(s):
        engine = TracingEngine(s)
        engines.append(engine)
        return engine

    client = await make_client(settings, engine_factory=factory)
    engine = engines[0]
    refiner = engine.refiner.ensure(engine.pipe, engine.options)
    for name, unet in (("base", engine.pipe.unet), ("refiner", refiner.unet)):
        def moved(*args, _name=name, _to=unet.to, **kwargs):
            events.append(f"{_name} to {args[0] if args else kwargs}")
            return _to(*args, **kwargs)
        monkeypatch.setattr(unet, "to", moved)
    await _run(client, steps=10, refiner="ensemble")
    assert engine.unets == ["base"] * 8 + ["refiner"] * 2
    assert events == ["base to cpu", f"refiner to {engine.runtime.device}", "refiner to cpu", f"base to {engine.runtime.device}"]
    health = await (await client.get("/health")).json()
    assert health["refiner"]["placement"] == {"unet": "swapped", "reason": "a small GPU"}


async def test_weight_syntax_means_the_same_to_the_refiner(make_client, settings):
    """The refiner gets its part of the base's prompt embeddings: ``(lighthouse:1.0)`` is the word
    with weight 1 in both phases, not parentheses and a number for the refiner to read."""
    client = await make_client(settings.replace(prompt_syntax="a1111"))
    body = {"steps": 6, "refiner": "image", "refiner_strength": 0.5, "negative_prompt": "fog"}
    plain, weighted = [await pixels(client, {"prompt": prompt, "seed": 3, **body})
                       for prompt in ("a lighthouse", "a (lighthouse:1.0)")]
    assert weighted == plain


@pytest.mark.parametrize("negative", ["fog", ""])
def test_the_refiners_embeddings_are_what_it_would_encode_itself(settings, negative):
    """For a plain prompt, the text encoder 2 part of the base's embeddings equals the refiner
    pipeline's own encoding (diffusers'), negative (given, or empty) and pooled included."""
    import torch

    from sdxl_server.pipeline.prompt_encoding import encode_prompts, refiner_prompts

    engine = Engine(settings)
    engine.load()
    refiner = engine.refiner.ensure(engine.pipe, engine.options)
    ours = refiner_prompts(encode_prompts(engine.pipe, "a lighthouse at dusk", negative, "a1111"), refiner)
    theirs = refiner.encode_prompt("a lighthouse at dusk", device=torch.device("cpu"), num_images_per_prompt=1,
                                   do_classifier_free_guidance=True, negative_prompt=negative or None)
    names = ("prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds")
    for name, expected in zip(names, theirs):
        assert torch.allclose(ours[name], expected, atol=1e-5), name


async def test_a_long_prompt_without_a_negative_runs_through_the_refiner(make_client, settings):
    """Two chunks of prompt and no negative: the refiner's empty negative is as long as the prompt
    (diffusers would encode it at the prompt's length, past what CLIP reads, and fail)."""
    client = await make_client(settings)
    for mode in ("ensemble", "image"):
        resp = await client.post("/api/v1/generate", json={
            "prompt": "a lighthouse BREAK at dusk", "negative_prompt": "", "steps": 4, "refiner": mode, "seed": 1})
        assert resp.status == 200, await resp.text()
