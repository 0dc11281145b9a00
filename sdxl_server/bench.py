"""``python -m sdxl_server.bench``: what the server costs on top of the pipeline, measured.

It loads the model the server would load (``MODEL_ID`` and every other setting from the
environment and the server's own flags), serves it with the real application on a loopback port
(aiohttp's ``AppRunner`` on its own thread and event loop, in this process), and measures, as
client and server see them:

``overhead``
    ``POST /api/v1/generate`` end to end versus ``Engine.generate`` called directly on the same
    engine and worker thread with the same parameters; interleaved runs, median, IQR, min/max
    and the ratio. The server's extra work is HTTP, validation, the queue, the progress events
    and writing the PNG and its metadata.
``loop``
    ``GET /health`` latency (median, p99) while idle and while a generation runs: how well the
    event loop stays responsive while the worker thread computes.
``progress``
    Time from the step callback (a timestamp taken on the worker thread just before the
    server's ``on_step`` runs) to a websocket client receiving that step's ``progress`` event,
    with 1 and with ``--clients`` subscribers, and how much slower generation gets with them.
``memory``
    Resident memory of this process over ``--memory-jobs`` small generations through the
    server, growth per job (least-squares slope), and on CUDA the peak GPU memory of one
    generation at the benchmark size; it/s at that size everywhere.
``coldstart``
    A fresh Python process, timed from its start: interpreter, imports (torch, diffusers and
    the server's modules), model load, first and second generation.

Prints a table; ``--json PATH`` writes every figure. Numbers are for this machine and model:
with ``MODEL_ID=tiny`` on a CPU the pipeline is tiny, so the server's fixed costs weigh far more
than they do next to real SDXL on a GPU.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import dataclasses
import json
import logging
import math
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import torch
from aiohttp import web

from . import keys
from .app import create_app
from .config import ConfigError, Settings, add_arguments, load_settings, settings_fields
from .engine import Engine
from .params import GenerationParams
from .security import RedactingAccessLogger

log = logging.getLogger(__name__)

SECTIONS = ("overhead", "loop", "progress", "memory", "coldstart")
TERMINAL = ("completed", "failed", "cancelled")
PROMPT = "a lighthouse on a cliff at dusk, waves, dramatic sky, highly detailed"
NEGATIVE = "blurry, low quality"


class BenchError(RuntimeError):
    """A section could not be measured (the server answered an error, a client was closed...)."""


# --------------------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(values: Sequence[float], scale: float = 1.0, digits: int = 4) -> dict[str, Any]:
    """n, median, mean, min, max, quartiles and p99 of ``values`` times ``scale``."""
    scaled = [v * scale for v in values]
    if not scaled:
        return {"n": 0, "median": None, "mean": None, "min": None, "max": None, "q1": None, "q3": None, "p99": None}

    def r(x: float) -> float:
        return round(x, digits)

    return {
        "n": len(scaled),
        "median": r(percentile(scaled, 50)),
        "mean": r(sum(scaled) / len(scaled)),
        "min": r(min(scaled)),
        "max": r(max(scaled)),
        "q1": r(percentile(scaled, 25)),
        "q3": r(percentile(scaled, 75)),
        "p99": r(percentile(scaled, 99)),
    }


def linear_fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares ``(slope, intercept)`` of ``y = slope * x + intercept``."""
    n = len(points)
    if n < 2:
        return 0.0, points[0][1] if points else 0.0
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0, mean_y
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    return slope, mean_y - slope * mean_x


def rss_bytes() -> int | None:
    """This process's resident memory now (Linux /proc; psutil elsewhere, if installed)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        pass
    try:
        import psutil
    except ImportError:
        return None
    return int(psutil.Process().memory_info().rss)


# --------------------------------------------------------------------------- the timed engine


@dataclass
class GenerationRecord:
    """One ``generate`` call as the worker thread saw it (``time.perf_counter()`` seconds)."""

    seed: int
    started: float = 0.0
    finished: float = 0.0
    step_times: list[float] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return self.finished - self.started

    def it_per_s(self) -> float | None:
        """Denoising steps per second between the first and the last step (the steady rate, as
        diffusers' progress bar shows it); None with fewer than two steps."""
        if len(self.step_times) < 2 or self.step_times[-1] <= self.step_times[0]:
            return None
        return (len(self.step_times) - 1) / (self.step_times[-1] - self.step_times[0])


class TimedEngine(Engine):
    """The server's :class:`~sdxl_server.engine.Engine`, plus timestamps.

    Every step is stamped on the worker thread just before the server's ``on_step`` runs (on
    CUDA after a ``torch.cuda.synchronize()``, so a step's time is when its kernels finished,
    not when they were queued); each generation's start and end too. Records are kept by seed.
    ``pipeline_factory`` replaces loading (a pipeline already built in memory, e.g. the
    full-size random model) and ``compile_mode`` wraps the UNet in ``torch.compile``; the
    server's memory options are applied to either as usual.
    """

    def __init__(
        self,
        settings: Settings,
        runtime=None,
        *,
        pipeline_factory: Callable[[], Any] | None = None,
        compile_mode: str | None = None,
        sync_steps: bool | None = None,
    ) -> None:
        super().__init__(settings, runtime)
        self.pipeline_factory = pipeline_factory
        self.compile_mode = compile_mode
        self.sync_steps = self.runtime.on_cuda if sync_steps is None else sync_steps
        self.records: dict[int, GenerationRecord] = {}
        self.last: GenerationRecord | None = None
        self.original_unet: Any = None

    def _load_pipeline(self):
        if self.pipeline_factory is not None:
            return self.pipeline_factory()
        return super()._load_pipeline()

    def _apply_options(self, pipe) -> None:
        super()._apply_options(pipe)
        if self.compile_mode:
            self.original_unet = pipe.unet
            pipe.unet = torch.compile(pipe.unet, mode=None if self.compile_mode == "default" else self.compile_mode)
            self.options["compile"] = self.compile_mode

    def generate(self, params: GenerationParams, on_step, cancelled):
        record = GenerationRecord(seed=params.seed)
        self.records[params.seed] = record
        device = torch.device(self.runtime.device)
        sync = self.sync_steps and self.runtime.on_cuda

        def timed(step: int, total: int, latents: Any) -> None:
            if sync:
                torch.cuda.synchronize(device)
            record.step_times.append(time.perf_counter())
            on_step(step, total, latents)

        record.started = time.perf_counter()
        try:
            generation = super().generate(params, timed, cancelled)
        finally:
            record.finished = time.perf_counter()
            self.last = record
        record.info = dict(generation.info)
        return generation


# --------------------------------------------------------------------------- the in-process server


class InProcessServer:
    """The real application on ``127.0.0.1`` (a free port), on its own thread and event loop.

    Clients (this module's coroutines) run on the caller's loop, so a client's work never
    queues behind the server's on one loop; the worker thread is the app's own executor.
    """

    def __init__(self, settings: Settings, engine: Any) -> None:
        self.settings = settings
        self.engine = engine
        self.app: web.Application | None = None
        self.url = ""
        self.loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="bench-server", daemon=True)

    def start(self) -> InProcessServer:
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join()
            raise BenchError(f"the server did not start: {self._error}") from self._error
        if self.engine.state != "ready":
            self.stop()
            raise BenchError(f"the model did not load: {self.engine.error}")
        return self

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        try:
            self.loop.run_until_complete(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
        finally:
            self._started.set()
            self.loop.close()

    async def _serve(self) -> None:
        self.app = create_app(self.settings, engine_factory=lambda settings: self.engine)
        runner = web.AppRunner(self.app, access_log_class=RedactingAccessLogger, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = runner.addresses[0][1]
            self.url = f"http://127.0.0.1:{port}"
            await self.app[keys.QUEUE].ready.wait()  # the preload has finished, loaded or failed
            self._stop = asyncio.Event()
            self._started.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def run_in_worker(self, fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
        """Run ``fn`` on the server's worker thread (the one that owns the pipeline)."""
        assert self.app is not None
        return self.app[keys.EXECUTOR].submit(fn, *args)

    def stop(self) -> None:
        if self.loop is not None and self._stop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()


# --------------------------------------------------------------------------- options


@dataclass
class BenchOptions:
    width: int
    height: int
    steps: int
    guidance_scale: float
    prompt: str = PROMPT
    negative_prompt: str = NEGATIVE
    scheduler: str = "default"
    seed: int = 1234
    runs: int = 5
    loop_jobs: int = 2
    health_interval_ms: float = 10.0
    idle_samples: int = 100
    clients: int = 100
    progress_runs: int = 3
    memory_jobs: int = 300
    memory_size: int = 64
    memory_steps: int = 1
    coldstart_runs: int = 1
    timeout_s: float = 1800.0

    def body(self, seed: int | None = None, **changes: Any) -> dict[str, Any]:
        body = {
            "prompt": self.prompt, "negative_prompt": self.negative_prompt, "width": self.width,
            "height": self.height, "steps": self.steps, "guidance_scale": self.guidance_scale,
            "seed": self.seed if seed is None else seed, "scheduler": self.scheduler,
        }
        body.update(changes)
        return body


def params_from_body(body: dict[str, Any]) -> GenerationParams:
    """The :class:`GenerationParams` the server makes of ``body`` (only the fields it knows)."""
    names = {f.name for f in dataclasses.fields(GenerationParams)}
    return GenerationParams(**{k: v for k, v in body.items() if k in names})


def prepare_settings(settings: Settings, opts: BenchOptions, output_dir: Path) -> Settings:
    """The settings the bench serves with: loopback, a scratch output folder, limits that allow
    the benchmark's sizes, the model loaded at start."""
    return settings.replace(
        host="127.0.0.1",
        output_dir=output_dir,
        preload=True,
        max_width=max(settings.max_width, opts.width, opts.memory_size),
        max_height=max(settings.max_height, opts.height, opts.memory_size),
        max_steps=max(settings.max_steps, opts.steps, opts.memory_steps),
        queue_size=max(settings.queue_size, 2),
    )


def settings_environment(settings: Settings) -> dict[str, str]:
    """Every setting as its environment variable, so a child process loads the same ones."""
    env: dict[str, str] = {}
    for f in settings_fields():
        value = getattr(settings, f.name)
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, tuple):
            text = ",".join(value)
        else:
            text = str(value)
        env[f.metadata["env"]] = text
    return env


# --------------------------------------------------------------------------- clients


class Client:
    """What the sections share: the server, its engine, one HTTP session and the options."""

    def __init__(self, server: InProcessServer, session: aiohttp.ClientSession, opts: BenchOptions) -> None:
        self.server = server
        self.engine = server.engine
        self.session = session
        self.opts = opts
        self.url = server.url
        key = server.settings.api_key
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._seed = opts.seed + 1

    def fresh_seed(self) -> int:
        self._seed += 1
        return self._seed

    async def direct(self, params: GenerationParams) -> tuple[float, GenerationRecord]:
        """``Engine.generate`` on the worker thread, timed there."""

        def call() -> float:
            started = time.perf_counter()
            self.engine.generate(params, lambda step, total, latents: None, lambda: False)
            return time.perf_counter() - started

        seconds = await asyncio.wrap_future(self.server.run_in_worker(call))
        return seconds, self.engine.records[params.seed]

    async def generate(self, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """``POST /api/v1/generate``, timed end to end."""
        started = time.perf_counter()
        async with self.session.post(f"{self.url}/api/v1/generate", json=body, headers=self.headers) as resp:
            data = await resp.json()
            if resp.status != 200:
                raise BenchError(f"POST /api/v1/generate answered {resp.status}: {data}")
        return time.perf_counter() - started, data

    async def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        async with self.session.post(f"{self.url}/api/v1/jobs", json=body, headers=self.headers) as resp:
            data = await resp.json()
            if resp.status != 202:
                raise BenchError(f"POST /api/v1/jobs answered {resp.status}: {data}")
        return data

    async def health(self) -> float:
        started = time.perf_counter()
        async with self.session.get(f"{self.url}/health", headers=self.headers) as resp:
            await resp.read()
            if resp.status != 200:
                raise BenchError(f"GET /health answered {resp.status}")
        return time.perf_counter() - started


# --------------------------------------------------------------------------- sections


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
        if event.get("type") in TERMINAL and event.get("id") == await job_id:
            return events


async def _progress_with(client: Client, subscribers: int) -> dict[str, Any]:
    opts = client.opts
    url = client.url.replace("http://", "ws://") + "/api/v1/ws"
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
        await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return {
        "clients": subscribers,
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
    }


# The child of a cold start: timestamps (time.perf_counter(), CLOCK_MONOTONIC on Linux, so
# comparable with the parent's) at each phase, printed as one JSON line.
COLDSTART_CHILD = r"""
import time
t_start = time.perf_counter()
import json, os, sys
import torch
import diffusers
from sdxl_server.app import create_app
from sdxl_server.config import load_settings
from sdxl_server.engine import Engine
from sdxl_server.params import GenerationParams
t_imported = time.perf_counter()
engine = Engine(load_settings(os.environ))
engine.load()
if engine.runtime.on_cuda:
    torch.cuda.synchronize()
t_loaded = time.perf_counter()
params = GenerationParams(**json.loads(sys.argv[1]))
engine.generate(params, lambda *a: None, lambda: False)
t_first = time.perf_counter()
engine.generate(params, lambda *a: None, lambda: False)
t_second = time.perf_counter()
print("BENCH_COLDSTART " + json.dumps({
    "start": t_start, "imported": t_imported, "loaded": t_loaded, "first": t_first, "second": t_second,
    "model_load_s": engine.load_seconds, "device": engine.runtime.device,
}), flush=True)
"""


def coldstart_once(settings: Settings, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Start a fresh interpreter that loads the model and generates twice; split its time."""
    names = {f.name for f in dataclasses.fields(GenerationParams)}
    params = {k: v for k, v in body.items() if k in names}
    package_root = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, **settings_environment(settings)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    spawned = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", COLDSTART_CHILD, json.dumps(params)], env=env, capture_output=True, text=True,
        timeout=timeout,
    )
    ended = time.perf_counter()
    line = next((l for l in done.stdout.splitlines() if l.startswith("BENCH_COLDSTART ")), None)
    if done.returncode != 0 or line is None:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise BenchError(f"the cold-start process failed (exit {done.returncode}): {' | '.join(tail)}")
    t = json.loads(line.split(" ", 1)[1])
    return {
        "interpreter_s": round(t["start"] - spawned, 4),
        "imports_s": round(t["imported"] - t["start"], 4),
        "model_load_s": round(t["loaded"] - t["imported"], 4),
        "first_generation_s": round(t["first"] - t["loaded"], 4),
        "second_generation_s": round(t["second"] - t["first"], 4),
        "ready_s": round(t["loaded"] - spawned, 4),
        "first_image_s": round(t["first"] - spawned, 4),
        "process_s": round(ended - spawned, 4),
        "device": t["device"],
    }


def section_coldstart(settings: Settings, opts: BenchOptions) -> dict[str, Any]:
    body = opts.body()
    runs = [coldstart_once(settings, body, opts.timeout_s) for _ in range(max(1, opts.coldstart_runs))]
    keys_ = [k for k in runs[0] if k.endswith("_s")]
    return {
        "runs": len(runs),
        "params": {k: body[k] for k in ("width", "height", "steps")},
        **{k: round(percentile([r[k] for r in runs], 50), 4) for k in keys_},
        "each": runs,
    }


# --------------------------------------------------------------------------- running it


def environment_info(engine: Any) -> dict[str, Any]:
    from .engine import _version

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "diffusers": _version("diffusers"),
        "transformers": _version("transformers"),
        "aiohttp": aiohttp.__version__,
        "device": engine.runtime.device,
        "dtype": engine.runtime.dtype,
        "model_id": engine.model_id,
        "model_source": engine.source.kind,
        "torch_threads": torch.get_num_threads(),
        "options": dict(engine.options),
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
    runners = {"overhead": section_overhead, "loop": section_loop, "progress": section_progress, "memory": section_memory}
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
        in_process = [s for s in sections if s != "coldstart"]
        if in_process:
            server = InProcessServer(served, engine).start()
            try:
                report["environment"] = environment_info(engine)
                asyncio.run(run_server_sections(server, opts, in_process, done))
            finally:
                server.stop()
        else:
            report["environment"] = environment_info(engine)
        if "coldstart" in sections:
            if engine.source.kind == "tiny":  # built once here, so the child only loads it
                from .tiny import ensure_tiny_model

                ensure_tiny_model(served.tiny_cache)
            started = time.perf_counter()
            try:
                result = section_coldstart(served, opts)
            except Exception as exc:  # noqa: BLE001
                log.exception("section coldstart failed")
                result = {"error": f"{type(exc).__name__}: {exc}"}
            result["section_s"] = round(time.perf_counter() - started, 2)
            done("coldstart", result)
    report["sections"] = {name: report["sections"][name] for name in sections if name in report["sections"]}
    return report


# --------------------------------------------------------------------------- the table


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} ms"


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def _spread(summary: dict[str, Any], fmt: Callable[[float | None], str]) -> str:
    if not summary.get("n"):
        return "no samples"
    return (f"median {fmt(summary['median'])}  IQR {fmt(summary['q1'])}-{fmt(summary['q3'])}  "
            f"min {fmt(summary['min'])}  max {fmt(summary['max'])}  (n={summary['n']})")


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**30:.2f} GiB"


def format_report(report: dict[str, Any]) -> str:
    """The report as a plain-text table."""
    env = report.get("environment") or {}
    p = report["params"]
    lines = [
        f"sdxl_server bench: model {env.get('model_id')} ({env.get('model_source')}) on "
        f"{env.get('device')}/{env.get('dtype')}"
        + (f" [{env['gpu']['name']}]" if env.get("gpu") else f", {env.get('torch_threads')} torch threads")
        + f"; torch {env.get('torch')}, diffusers {env.get('diffusers')}",
        f"size {p['width']}x{p['height']}, {p['steps']} steps, guidance {p['guidance_scale']}, "
        f"scheduler {p['scheduler']}; attention {env.get('options', {}).get('attention')}",
    ]
    rows: list[tuple[str, str]] = []

    def section(title: str) -> None:
        rows.append(("", ""))
        rows.append((title, ""))

    for name, result in report["sections"].items():
        if "error" in result:
            section(name)
            rows.append(("  FAILED", result["error"]))
            continue
        if name == "overhead":
            section(f"server overhead ({result['runs']} interleaved runs each)")
            rows.append(("  Engine.generate (direct)", _spread(result["direct_s"], _s)))
            rows.append(("  POST /api/v1/generate", _spread(result["server_s"], _s)))
            pr = result["pair_ratio"]
            rows.append(("  ratio server/direct", f"{result['ratio']:.3f} (medians); per pair median {pr['median']:.3f}, "
                                                 f"min {pr['min']:.3f}, max {pr['max']:.3f}"))
            rows.append(("  server minus direct", _spread(result["overhead_ms"], _ms)))
            rows.append(("  outside the pipeline", _spread(result["outside_pipeline_ms"], _ms)
                         + "  [HTTP, queue, events, PNG + metadata]"))
            its = "-" if result["it_per_s"] is None else f"{result['it_per_s']:.2f} it/s"
            rows.append(("  s/image, it/s", f"{_s(result['s_per_image'])}, {its}"
                         + ("  (VAE decode redone in float32)" if result["vae_upcast"] else "")))
        elif name == "loop":
            section(f"event loop: GET /health every {result['interval_ms']:g} ms")
            idle, busy = result["idle_ms"], result["busy_ms"]
            rows.append(("  idle", f"median {_ms(idle['median'])}, p99 {_ms(idle['p99'])}, max {_ms(idle['max'])} (n={idle['n']})"))
            rows.append((f"  during {result['jobs']} generation(s)",
                         f"median {_ms(busy['median'])}, p99 {_ms(busy['p99'])}, max {_ms(busy['max'])} (n={busy['n']})"))
        elif name == "progress":
            section(f"progress: step callback -> websocket client ({result['runs']} jobs each)")
            for n, r in result["by_clients"].items():
                lat, ev = r["latency_ms"], r["progress_events"]
                rows.append((f"  {n} client{'s' if n != '1' else ''}",
                             f"median {_ms(lat['median'])}, p99 {_ms(lat['p99'])}, max {_ms(lat['max'])}; "
                             f"{ev['received']}/{ev['expected']} events; generation {_s(r['generation_s']['median'])}"))
            rows.append(("  generation slowdown", f"{result['slowdown']:.3f}x with {list(result['by_clients'])[-1]} clients vs 1"))
        elif name == "memory":
            jp = result["job_params"]
            section(f"memory: {result['jobs']} jobs at {jp['width']}x{jp['height']}, {jp['steps']} step(s)")
            rss = result["rss_mb"]
            rows.append(("  resident memory", f"start {rss['start']:.1f} MB, end {rss['end']:.1f} MB, max {rss['max']:.1f} MB"))
            rows.append(("  growth", f"{result['growth_kb_per_job']:.2f} KB/job (linear fit), "
                                     f"{result['rss_growth_mb']:+.2f} MB over the run; {result['jobs_per_s']:.1f} jobs/s"))
            size = result["size"]
            rows.append((f"  at {size['width']}x{size['height']}, {size['steps']} steps",
                         f"peak GPU memory {_gib(result['peak_gpu_bytes'])}"
                         + (f" (reserved {_gib(result['peak_gpu_reserved_bytes'])})" if result["peak_gpu_bytes"] else
                            f" (no CUDA: {result['device']})")
                         + f"; {'-' if result['it_per_s'] is None else format(result['it_per_s'], '.2f')} it/s, "
                         f"{_s(result['s_per_image'])}/image"))
        elif name == "coldstart":
            section(f"cold start: fresh process ({result['runs']} run(s), median)")
            rows.append(("  interpreter", _s(result["interpreter_s"])))
            rows.append(("  imports", _s(result["imports_s"]) + "  [torch, diffusers, the server's modules]"))
            rows.append(("  model load", _s(result["model_load_s"])))
            rows.append(("  first generation", _s(result["first_generation_s"])
                         + f"  (second: {_s(result['second_generation_s'])})"))
            rows.append(("  ready (start -> loaded)", _s(result["ready_s"])))
            rows.append(("  first image (start -> image)", _s(result["first_image_s"])))
    width = max((len(label) for label, value in rows if value), default=0) + 2
    for label, value in rows:
        lines.append(f"{label:<{width}}{value}".rstrip() if value else label)
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line


def _positive(raw: str) -> int:
    value = int(raw)
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _sections(raw: str) -> list[str]:
    chosen = [s.strip() for s in raw.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"choose from {','.join(SECTIONS)} (got {raw!r})")
    return [s for s in SECTIONS if s in chosen]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sdxl_server.bench", description=__doc__.splitlines()[0],
        epilog="The model and every server setting come from the environment (MODEL_ID=tiny, DEVICE, DTYPE, ...) "
               "or the server's own flags, as for `python -m sdxl_server`.",
    )
    b = parser.add_argument_group("benchmark")
    b.add_argument("--only", type=_sections, default=list(SECTIONS), help=f"sections, comma-separated: {','.join(SECTIONS)}")
    b.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write every figure as JSON")
    b.add_argument("--width", type=int, default=None, help="benchmark size (default: 512 for MODEL_ID=tiny, else DEFAULT_WIDTH)")
    b.add_argument("--height", type=int, default=None, help="(default: as --width's)")
    b.add_argument("--steps", type=_positive, default=None, help="steps (default: 10 for MODEL_ID=tiny, else DEFAULT_STEPS)")
    b.add_argument("--guidance", type=float, default=None, help="guidance scale (default: DEFAULT_GUIDANCE)")
    b.add_argument("--scheduler", default="default")
    b.add_argument("--prompt", default=PROMPT)
    b.add_argument("--runs", type=_positive, default=5, help="overhead: interleaved runs of each path (default 5)")
    b.add_argument("--loop-jobs", type=_positive, default=2, help="loop: generations to poll /health during (default 2)")
    b.add_argument("--health-interval-ms", type=float, default=10.0, help="loop: pause between /health calls")
    b.add_argument("--idle-samples", type=_positive, default=100, help="loop: /health calls while idle (default 100)")
    b.add_argument("--clients", type=_positive, default=100, help="progress: websocket subscribers besides 1 (default 100)")
    b.add_argument("--progress-runs", type=_positive, default=3, help="progress: jobs per client count (default 3)")
    b.add_argument("--memory-jobs", type=_positive, default=300, help="memory: small generations (default 300)")
    b.add_argument("--memory-size", type=int, default=64, help="memory: their width and height (default 64)")
    b.add_argument("--memory-steps", type=_positive, default=1, help="memory: their steps (default 1)")
    b.add_argument("--coldstart-runs", type=_positive, default=1, help="coldstart: fresh processes (default 1)")
    b.add_argument("--timeout", type=float, default=1800.0, help="seconds any one request or process may take")
    b.add_argument("--verbose", action="store_true", help="log at LOG_LEVEL (default: warnings only)")
    add_arguments(parser)
    return parser


def options_from_args(args: argparse.Namespace, settings: Settings) -> BenchOptions:
    tiny = (settings.model_id or "").lower() == "tiny"
    width = args.width or (512 if tiny else settings.default_width)
    derived = {"width", "height", "steps", "guidance_scale"}  # defaults that depend on the model
    copied = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(BenchOptions)
        if f.name not in derived and hasattr(args, f.name)
    }
    return BenchOptions(
        **copied,
        timeout_s=args.timeout,
        width=width,
        height=args.height or (512 if tiny and not args.width else (args.width or settings.default_height)),
        steps=args.steps or (10 if tiny else settings.default_steps),
        guidance_scale=settings.default_guidance if args.guidance is None else args.guidance,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    flags = {f.name: getattr(args, f.name) for f in settings_fields()}
    try:
        settings = load_settings(os.environ, flags)
        opts = options_from_args(args, settings)
        for name in ("width", "height", "memory_size"):
            if getattr(opts, name) % 8 or getattr(opts, name) < 64:
                raise ConfigError(f"--{name.replace('_', '-')}={getattr(opts, name)}: sizes are multiples of 8 from 64")
    except ConfigError as exc:
        print(f"sdxl_server.bench: error: {exc}", file=sys.stderr)
        return 2
    level = settings.log_level.upper() if args.verbose else "WARNING"
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        from diffusers.utils import logging as diffusers_logging

        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()  # loading bars would interleave with the table
        transformers_logging.disable_progress_bar()
    try:
        report = run_bench(settings, opts, args.only)
    except (ConfigError, BenchError) as exc:
        print(f"sdxl_server.bench: error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        print(f"\nJSON written to {args.json}")
    failed = [name for name, result in report["sections"].items() if "error" in result]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
