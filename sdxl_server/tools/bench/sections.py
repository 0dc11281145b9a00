"""The in-process sections: overhead, loop, progress, memory."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import torch

from ...jobs.states import TERMINAL_EVENTS
from .client import Client
from .fewstep import fullsize_weights, tiny_fp8_difference
from .options import BenchError, params_from_body
from .stats import linear_fit, percentile, rss_bytes, summarize


async def section_overhead(client: Client) -> dict[str, Any]:
    opts = client.opts
    body = opts.body()
    params = params_from_body(body)
    # Warm-up, not counted: first-call costs on each path (allocator, kernels, torch.compile).
    warmup_direct, _ = await client.direct(params)
    warmup_server, _ = await client.generate(body)
    direct, server, pipeline, its, upcast = [], [], [], [], False
    for run in range(opts.runs):
        # ABBA order: neither path always runs first, so drift (heat, caches) cancels out.
        for kind in (("direct", "server") if run % 2 == 0 else ("server", "direct")):
            if kind == "direct":
                seconds, record = await client.direct(params)
                direct.append(seconds)
                if record.it_per_s() is not None:
                    its.append(record.it_per_s())
                upcast |= bool(record.info.get("vae_upcast"))
            else:
                seconds, data = await client.generate(body)
                server.append(seconds)
                timings = data["meta"]["timings"]
                pipeline.append((timings.get("inference_s") or 0.0) + (timings.get("decode_s") or 0.0))
    pairs = list(zip(server, direct))
    ratio = percentile(server, 50) / percentile(direct, 50)
    return {
        "params": {k: body[k] for k in ("width", "height", "steps", "guidance_scale", "scheduler")},
        "runs": opts.runs,
        "direct_s": summarize(direct),
        "server_s": summarize(server),
        "ratio": round(ratio, 4),
        "pair_ratio": summarize([s / d for s, d in pairs]),
        "overhead_ms": summarize([s - d for s, d in pairs], 1000, 2),
        "outside_pipeline_ms": summarize([s - p for s, p in zip(server, pipeline)], 1000, 2),
        "s_per_image": round(percentile(direct, 50), 4),
        "it_per_s": round(percentile(its, 50), 3) if its else None,
        "vae_upcast": upcast,
        "warmup_s": {"direct": round(warmup_direct, 3), "server": round(warmup_server, 3)},
    }


async def section_loop(client: Client) -> dict[str, Any]:
    opts = client.opts
    interval = opts.health_interval_ms / 1000
    idle = []
    for _ in range(opts.idle_samples):
        idle.append(await client.health())
        await asyncio.sleep(interval)
    busy: list[float] = []
    generation = []
    for _ in range(opts.loop_jobs):
        task = asyncio.ensure_future(client.generate(opts.body(client.fresh_seed())))
        while not task.done():
            busy.append(await client.health())
            await asyncio.sleep(interval)
        seconds, _ = await task
        generation.append(seconds)
    return {
        "interval_ms": opts.health_interval_ms,
        "jobs": opts.loop_jobs,
        "idle_ms": summarize(idle, 1000, 3),
        "busy_ms": summarize(busy, 1000, 3),
        "generation_s": summarize(generation),
    }


async def _collect(ws: aiohttp.ClientWebSocketResponse, job_id: asyncio.Future, timeout: float) -> list[tuple[float, dict]]:
    """Every event a client receives (with the time it got it) until its job's final event."""
    events: list[tuple[float, dict]] = []
    while True:
        msg = await ws.receive(timeout=timeout)
        received = time.perf_counter()
        if msg.type != aiohttp.WSMsgType.TEXT:
            raise BenchError(f"a websocket client got {msg.type.name} ({msg.data!r}) before its job ended")
        event = json.loads(msg.data)
        events.append((received, event))
        if event.get("type") in TERMINAL_EVENTS and event.get("id") == await job_id:
            return events


async def _health_flood(client: Client) -> int:
    """``GET /health`` back to back (with ``--health-flood``) until cancelled; how many were sent."""
    sent = 0
    try:
        while True:
            await client.health()
            sent += 1
    except asyncio.CancelledError:
        return sent


async def _progress_with(client: Client, subscribers: int) -> dict[str, Any]:
    opts = client.opts
    url = client.url.replace("http://", "ws://") + "/api/v1/ws" + ("?preview=1" if opts.previews else "")
    sockets = await asyncio.gather(
        *(client.session.ws_connect(url, headers=client.headers, autoping=True) for _ in range(subscribers))
    )
    try:
        for ws in sockets:
            first = await ws.receive_json(timeout=60)
            if first.get("type") != "snapshot":
                raise BenchError(f"a websocket's first event was {first.get('type')!r}, not snapshot")
        latencies: list[float] = []
        generation: list[float] = []
        received = expected = 0
        flood = asyncio.ensure_future(_health_flood(client)) if opts.health_flood and subscribers > 1 else None
        for _ in range(opts.progress_runs):
            seed = client.fresh_seed()
            job_id: asyncio.Future = asyncio.get_running_loop().create_future()
            collectors = [asyncio.ensure_future(_collect(ws, job_id, opts.timeout_s)) for ws in sockets]
            try:
                job = await client.submit(opts.body(seed))
            except BaseException:
                for task in collectors:
                    task.cancel()
                raise
            job_id.set_result(job["id"])
            per_client = await asyncio.gather(*collectors)
            record = client.engine.records[seed]
            generation.append(record.seconds)
            expected += subscribers * len(record.step_times)
            for events in per_client:
                for at, event in events:
                    if event.get("type") == "progress" and event.get("id") == job["id"]:
                        received += 1
                        latencies.append(at - record.step_times[event["step"] - 1])
                    if event.get("type") in ("failed", "cancelled") and event.get("id") == job["id"]:
                        raise BenchError(f"the job {event['type']}: {event.get('error')}")
    finally:
        health_calls = None
        if flood is not None:
            flood.cancel()
            health_calls = await flood
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return {
        "clients": subscribers,
        "previews": opts.previews,
        "health_calls": health_calls,
        "latency_ms": summarize(latencies, 1000, 3),
        "progress_events": {"received": received, "expected": expected},
        "generation_s": summarize(generation),
    }


async def section_progress(client: Client) -> dict[str, Any]:
    counts = sorted({1, max(1, client.opts.clients)})
    results = {str(n): await _progress_with(client, n) for n in counts}
    one, many = results[str(counts[0])], results[str(counts[-1])]
    slowdown = many["generation_s"]["median"] / one["generation_s"]["median"]
    return {
        "params": {k: client.opts.body()[k] for k in ("width", "height", "steps")},
        "runs": client.opts.progress_runs,
        "by_clients": results,
        "slowdown": round(slowdown, 4),
    }


async def section_memory(client: Client) -> dict[str, Any]:
    opts = client.opts
    small = opts.body(width=opts.memory_size, height=opts.memory_size, steps=opts.memory_steps)
    warmup = min(10, max(1, opts.memory_jobs // 10))
    for _ in range(warmup):
        await client.generate({**small, "seed": client.fresh_seed()})
    every = max(1, opts.memory_jobs // 30)
    samples: list[tuple[int, float]] = [(0, (rss_bytes() or 0) / 2**20)]
    started = time.perf_counter()
    for job in range(1, opts.memory_jobs + 1):
        await client.generate({**small, "seed": client.fresh_seed()})
        if job % every == 0 or job == opts.memory_jobs:
            samples.append((job, (rss_bytes() or 0) / 2**20))
    seconds = time.perf_counter() - started
    slope_mb, _ = linear_fit(samples)
    rss = [mb for _, mb in samples]

    # One generation at the benchmark size, directly: it/s, and the peak GPU memory on CUDA.
    engine = client.engine
    cuda = engine.runtime.on_cuda
    if cuda:
        device = torch.device(engine.runtime.device)
        await asyncio.wrap_future(client.server.run_in_worker(torch.cuda.reset_peak_memory_stats, device))
    seconds_big, record = await client.direct(params_from_body(opts.body(client.fresh_seed())))
    peak = int(torch.cuda.max_memory_allocated(device)) if cuda else None
    reserved = int(torch.cuda.max_memory_reserved(device)) if cuda else None
    return {
        "jobs": opts.memory_jobs,
        "job_params": {"width": opts.memory_size, "height": opts.memory_size, "steps": opts.memory_steps},
        "warmup_jobs": warmup,
        "jobs_per_s": round(opts.memory_jobs / seconds, 2),
        "rss_mb": {"start": round(rss[0], 1), "end": round(rss[-1], 1), "max": round(max(rss), 1)},
        "rss_growth_mb": round(rss[-1] - rss[0], 2),
        "growth_kb_per_job": round(slope_mb * 1024, 3),
        "samples": [[job, round(mb, 2)] for job, mb in samples],
        "device": engine.runtime.device,
        "peak_gpu_bytes": peak,
        "peak_gpu_reserved_bytes": reserved,
        "it_per_s": None if record.it_per_s() is None else round(record.it_per_s(), 3),
        "s_per_image": round(seconds_big, 4),
        "size": {"width": opts.width, "height": opts.height, "steps": opts.steps},
        **await _fp8_figures(client),
    }


async def _fp8_figures(client: Client) -> dict[str, Any]:
    """Float8 storage: the tiny model's image difference (MODEL_ID=tiny) and, with
    ``--memory-fullsize``, the full-size random UNet's and text encoder 2's resident sizes."""
    figures: dict[str, Any] = {}
    engine = client.engine
    if engine.source.kind == "tiny":
        from ...pipeline.tiny import ensure_tiny_model

        folder = str(ensure_tiny_model(engine.settings.tiny_cache))
        figures["fp8_tiny"] = await asyncio.to_thread(tiny_fp8_difference, folder)
    if client.opts.memory_fullsize:
        figures["fp8_fullsize"] = await asyncio.to_thread(fullsize_weights, torch.float16)
    return figures

