"""Test images: inputs for the image-to-image tests (made in memory, sent as base64 or files), and
generating through the API to read the PNG back (what the prompt, LoRA and model tests compare)."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
from PIL import Image, ImageDraw


def encode(image: Image.Image, fmt: str = "PNG", **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def b64(data: bytes | Image.Image, fmt: str = "PNG") -> str:
    raw = data if isinstance(data, bytes) else encode(data, fmt)
    return base64.b64encode(raw).decode("ascii")


def edges(size: int = 64) -> Image.Image:
    """A picture with edges (a control image): a bright square and a stripe on a dark ground."""
    pixels = np.zeros((size, size, 3), np.uint8)
    pixels[size // 4: size // 2, size // 4: size // 2] = 230
    pixels[:, size * 3 // 4: size * 3 // 4 + 4] = (40, 200, 90)
    return Image.fromarray(pixels)


def picture(width: int = 96, height: int = 64) -> Image.Image:
    """A picture with structure (gradients and a square), so a repaint shows."""
    x = np.linspace(0, 255, width, dtype=np.uint8)[None, :].repeat(height, 0)
    y = np.linspace(255, 0, height, dtype=np.uint8)[:, None].repeat(width, 1)
    image = Image.fromarray(np.stack([x, y, np.full_like(x, 90)], axis=-1))
    ImageDraw.Draw(image).rectangle((width // 8, height // 8, width // 3, height // 3), fill=(250, 250, 20))
    return image


def right_half_mask(width: int = 96, height: int = 64) -> Image.Image:
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rectangle((width // 2, 0, width - 1, height - 1), fill=255)
    return mask


def png_array(data: bytes) -> np.ndarray:
    """An image file's RGB pixels as integers (differences do not wrap around)."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


async def generate_png(client, body: dict, path: str = "/api/v1/generate") -> tuple[dict, Image.Image]:
    resp = await client.post(path, json=body)
    assert resp.status == 200, await resp.text()
    data = await resp.json()
    image = await client.get(data["image_url"])
    assert image.status == 200
    return data, Image.open(io.BytesIO(await image.read()))


async def pixels(client, body: dict) -> bytes:
    return (await generate_png(client, body))[1].tobytes()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_file(width: int, height: int, *, frames: int = 1, text: dict[str, str] | None = None) -> bytes:
    """A black RGB PNG written chunk by chunk, so it may declare any size (its pixel data is one
    black row, whatever the size says) or be an APNG of ``frames`` frames (the same data each:
    built in milliseconds, yet a decoder composes every frame)."""
    rows = zlib.compress(b"\0" * (1 + width * 3) * (height if width * height <= 1 << 24 else 1))
    out = [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))]
    out += [_chunk(b"tEXt", f"{key}\0{value}".encode("latin-1")) for key, value in (text or {}).items()]
    if frames > 1:
        out.append(_chunk(b"acTL", struct.pack(">II", frames, 0)))
    sequence = 0
    for frame in range(frames):
        if frames > 1:
            out.append(_chunk(b"fcTL", struct.pack(">IIIIIHHBB", sequence, width, height, 0, 0, 1, 10, 0, 0)))
            sequence += 1
        if frame == 0:
            out.append(_chunk(b"IDAT", rows))
        else:
            out.append(_chunk(b"fdAT", struct.pack(">I", sequence) + rows))
            sequence += 1
    return b"".join([*out, _chunk(b"IEND", b"")])
