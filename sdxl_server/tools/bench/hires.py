"""The ``hires`` section: hires fix through ``POST /api/v1/generate`` from the bench's size at
``HIRES_SCALE`` with a latent upscaler, a built-in pixel one and (when the server has one) an
upscaler model: the whole job (median of ``runs``), its phases as the job's metadata times them
(first pass, upscale, second pass, decode), the steps of each pass, resident memory and, on CUDA,
the peak GPU memory and whether the decode was tiled by the memory check."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .client import Client
from .modes import GIB, peak_memory, reset_peak, steps_run, in_profiles
from .stats import percentile, rss_bytes, summarize

HIRES_SCALE = 2.0
DENOISE = 0.5


async def _upscalers(client: Client) -> list[str]:
    """A latent mode, Lanczos, and the first upscaler model the server lists (if any)."""
    chosen = ["Latent", "Lanczos"]
    async with client.session.get(f"{client.url}/api/v1/upscalers", headers=client.headers) as resp:
        listing = await resp.json()
    models = [u["name"] for u in listing.get("upscalers", []) if u.get("kind") == "model" and not u.get("broken")]
    return chosen + models[:1]


def _phases(meta: dict[str, Any]) -> dict[str, float]:
    timings = meta["timings"]
    upscale, second = timings.get("hires_upscale_s", 0.0), timings.get("hires_second_pass_s", 0.0)
    return {"first_pass_s": timings["inference_s"] - upscale - second, "upscale_s": upscale,
            "second_pass_s": second, "decode_s": timings["decode_s"]}


async def _case(client: Client, upscaler: str) -> dict[str, Any]:
    opts = client.opts
    body = opts.body(client.fresh_seed(), hires={"scale": HIRES_SCALE, "upscaler": upscaler, "denoise": DENOISE})
    await client.generate(body)  # warm-up: the image-to-image pipeline, the upscaler model
    await reset_peak(client)
    seconds, rss, phases, steps = [], [], [], 0
    for _ in range(opts.runs):
        elapsed, data = await client.generate({**body, "seed": client.fresh_seed()})
        seconds.append(elapsed)
        rss.append((rss_bytes() or 0) / 2**20)
        phases.append(_phases(data["meta"]))
        steps = await steps_run(client, data["id"])
    peak, reserved = peak_memory() if client.engine.runtime.on_cuda else (None, None)
    return {
        "s": summarize(seconds),
        "phases_s": {name: round(percentile([p[name] for p in phases], 50), 4) for name in phases[0]},
        "steps_run": steps, "second_pass_steps": int(opts.steps * DENOISE),
        "size": [data["meta"]["image_width"], data["meta"]["image_height"]],
        "rss_max_mb": round(max(rss), 1), "peak_gpu_bytes": peak, "peak_gpu_reserved_bytes": reserved,
    }


async def section_hires(client: Client) -> dict[str, Any]:
    """Each upscaler of :func:`_upscalers` timed as the module says."""
    opts = client.opts
    results = {upscaler: await _case(client, upscaler) for upscaler in await _upscalers(client)}
    return {
        "size": {"width": opts.width, "height": opts.height, "steps": opts.steps},
        "scale": HIRES_SCALE, "denoise": DENOISE, "runs": opts.runs, "device": client.engine.runtime.device,
        "upscalers": results, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def hires_rows(result: dict[str, Any], seconds, gib) -> list[tuple[str, str]]:
    """The section's lines in the report (``seconds``, ``gib``: the report's formatters)."""
    size = result["size"]
    rows: list[tuple[str, str]] = [("", ""), (
        f"hires: {size['width']}x{size['height']} x{result['scale']:g}, {size['steps']} steps, denoise "
        f"{result['denoise']} (median of {result['runs']})", "")]
    for name, case in result["upscalers"].items():
        phases = case["phases_s"]
        gpu = f"; peak GPU {gib(case['peak_gpu_bytes'])}" if case["peak_gpu_bytes"] else ""
        rows.append((f"  {name} -> {case['size'][0]}x{case['size'][1]}", (
            f"{seconds(case['s']['median'])}: first pass {seconds(phases['first_pass_s'])}, upscale "
            f"{seconds(phases['upscale_s'])}, second pass {seconds(phases['second_pass_s'])} "
            f"({case['second_pass_steps']} steps), decode {seconds(phases['decode_s'])}; "
            f"RSS max {case['rss_max_mb']:.1f} MB{gpu}")))
    return rows



PROFILE_UPSCALERS = ("Latent",)


def hires_profiles(base: Any, factory: Callable[[], Any], opts: Any, cuda: bool) -> dict[str, Any]:
    """Hires fix x2 (``Latent``) from the check's size in the default (high) and 8 GB profiles:
    time, phases and peak GPU memory (a 1024² first pass makes 2048², the decode tiled where the
    free memory is short). The GPU check's ``hires`` step."""
    import aiohttp

    async def measure(server: Any) -> dict[str, Any]:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=opts.timeout_s)) as session:
            client = Client(server, session, opts)
            return {name: await _case(client, name) for name in PROFILE_UPSCALERS}

    return in_profiles(base, factory, cuda, measure, max_output_pixels=4 * opts.width * opts.height)


def hires_profile_lines(section: dict[str, Any]) -> list[str]:
    """:func:`hires_profiles`' figures, a line per profile."""
    lines = []
    for profile, result in section.items():
        context = result.get("cuda_context_bytes") or 0
        for name, case in result.items():
            if not isinstance(case, dict):
                continue
            reserved = case.get("peak_gpu_reserved_bytes")
            peak = "-" if reserved is None else f"{reserved / GIB:.2f} GiB reserved ({(reserved + context) / GIB:.2f} with context)"
            phases = "  ".join(f"{key} {value:.3f}" for key, value in case["phases_s"].items())
            lines.append(f"{profile:<5} {name} -> {case['size'][0]}x{case['size'][1]}  {case['s']['median']:7.3f} s  "
                         f"{phases}  peak {peak}")
    return lines
