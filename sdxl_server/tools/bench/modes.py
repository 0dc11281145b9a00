"""The ``modes`` section: each generation mode through ``POST /api/v1/generate`` at the bench's
size — text to image, image to image, inpainting, and with a refiner configured the ensemble and
image refiners — timed (median of ``runs``), with the steps that really ran, seconds per step,
the refiner's load time, resident memory and, on CUDA, each mode's peak GPU memory.
:func:`refiner_section` runs base + refiner in the high and 8 GB profiles (the GPU check's
``refiner`` step)."""

from __future__ import annotations

import asyncio
import base64
import gc
import io
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from ...config import Settings
from .client import Client
from .options import BenchOptions
from .server import InProcessServer
from .stats import percentile, rss_bytes, summarize
from .timed import TimedEngine

log = logging.getLogger(__name__)
GIB = 1024**3

STRENGTH = 0.75


def _png_b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _inputs(width: int, height: int) -> tuple[str, str]:
    """A picture with structure and a mask of its right half."""
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    ImageDraw.Draw(image).ellipse((width // 8, height // 8, width // 2, height // 2), fill=(200, 60, 40))
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rectangle((width // 2, 0, width, height), fill=255)
    return _png_b64(image), _png_b64(mask)


def _cases(client: Client) -> dict[str, dict[str, Any]]:
    opts = client.opts
    image, mask = _inputs(opts.width, opts.height)
    cases: dict[str, dict[str, Any]] = {
        "txt2img": {},
        "img2img": {"init_image": image, "strength": STRENGTH},
        "inpaint": {"init_image": image, "mask": mask, "strength": STRENGTH},
        "inpaint (masked area)": {"init_image": image, "mask": mask, "strength": STRENGTH, "inpaint_area": "masked"},
    }
    if client.engine.refiner.source is not None and opts.steps >= 2:
        cases["refiner ensemble (0.8)"] = {"refiner": "ensemble", "refiner_switch_at": 0.8}
        cases["refiner image (0.3)"] = {"refiner": "image", "refiner_strength": max(0.3, 1.0 / opts.steps)}
        cases["img2img + refiner ensemble"] = {"init_image": image, "strength": STRENGTH, "refiner": "ensemble"}
    return cases


async def reset_peak(client: Client) -> None:
    if client.engine.runtime.on_cuda:
        device = torch.device(client.engine.runtime.device)
        await asyncio.wrap_future(client.server.run_in_worker(torch.cuda.reset_peak_memory_stats, device))


def peak_memory() -> tuple[int | None, int | None]:
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None, None
    return int(torch.cuda.max_memory_allocated()), int(torch.cuda.max_memory_reserved())


async def steps_run(client: Client, job_id: str) -> int:
    async with client.session.get(f"{client.url}/api/v1/jobs/{job_id}", headers=client.headers) as resp:
        return int((await resp.json())["step"])


async def section_modes(client: Client, only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Every mode (``only``: those named) timed as the module says."""
    opts = client.opts
    results: dict[str, Any] = {}
    for name, extra in _cases(client).items():
        if only is not None and name not in only:
            continue
        body = opts.body(client.fresh_seed(), **extra)
        await client.generate(body)  # warm-up: builds the mode's pipeline (and loads the refiner) once
        await reset_peak(client)
        seconds, rss, steps = [], [], 0
        for _ in range(opts.runs):
            elapsed, data = await client.generate({**body, "seed": client.fresh_seed()})
            seconds.append(elapsed)
            rss.append((rss_bytes() or 0) / 2**20)
            steps = await steps_run(client, data["id"])
        peak, reserved = peak_memory() if client.engine.runtime.on_cuda else (None, None)
        median = percentile(seconds, 50)
        results[name] = {
            "s": summarize(seconds),
            "steps_run": steps,
            "ms_per_step": round(median / steps * 1000, 2) if steps else None,
            "rss_max_mb": round(max(rss), 1),
            "peak_gpu_bytes": peak,
            "peak_gpu_reserved_bytes": reserved,
        }
    refiner = client.engine.refiner
    return {
        "size": {"width": opts.width, "height": opts.height, "steps": opts.steps},
        "runs": opts.runs,
        "device": client.engine.runtime.device,
        "refiner": None if refiner.source is None else {"id": refiner.source.model_id, "load_s": refiner.load_seconds},
        "modes": results,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def modes_rows(result: dict[str, Any], seconds, gib) -> list[tuple[str, str]]:
    """The section's lines in the report (``seconds``, ``gib``: the report's formatters)."""
    size, refiner = result["size"], result["refiner"]
    rows: list[tuple[str, str]] = [("", ""), (
        f"modes: POST /api/v1/generate at {size['width']}x{size['height']}, {size['steps']} steps "
        f"(median of {result['runs']})", "")]
    for name, mode in result["modes"].items():
        gpu = f"; peak GPU {gib(mode['peak_gpu_bytes'])}" if mode["peak_gpu_bytes"] else ""
        rows.append((f"  {name}", f"{seconds(mode['s']['median'])}, {mode['steps_run']} steps run "
                                   f"({mode['ms_per_step']} ms/step); RSS max {mode['rss_max_mb']:.1f} MB{gpu}"))
    if refiner is None:
        rows.append(("  refiner", "none configured (REFINER_ID): refiner modes not measured"))
    else:
        rows.append(("  refiner", f"{refiner['id']}, loaded in {seconds(refiner['load_s'])}"))
    return rows


def _free(cuda: bool) -> None:
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


REFINER_CASES = ("txt2img", "refiner ensemble (0.8)")


def refiner_section(base: Settings, factory: Callable[[], Any], opts: BenchOptions, cuda: bool, scratch: Path) -> dict[str, Any]:
    """The base with the refiner (ensemble at 0.8) against the base alone, in the default (high)
    and 8 GB profiles: time and peak GPU memory. On CUDA the full-size random refiner is saved to a
    folder and loaded with REFINER_ID, the path a real one takes; the CPU smoke run uses tiny."""
    import aiohttp

    refiner_id = "tiny"
    if cuda:
        from ...pipeline.fullsize import save_fullsize_refiner

        started = time.perf_counter()
        refiner_id = str(save_fullsize_refiner(scratch / "refiner", "cuda"))
        _free(cuda)
        log.info("refiner: saved the full-size random refiner in %.1fs", time.perf_counter() - started)

    async def modes(server: InProcessServer) -> dict[str, Any]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=opts.timeout_s)) as session:
            return await section_modes(Client(server, session, opts), only=REFINER_CASES)

    return in_profiles(base, factory, cuda, modes, refiner_id=refiner_id)


def in_profiles(base: Settings, factory: Callable[[], Any], cuda: bool, measure: Callable[[InProcessServer], Any],
                **changes: Any) -> dict[str, Any]:
    """``measure(server)`` (a coroutine's result) on a server of its own in the default (high) and
    8 GB profiles, each with ``changes`` to ``base``; on CUDA with the context's memory beside it."""
    results: dict[str, Any] = {}
    for profile in ("high", "8gb"):
        settings = base.replace(attention="sdpa", memory_profile=profile, **changes)
        engine = TimedEngine(settings, pipeline_factory=factory)
        server = InProcessServer(settings, engine).start()
        try:
            result = asyncio.run(measure(server))
            if cuda:  # the CUDA context and libraries, beside what torch reserved
                free, total = torch.cuda.mem_get_info()
                result["cuda_context_bytes"] = (total - free) - torch.cuda.memory_reserved()
            results[profile] = result
        finally:
            server.stop()
            del engine, server
            _free(cuda)
    return results


def refiner_lines(section: dict[str, Any]) -> list[str]:
    """:func:`refiner_section`'s figures, a line per profile and mode."""
    lines = []
    for profile, result in section.items():
        context = result.get("cuda_context_bytes") or 0
        for name, mode in result["modes"].items():
            reserved = mode.get("peak_gpu_reserved_bytes")
            peak = "-" if reserved is None else f"{reserved / GIB:.2f} GiB reserved ({(reserved + context) / GIB:.2f} with context)"
            lines.append(f"{profile:<5} {name:<24} {mode['s']['median']:7.3f} s  {mode['steps_run']} steps  peak {peak}")
    return lines
