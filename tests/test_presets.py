"""Presets: a model's sidecar and a LoRA's A1111 card file fill the fields a request leaves out, in
the documented order (the model's, then each LoRA's), an explicit field always winning; the listings
show them; the metadata says which values came from where; and every recipe of
docs/models-and-memory.md runs the settings it names on the tiny model."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from lora_builder import lora_weights, save_diffusers_layout

from sdxl_server.api import keys
from sdxl_server.sampling import SAMPLERS

DOCS = Path(__file__).resolve().parents[1] / "docs" / "models-and-memory.md"
RECIPES = dict(re.findall(r"```json preset ([\w-]+)\n(.*?)\n```", DOCS.read_text(encoding="utf-8"), re.S))
SMALL = {"width": 64, "height": 64}


@pytest.fixture
async def served(make_client, settings, tiny_model_dir, tmp_path):
    """A server whose default model is a local folder (the tiny model), so it may carry a sidecar,
    with one LoRA in LORA_DIR."""
    folder = tmp_path / "fast"
    folder.symlink_to(tiny_model_dir, target_is_directory=True)
    loras = tmp_path / "loras"
    loras.mkdir()
    save_diffusers_layout(lora_weights(tiny_model_dir, seed=1), loras / "ink.safetensors")
    client = await make_client(settings.replace(model_id=str(folder), lora_dir=loras))
    return client, tmp_path / "fast.preset.json", loras / "ink.json"


async def refreshed(client, sidecar: Path, preset) -> dict:
    sidecar.write_text(preset if isinstance(preset, str) else json.dumps(preset), encoding="utf-8")
    listing = await (await client.post("/api/v1/models/refresh")).json()
    return listing["models"][0]


async def generate(client, **body) -> dict:
    resp = await client.post("/api/v1/generate", json={"prompt": "a fox", "seed": 3, **body})
    assert resp.status == 200, await resp.text()
    return (await resp.json())["meta"]


async def test_a_models_preset_fills_what_the_request_leaves_out(served):
    client, sidecar, _ = served
    preset = {"steps": 2, "guidance_scale": 1.0, "sampler": "euler", "schedule": "sgm_uniform", "clip_skip": 2}
    model = await refreshed(client, sidecar, preset)
    assert model["preset"] == preset and model["preset_problem"] is None
    meta = await generate(client)
    assert {name: meta[name] for name in preset} == preset
    assert meta["presets"] == dict.fromkeys(preset, "model")
    # An explicit field always wins, and is not recorded as a preset's.
    meta = await generate(client, steps=3, schedule="karras", clip_skip=1)
    assert (meta["steps"], meta["schedule"], meta["clip_skip"], meta["sampler"]) == (3, "karras", 1, "euler")
    assert meta["presets"] == {"guidance_scale": "model", "sampler": "model"}
    meta = await generate(client, scheduler="dpmpp_2m_karras")  # the older field gives sampler and schedule
    assert (meta["sampler"], meta["schedule"]) == ("dpmpp_2m", "karras") and "sampler" not in meta["presets"]
    job = await (await client.get(f"/api/v1/jobs/{meta['job_id']}")).json()
    assert job["params"]["presets"] == meta["presets"]


async def test_a_loras_card_file_is_listed_and_its_preset_applies_after_the_models(served):
    client, sidecar, card = served
    await refreshed(client, sidecar, {"steps": 2, "guidance_scale": 1.0, "sampler": "euler", "schedule": "sgm_uniform"})
    card.write_text(json.dumps({"description": "", "sd version": "SDXL", "activation text": "inked lines",
                                "preferred weight": 0.7, "notes": "from A1111's card editor",
                                "steps": 4, "sampler": "lcm"}), encoding="utf-8")
    listing = await (await client.post("/api/v1/loras/refresh")).json()
    ink = next(lora for lora in listing["loras"] if lora["name"] == "ink")
    assert (ink["activation_text"], ink["preferred_weight"], ink["notes"], ink["sd_version"]) == (
        "inked lines", 0.7, "from A1111's card editor", "SDXL")
    assert ink["preset"] == {"steps": 4, "sampler": "lcm"}
    meta = await generate(client, loras=[{"name": "ink", "weight": 0.5}])
    # The LoRA's steps and sampler override the model's; LCM cannot run the model's SGM Uniform
    # schedule, so that is dropped; the model's guidance stays.
    assert (meta["steps"], meta["sampler"], meta["schedule"], meta["guidance_scale"]) == (4, "lcm", "automatic", 1.0)
    assert meta["presets"] == {"steps": "lora:ink", "sampler": "lora:ink", "guidance_scale": "model"}
    assert meta["sampler_name"] == "LCM"


async def test_a_bad_sidecar_is_reported_and_ignored(served):
    client, sidecar, _ = served
    for bad, problem in (("{not json", "not JSON"), ({"steps": 0}, "steps must be from 1"),
                         ({"sampler": "lcm", "schedule": "karras"}, "does not run schedule"),
                         ({"sampler": "warp"}, "unknown sampler")):
        model = await refreshed(client, sidecar, bad)
        assert model["preset"] is None and problem in model["preset_problem"], bad
    meta = await generate(client)
    assert meta["steps"] == 3 and meta["presets"] == {}  # the server's defaults


async def test_a1111_requests_take_the_preset_for_what_they_leave_out(served):
    client, sidecar, _ = served
    await refreshed(client, sidecar, {"steps": 2, "sampler": "euler", "schedule": "sgm_uniform"})
    body = {"prompt": "a fox", "width": 64, "height": 64, "seed": 1}
    for extra, expected in (({}, (2, "Euler", "SGM Uniform")),
                            ({"steps": 3, "sampler_name": "DDIM", "scheduler": "Automatic"}, (3, "DDIM", "SGM Uniform")),
                            ({"scheduler": "Karras"}, (2, "Euler", "Karras"))):
        answer = await (await client.post("/sdapi/v1/txt2img", json={**body, **extra})).json()
        info = json.loads(answer["info"])
        assert (info["steps"], info["sampler_name"], info["extra_generation_params"].get("Schedule type")) == expected, extra


@pytest.mark.parametrize("name", sorted(RECIPES))
async def test_each_documented_recipe_runs_its_settings(served, name):
    client, sidecar, _ = served
    recipe = json.loads(RECIPES[name])
    model = await refreshed(client, sidecar, recipe)
    assert model["preset"] == recipe and model["preset_problem"] is None
    calls: list[tuple[float, int]] = []
    unet = client.app[keys.ENGINE].pipe.unet
    handle = unet.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append((float(kwargs.get("timestep", args[1] if len(args) > 1 else -1)),
                                                   (args[0] if args else kwargs["sample"]).shape[0])),
        with_kwargs=True)
    try:
        meta = await generate(client, **SMALL)  # explicit size: the tiny model's
    finally:
        handle.remove()
    settings = {k: v for k, v in recipe.items() if k not in SMALL}
    assert {k: meta[k] for k in settings} == settings
    assert meta["presets"] == dict.fromkeys(settings, "model")
    assert meta["sampler_name"] == SAMPLERS[recipe["sampler"]].label
    assert sum(rows for _, rows in calls) == recipe["steps"]  # no guidance: one UNet pass per step
    assert calls[0][0] == 999  # few-step schedules all start on the last training step
    if "width" in recipe:
        meta = await generate(client, steps=1)
        assert (meta["width"], meta["height"]) == (recipe["width"], recipe["height"]) and meta["presets"]["width"] == "model"


def test_the_docs_have_every_recipe_the_issue_names():
    assert {"lightning-2step", "lightning-4step", "lightning-8step", "turbo", "hyper-sd-8step", "hyper-sd-1step",
            "lcm-lora", "dmd2", "tcd"} <= set(RECIPES)
