"""COMPILE: the UNet and VAE decoder compiled at load and warmed up before /health says ok; one
compiled graph serves other image sizes; the compile cache persists on disk."""

from __future__ import annotations

import io

import pytest
from PIL import Image

pytestmark = pytest.mark.slow(180)  # the first compile takes minutes on a small CPU


async def test_compiled_pipeline_generates_every_size_from_one_compile(make_client, settings, tmp_path):
    from torch._dynamo.utils import counters

    cache = tmp_path / "inductor"
    # 192 px: below ~150 px the CPU's convolution picks another kernel by size (a CPU-only
    # recompile of the VAE decoder that real sizes never meet).
    settings = settings.replace(compile="default", compile_cache=cache, default_width=192, default_height=192, default_steps=2)
    client = await make_client(settings)
    health = await (await client.get("/health")).json()
    assert health["status"] == "ok", health
    compiled = health["compile"]
    assert (compiled["mode"], compiled["state"], compiled["dynamic"]) == ("default", "ready", True)
    assert compiled["seconds"] > 0 and compiled["cache_dir"] == str(cache)
    assert any(cache.rglob("*")), "the compile cache is empty"
    graphs = counters["stats"]["unique_graphs"]

    sizes = []
    for width, height in ((192, 192), (256, 192), (192, 320)):
        resp = await client.post("/api/v1/generate", json={"prompt": "compiled", "width": width, "height": height})
        assert resp.status == 200, await resp.text()
        image = await client.get((await resp.json())["image_url"])
        sizes.append(Image.open(io.BytesIO(await image.read())).size)
    assert sizes == [(192, 192), (256, 192), (192, 320)]
    assert counters["stats"]["unique_graphs"] == graphs  # no size compiled anything again
