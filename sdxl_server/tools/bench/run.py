"""Running the sections and collecting the report."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import torch

from ... import package_version
from ...config import Settings
from .client import Client
from .admission import section_admission
from .coldstart import section_coldstart
from .controlnet import section_controlnet
from .hires import section_hires
from .fewstep import section_steps
from .modes import section_modes
from .options import BenchOptions, prepare_settings
from .sections import section_loop, section_memory, section_overhead, section_progress
from .speed import section_batch, section_png
from .storage import section_storage
from .server import InProcessServer
from .switching import section_switching
from .upscaling import section_upscale
from .timed import TimedEngine
from .webhooks import section_webhooks

log = logging.getLogger(__name__)
STANDALONE = {"coldstart": section_coldstart, "switching": section_switching, "admission": section_admission}

def environment_info(engine: Any) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "diffusers": package_version("diffusers"),
        "transformers": package_version("transformers"),
        "aiohttp": aiohttp.__version__,
        "device": engine.runtime.device,
        "dtype": engine.runtime.dtype,
        "model_id": engine.model_id,
        "model_source": engine.source.kind,
        "torch_threads": torch.get_num_threads(),
        "options": dict(engine.options),
        "compile": engine.compilation.describe(),
        "gpu": None,
    }
    if engine.runtime.on_cuda:
        index = torch.device(engine.runtime.device).index or 0
        props = torch.cuda.get_device_properties(index)
        info["gpu"] = {"name": props.name, "memory_total": props.total_memory, "cuda": torch.version.cuda}
    return info


async def run_server_sections(
    server: InProcessServer, opts: BenchOptions, sections: Sequence[str], on_section: Callable[[str, dict], None]
) -> None:
    """Run the in-process sections against a started server, reporting each as it ends."""
    runners = {
        "overhead": section_overhead, "loop": section_loop, "progress": section_progress, "memory": section_memory,
        "batch": section_batch, "png": section_png, "modes": section_modes, "storage": section_storage,
        "webhooks": section_webhooks, "controlnet": section_controlnet,
        "upscale": section_upscale, "hires": section_hires, "steps": section_steps,
    }
    connector = aiohttp.TCPConnector(limit=0)  # 100 websockets and the HTTP calls at once
    timeout = aiohttp.ClientTimeout(total=opts.timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        client = Client(server, session, opts)
        for name in sections:
            if name not in runners:
                continue
            started = time.perf_counter()
            try:
                result = await runners[name](client)
            except Exception as exc:  # noqa: BLE001 - one section's failure is reported, the others still run
                log.exception("section %s failed", name)
                result = {"error": f"{type(exc).__name__}: {exc}"}
            result["section_s"] = round(time.perf_counter() - started, 2)
            on_section(name, result)


def run_bench(settings: Settings, opts: BenchOptions, sections: Sequence[str], engine: Any = None) -> dict[str, Any]:
    """Run ``sections`` for ``settings``; return the report (also what ``--json`` writes)."""
    report: dict[str, Any] = {
        "bench": {"version": 1, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "sections": list(sections)},
        "params": opts.body(),
        "options": dataclasses.asdict(opts),
        "environment": None,
        "sections": {},
    }

    def done(name: str, result: dict) -> None:
        report["sections"][name] = result

    with tempfile.TemporaryDirectory(prefix="sdxl-bench-") as scratch:
        served = prepare_settings(settings, opts, Path(scratch) / "outputs")
        engine = engine or TimedEngine(served)
        in_process = [s for s in sections if s not in STANDALONE]
        if in_process:
            server = InProcessServer(served, engine).start()
            try:
                report["environment"] = environment_info(engine)
                asyncio.run(run_server_sections(server, opts, in_process, done))
            finally:
                server.stop()
        else:
            report["environment"] = environment_info(engine)
        if "coldstart" in sections and engine.source.kind == "tiny":  # built once here, so the child only loads it
            from ...pipeline.tiny import ensure_tiny_model

            ensure_tiny_model(served.tiny_cache)
        for name, section in STANDALONE.items():
            if name not in sections:
                continue
            started = time.perf_counter()
            try:
                result = section(served, opts)
            except Exception as exc:  # noqa: BLE001 - one section's failure is reported, the others still run
                log.exception("section %s failed", name)
                result = {"error": f"{type(exc).__name__}: {exc}"}
            result["section_s"] = round(time.perf_counter() - started, 2)
            done(name, result)
    report["sections"] = {name: report["sections"][name] for name in sections if name in report["sections"]}
    return report


