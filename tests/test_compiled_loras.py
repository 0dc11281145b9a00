"""COMPILE with LoRAs and when compiling fails. The graphs are traced by dynamo with the "eager"
backend here (its guards and recompiles are the same as inductor's, without minutes of C++
codegen on a small CPU); tests/test_compile.py runs the real inductor compile."""

from __future__ import annotations

import os
import shutil
import time

import pytest
from images import pixels
from lora_builder import lora_weights, save_diffusers_layout, save_kohya_layout

from sdxl_server.pipeline.compiling import Compilation

BODY = {"prompt": "a lighthouse", "seed": 7, "width": 64, "height": 64, "steps": 2}


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory, tiny_model_dir):
    folder = tmp_path_factory.mktemp("loras")
    save_diffusers_layout(lora_weights(tiny_model_dir, seed=1), folder / "ink.safetensors")
    save_kohya_layout(lora_weights(tiny_model_dir, seed=2), folder / "film_grain.safetensors")
    return folder


@pytest.fixture
def traced_only(monkeypatch):
    monkeypatch.setattr(Compilation, "backend", "eager")


async def test_loras_under_compile_change_the_image_without_a_recompile(make_client, settings, lora_dir, traced_only, tmp_path):
    from torch._dynamo.utils import counters

    settings = settings.replace(lora_dir=lora_dir, max_loras=2, default_width=64, default_height=64, default_steps=2)
    eager = await make_client(settings)
    expected = {name: await pixels(eager, {**BODY, "loras": [{"name": name, "weight": 1.0}]}) for name in ("ink", "film_grain")}
    expected["none"] = await pixels(eager, BODY)
    await eager.close()

    client = await make_client(settings.replace(compile="default", compile_cache=tmp_path / "cache"))
    health = await (await client.get("/health")).json()
    assert health["compile"]["state"] == "ready", health["compile"]
    untouched = await pixels(client, BODY)
    graphs = counters["stats"]["unique_graphs"]

    made = {name: await pixels(client, {**BODY, "loras": [{"name": name, "weight": 1.0}]}) for name in ("ink", "film_grain")}
    both = await pixels(client, {**BODY, "loras": [{"name": "ink", "weight": 0.5}, {"name": "film_grain", "weight": 0.7}]})
    again = await pixels(client, BODY)
    assert counters["stats"]["unique_graphs"] == graphs  # LoRAs on, swapped, weighted and off: nothing compiled again

    # A LoRA file replaced on disk is fused anew, not served from before.
    shutil.copyfile(lora_dir / "ink.safetensors", lora_dir / "swapped.safetensors")
    assert await pixels(client, {**BODY, "loras": [{"name": "swapped", "weight": 1.0}]}) == made["ink"]
    shutil.copyfile(lora_dir / "film_grain.safetensors", lora_dir / "swapped.safetensors")
    later = time.time() + 10
    os.utime(lora_dir / "swapped.safetensors", (later, later))
    assert await pixels(client, {**BODY, "loras": [{"name": "swapped", "weight": 1.0}]}) == made["film_grain"]
    assert counters["stats"]["unique_graphs"] == graphs

    assert len({untouched, made["ink"], made["film_grain"], both}) == 4  # each set changes the image
    assert again == untouched  # the base weights came back exactly
    assert untouched == expected["none"]
    for name, image in made.items():  # fused in the weights, as the eager server's adapters would give
        assert _max_difference(image, expected[name]) <= 2, name


def _max_difference(a: bytes, b: bytes) -> int:
    return max(abs(p - q) for p, q in zip(a, b))


async def test_a_failed_compile_leaves_the_server_eager_and_serving(make_client, settings, monkeypatch, tmp_path):
    def broken(graph, example_inputs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(Compilation, "backend", staticmethod(broken))
    settings = settings.replace(default_width=64, default_height=64, default_steps=2)
    eager = await make_client(settings)
    expected = await pixels(eager, BODY)
    await eager.close()

    client = await make_client(settings.replace(compile="default", compile_cache=tmp_path / "cache"))
    health = await (await client.get("/health")).json()
    assert health["status"] == "ok" and health["model"]["loaded"]
    compiled = health["compile"]
    assert compiled["state"] == "failed" and "running eager" in compiled["error"] and "no C++ compiler found" in compiled["error"]
    assert await pixels(client, BODY) == expected  # eager again: the same image as a server that never compiled


async def test_a_fuse_that_fails_leaves_the_base_weights_for_the_next_job(make_client, settings, lora_dir, traced_only, monkeypatch, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    settings = settings.replace(lora_dir=lora_dir, default_width=64, default_height=64, default_steps=2,
                                compile="default", compile_cache=tmp_path / "cache")
    client = await make_client(settings)
    untouched = await pixels(client, BODY)
    fuse = StableDiffusionXLPipeline.fuse_lora

    def fuse_then_fail(self, *args, **kwargs):
        fuse(self, *args, **kwargs)  # the weights are changed, then something goes wrong
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(StableDiffusionXLPipeline, "fuse_lora", fuse_then_fail)
    resp = await client.post("/api/v1/generate", json={**BODY, "loras": [{"name": "ink", "weight": 1.0}]})
    assert resp.status == 500 and "illegal memory access" in (await resp.json())["message"]
    assert await pixels(client, BODY) == untouched
