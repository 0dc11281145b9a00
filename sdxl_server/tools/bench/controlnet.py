"""The ``controlnet`` section: generation time per step with 0, 1 and 2 ControlNet units through
``POST /api/v1/generate`` at the bench's size (median of ``runs``), the ControlNet's load time
and, on CUDA, each case's peak GPU memory; then the time of ``POST /api/v1/preprocess`` for
``canny`` and each annotator preprocessor whose model is in ANNOTATOR_DIR (the first call, which
loads the model, and the median of the rest; the project's tiny annotators where there are none).

The ControlNet is made from the running model's own UNet (diffusers' ``ControlNetModel.from_unet``:
the shapes of an SDXL ControlNet for that model, full size on a GPU, tiny on the CPU smoke run),
saved into the bench's CONTROLNET_DIR and loaded by the server as a real one is."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from .client import Client
from .modes import peak_memory, reset_peak, steps_run
from .stats import percentile, summarize

NAME = "bench-controlnet"


def _save_controlnet(pipe: Any, folder: Path) -> float:
    """A ControlNet from ``pipe``'s UNet saved at ``folder``; the seconds it took."""
    from diffusers import ControlNetModel

    started = time.perf_counter()
    if not (folder / "config.json").is_file():
        ControlNetModel.from_unet(pipe.unet).save_pretrained(folder)
    return time.perf_counter() - started


def _control_image(width: int, height: int) -> str:
    image = Image.new("RGB", (width, height))
    ImageDraw.Draw(image).rectangle((width // 4, height // 4, width * 3 // 4, height * 3 // 4), outline=(255, 255, 255), width=3)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


async def section_controlnet(client: Client) -> dict[str, Any]:
    """0, 1 and 2 units timed as the module says."""
    opts, engine = client.opts, client.engine
    folder = engine.controlnet_files.root / NAME
    saved_s = await asyncio.wrap_future(client.server.run_in_worker(_save_controlnet, engine.pipe, folder))
    unit = {"model": NAME, "image": _control_image(opts.width, opts.height), "module": "none"}
    cases = {"0 units": [], "1 unit": [unit], "2 units": [unit, {**unit, "weight": 0.5}]}
    results: dict[str, Any] = {}
    for name, units in cases.items():
        body = opts.body(client.fresh_seed(), **({"controlnet": units} if units else {}))
        await client.generate(body)  # warm-up: loads the ControlNet once
        await reset_peak(client)
        seconds, steps = [], 0
        for _ in range(opts.runs):
            elapsed, data = await client.generate({**body, "seed": client.fresh_seed()})
            seconds.append(elapsed)
            steps = await steps_run(client, data["id"])
        peak, _ = peak_memory() if engine.runtime.on_cuda else (None, None)
        median = percentile(seconds, 50)
        results[name] = {"s": summarize(seconds), "steps_run": steps,
                         "ms_per_step": round(median / steps * 1000, 2) if steps else None, "peak_gpu_bytes": peak}
    return {
        "size": {"width": opts.width, "height": opts.height, "steps": opts.steps}, "runs": opts.runs,
        "device": engine.runtime.device, "made_s": round(saved_s, 3),
        "load_s": round(engine.controlnets.load_seconds.get(NAME, 0.0), 3), "cases": results,
        "preprocess": await _preprocess_times(client),
    }


async def _preprocess_times(client: Client) -> dict[str, Any]:
    """Each preprocessor's preview timed: its first call (the annotator's load) and the median of ``runs`` more."""
    opts, catalog = client.opts, client.engine.annotators.catalog
    tiny = not catalog.usable()
    if tiny:
        from ...pipeline.tiny_annotators import write_tiny_annotators

        await asyncio.to_thread(write_tiny_annotators, catalog.root)
    body = {"image": _control_image(opts.width, opts.height)}
    times: dict[str, Any] = {}
    for module in ["canny", *catalog.usable()]:
        seconds = []
        for _ in range(opts.runs + 1):
            started = time.perf_counter()
            async with client.session.post(f"{client.url}/api/v1/preprocess", json={**body, "module": module},
                                           headers=client.headers) as response:
                await response.read()
            seconds.append(time.perf_counter() - started)
        times[module] = {"first_s": round(seconds[0], 3), "s": summarize(seconds[1:])}
    return {"tiny_annotators": tiny, "device": client.engine.settings.annotator_device, "modules": times}


def controlnet_rows(result: dict[str, Any], seconds, gib) -> list[tuple[str, str]]:
    """The section's lines in the report (``seconds``, ``gib``: the report's formatters)."""
    size = result["size"]
    rows: list[tuple[str, str]] = [("", ""), (
        f"controlnet: {size['width']}x{size['height']}, {size['steps']} steps (median of {result['runs']}); "
        f"ControlNet loaded in {seconds(result['load_s'])}", "")]
    for name, case in result["cases"].items():
        gpu = f"; peak GPU {gib(case['peak_gpu_bytes'])}" if case["peak_gpu_bytes"] else ""
        rows.append((f"  {name}", f"{seconds(case['s']['median'])} ({case['ms_per_step']} ms/step){gpu}"))
    made = result.get("preprocess") or {}
    if made:
        which = "the tiny random-weights annotators" if made["tiny_annotators"] else "ANNOTATOR_DIR's annotators"
        rows.append((f"  preprocess at {size['width']}x{size['height']} ({which}, on {made['device']})", "first call / median"))
        rows += [(f"    {module}", f"{seconds(times['first_s'])} / {seconds(times['s']['median'])}")
                 for module, times in made["modules"].items()]
    return rows
