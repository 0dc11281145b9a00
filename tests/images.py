"""Generate through the API and read the PNG back: what the prompt, LoRA and model tests compare."""

from __future__ import annotations

import io

from PIL import Image


async def generate_png(client, body: dict, path: str = "/api/v1/generate") -> tuple[dict, Image.Image]:
    resp = await client.post(path, json=body)
    assert resp.status == 200, await resp.text()
    data = await resp.json()
    image = await client.get(data["image_url"])
    assert image.status == 200
    return data, Image.open(io.BytesIO(await image.read()))


async def pixels(client, body: dict) -> bytes:
    return (await generate_png(client, body))[1].tobytes()
