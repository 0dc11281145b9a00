"""The ``upscale`` section (beside hires fix's figures): ``POST /api/v1/upscale`` of an image of
the bench's size, per upscaler, timed end to end (median of ``runs``) with the worker's own
upscale time, the tiles, the output size and, on CUDA, the peak GPU memory. The upscalers are
``Lanczos`` and every usable model of the catalog (the tiny one with ``MODEL_ID=tiny``); on CUDA a
random-weights upscaler of RealESRGAN_x4plus's shape (ESRGAN, 23 RRDB blocks, 64 filters, 4x) is
written to a scratch folder and read through spandrel like a real file."""

from __future__ import annotations

import asyncio
import base64
import io
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image

from .client import Client
from .modes import peak_memory, reset_peak
from .options import BenchError
from .stats import percentile, summarize

ESRGAN_SHAPED = "esrgan-x4plus-shaped"
POLL_S = 0.01


def write_esrgan_x4_shaped(path: Path) -> Path:
    """A random-weights ESRGAN of RealESRGAN_x4plus's size (16.7 M parameters, 64 MB in float32)."""
    import torch
    from safetensors.torch import save_file

    from ...pipeline.upscaler_models import import_spandrel

    import_spandrel()
    from spandrel.architectures.ESRGAN import ESRGAN

    torch.manual_seed(0)
    model = ESRGAN(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=4)
    save_file({key: value.contiguous() for key, value in model.state_dict().items()}, str(path))
    return path


def _image_b64(width: int, height: int) -> str:
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


async def _upscale(client: Client, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
    """One upscale job, submitted and polled until it ends: (seconds, the finished job)."""
    started = time.perf_counter()
    async with client.session.post(f"{client.url}/api/v1/upscale", json=body, headers=client.headers) as resp:
        job = await resp.json()
        if resp.status != 202:
            raise BenchError(f"POST /api/v1/upscale answered {resp.status}: {job}")
    while job["status"] not in ("succeeded", "failed", "cancelled"):
        await asyncio.sleep(POLL_S)  # a bench's poll: its resolution is in the figure
        async with client.session.get(f"{client.url}/api/v1/jobs/{job['id']}", headers=client.headers) as resp:
            job = await resp.json()
    if job["status"] != "succeeded":
        raise BenchError(f"the upscale job {job['status']}: {job.get('error')}")
    return time.perf_counter() - started, job


def _upscalers(client: Client, scratch: Path) -> list[str]:
    catalog = client.engine.upscaler_catalog
    if client.engine.runtime.on_cuda:
        catalog.extra[ESRGAN_SHAPED] = write_esrgan_x4_shaped(scratch / f"{ESRGAN_SHAPED}.safetensors")
    models = [entry.name for entry in catalog.entries() if not entry.builtin and not entry.broken]
    return ["Lanczos", *models]


async def section_upscale(client: Client, scale: float = 4.0) -> dict[str, Any]:
    """Each upscaler at ``scale`` on an image of the bench's size."""
    opts = client.opts
    image = _image_b64(opts.width, opts.height)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-upscalers-") as scratch:
        for name in await asyncio.to_thread(_upscalers, client, Path(scratch)):
            body = {"image": image, "upscaler": name, "scale": scale}
            await _upscale(client, body)  # warm-up: reads the model's file once
            await reset_peak(client)
            seconds, worker, job = [], [], {}
            for _ in range(opts.runs):
                elapsed, job = await _upscale(client, body)
                seconds.append(elapsed)
                worker.append(job["meta"]["timings"]["inference_s"])
            peak, reserved = peak_memory() if client.engine.runtime.on_cuda else (None, None)
            results[name] = {
                "s": summarize(seconds), "upscale_s": percentile(worker, 50), "tiles": job["total_steps"],
                "output": f"{job['meta']['width']}x{job['meta']['height']}",
                "peak_gpu_bytes": peak, "peak_gpu_reserved_bytes": reserved,
            }
    settings = client.server.settings
    return {
        "input": f"{opts.width}x{opts.height}", "scale": scale, "runs": opts.runs, "tile": settings.upscale_tile,
        "overlap": settings.upscale_tile_overlap, "device": client.engine.runtime.device, "upscalers": results,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def upscale_rows(result: dict[str, Any], seconds, gib) -> list[tuple[str, str]]:
    """The section's lines in the report (``seconds``, ``gib``: the report's formatters)."""
    rows: list[tuple[str, str]] = [("", ""), (
        f"upscale: POST /api/v1/upscale of {result['input']} x{result['scale']:g}, {result['tile']} px tiles "
        f"(overlap {result['overlap']}), median of {result['runs']}", "")]
    for name, run in result["upscalers"].items():
        gpu = f"; peak GPU {gib(run['peak_gpu_bytes'])}" if run["peak_gpu_bytes"] else ""
        rows.append((f"  {name}", f"{seconds(run['s']['median'])} end to end, {seconds(run['upscale_s'])} upscaling; "
                                  f"{run['tiles']} tiles -> {run['output']}{gpu}"))
    return rows
