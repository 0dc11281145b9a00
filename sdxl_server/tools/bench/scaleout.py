"""``python -m sdxl_server.tools.bench.scaleout``: BACKEND=ray against BACKEND=local, measured.

Starts the real application in this process twice (the same settings; ``local``, then ``ray``
with ``--replicas`` CPU replicas on a local Ray, or on ``RAY_ADDRESS``) and measures, through
HTTP and the websocket as a client sees them:

- one job at a time (idle server): its end-to-end time; the difference is the latency Ray adds;
- a burst of ``--jobs`` jobs submitted at once: the time until the last ends, and the throughput;
- per-step event latency on Ray: replica -> front end (the replica's clock to the lane's thread)
  and front end -> websocket client, and their sum;
- one 1024x1024 PNG's way to ``OUTPUT_DIR``: encoded on a Ray worker, then either returned to the
  front end and written there (what the server does) or written by the worker itself (a shared
  ``OUTPUT_DIR``).

Prints a table (and ``--json`` writes the figures). The model and settings come from the
environment like the server's (``MODEL_ID=tiny`` by default here).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from ...api.app import default_engine_factory
from ...config import ConfigError, Settings, load_settings
from ...jobs.states import TERMINAL_EVENTS
from .server import InProcessServer
from .stats import percentile

OPTIONS = [  # flag, type, default, help
    ("--jobs", int, 20, "jobs in the burst (default 20)"),
    ("--replicas", int, 2, "Ray replicas (default 2)"),
    ("--gpus-per-replica", float, 0.0, "GPUs per replica (default 0: CPU replicas)"),
    ("--size", int, 256, "width and height (default 256)"),
    ("--steps", int, 10, "steps per job (default 10)"),
    ("--single-runs", int, 5, "one-at-a-time jobs per backend (default 5)"),
    ("--png-runs", int, 5, "1024x1024 PNGs for the output transfer (default 5)"),
    ("--output-dir", Path, Path("bench-scaleout"), "where both servers write"),
    ("--json", Path, None, "also write the figures as JSON"),
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sdxl_server.tools.bench.scaleout", description=__doc__.splitlines()[0])
    for flag, kind, default, help in OPTIONS:
        parser.add_argument(flag, type=kind, default=default, help=help)
    return parser


async def _one(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> float:
    started = time.perf_counter()
    async with session.post(f"{url}/api/v1/generate", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"generate answered {resp.status}: {await resp.text()}")
    return time.perf_counter() - started


async def _burst(session: aiohttp.ClientSession, url: str, body: dict[str, Any], jobs: int) -> dict[str, Any]:
    """Submit ``jobs`` at once; follow them on the websocket until the last ends."""
    ws_latency: list[float] = []
    started_at: dict[str, float] = {}
    async with session.ws_connect(f"{url}/api/v1/ws") as ws:
        await ws.receive_json()  # snapshot
        began = time.perf_counter()
        answers = await asyncio.gather(*(session.post(f"{url}/api/v1/jobs", json=body) for _ in range(jobs)))
        ids = set()
        for answer in answers:
            if answer.status != 202:
                raise RuntimeError(f"submit answered {answer.status}: {await answer.text()}")
            ids.add((await answer.json())["id"])
        left = set(ids)
        while left:
            event = await ws.receive_json(timeout=600)
            now = time.time()
            if event["type"] == "started":
                started_at[event["id"]] = event["started_at"]
            elif event["type"] == "progress" and event["id"] in started_at:
                ws_latency.append(now - (started_at[event["id"]] + event["elapsed_s"]))
            elif event["type"] in TERMINAL_EVENTS and event["id"] in left:
                if event["type"] != "completed":
                    raise RuntimeError(f"job {event['id']} ended {event['type']}")
                left.discard(event["id"])
        wall = time.perf_counter() - began
    return {"wall_s": wall, "jobs_per_s": jobs / wall, "ws_latency": ws_latency}


async def _measure(server: InProcessServer, args: argparse.Namespace) -> dict[str, Any]:
    body = {"prompt": "a lighthouse at dusk", "width": args.size, "height": args.size, "steps": args.steps}
    async with aiohttp.ClientSession() as session:
        await _one(session, server.url, body)  # warm-up
        single = [await _one(session, server.url, body) for _ in range(args.single_runs)]
        burst = await _burst(session, server.url, body, args.jobs)
    return {"single_s": statistics.median(single), **burst}


def _png_1024(seed: int) -> Any:
    """A 1024x1024 image about as hard to compress as a generated one (smooth, with grain)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:1024, 0:1024] / 1024.0
    base = np.stack([np.sin(6 * x + seed), np.cos(5 * y), np.sin(4 * (x + y))], axis=-1) * 100 + 128
    return Image.fromarray(np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype("uint8"))


def _encoded_on_worker(seed: int, shared_dir: str | None) -> tuple[bytes, float, float]:
    """On a Ray worker: encode (timed); write it into ``shared_dir`` (timed) or return it."""
    from ...jobs.outputs import OutputStore, encode_png

    image, meta = _png_1024(seed), {"prompt": "bench", "steps": 1, "scheduler": "default", "guidance_scale": 1.0,
                                     "seed": seed, "width": 1024, "height": 1024, "model_id": "bench"}
    started = time.perf_counter()
    png = encode_png(image, meta)
    encoded = time.perf_counter()
    if shared_dir is None:
        return png, encoded - started, 0.0
    OutputStore(Path(shared_dir)).write_outputs(f"{seed:032x}", png, meta)
    return b"", encoded - started, time.perf_counter() - encoded


def _outputs(args: argparse.Namespace, output_dir: Path) -> dict[str, Any]:
    import ray

    from ...jobs.outputs import OutputStore

    task = ray.remote(num_cpus=1)(_encoded_on_worker)
    ray.get(task.remote(0, None))  # warm-up: a worker with the imports
    store = OutputStore(output_dir)
    encode, via_front_end, written, via_shared, shared_write, sizes = [], [], [], [], [], []
    for run in range(1, args.png_runs + 1):  # each path: from the call until the file is on disk
        started = time.perf_counter()
        png, encode_s, _ = ray.get(task.remote(run, None))
        received = time.perf_counter()
        store.write_outputs(f"{run:032x}", png, {"id": f"{run:032x}", "prompt": "bench"})
        done = time.perf_counter()
        via_front_end.append(done - started)
        written.append(done - received)
        encode.append(encode_s)
        sizes.append(len(png))
        started = time.perf_counter()
        _, _, write_s = ray.get(task.remote(run + 1000, str(output_dir)))
        via_shared.append(time.perf_counter() - started)
        shared_write.append(write_s)
    med = lambda values: round(1000 * statistics.median(values), 1)
    return {"png_kb": round(statistics.median(sizes) / 1024), "encode_ms": med(encode),
            "via_front_end_ms": med(via_front_end), "front_end_write_ms": med(written),
            "via_shared_dir_ms": med(via_shared), "shared_dir_write_ms": med(shared_write)}


def _serve(settings: Settings, engine: Any) -> InProcessServer:
    return InProcessServer(settings, engine).start()


def run(args: argparse.Namespace, base: Settings) -> dict[str, Any]:
    common = base.replace(queue_size=max(base.queue_size, args.jobs), output_dir=args.output_dir, max_width=max(
        base.max_width, args.size), max_height=max(base.max_height, args.size), max_steps=max(base.max_steps, args.steps))
    figures: dict[str, Any] = {}
    local = common.replace(backend="local", max_concurrency=0)
    server = _serve(local, default_engine_factory(local))
    try:
        figures["local"] = asyncio.run(_measure(server, args))
    finally:
        server.stop()

    import ray  # the ray extra; started here, on the main thread

    from ...jobs.ray_backend import RayCluster

    remote = common.replace(backend="ray", ray_replicas=args.replicas, ray_gpus_per_replica=args.gpus_per_replica,
                            max_concurrency=0)
    cluster = RayCluster(remote)
    cluster.connect()
    server = _serve(remote, cluster)
    try:
        figures["ray"] = asyncio.run(_measure(server, args))
        figures["ray"]["replica_latency"] = list(cluster.step_latency_s)
        figures["outputs"] = _outputs(args, args.output_dir)  # while Ray runs (stopping the server stops it)
    finally:
        server.stop()
        cluster.close()
        if ray.is_initialized():
            ray.shutdown()
    return figures


def report(figures: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    local, ray_ = figures["local"], figures["ray"]
    ms = lambda values, q=50: round(1000 * percentile(values, q), 2) if values else None
    summary = {
        "setup": {"jobs": args.jobs, "replicas": args.replicas, "size": args.size, "steps": args.steps,
                  "gpus_per_replica": args.gpus_per_replica},
        "local": {"single_job_s": round(local["single_s"], 3), "burst_s": round(local["wall_s"], 2),
                  "jobs_per_s": round(local["jobs_per_s"], 3)},
        "ray": {"single_job_s": round(ray_["single_s"], 3), "burst_s": round(ray_["wall_s"], 2),
                "jobs_per_s": round(ray_["jobs_per_s"], 3)},
        "outputs": figures["outputs"],
        "speedup": round(ray_["jobs_per_s"] / local["jobs_per_s"], 2),
        "added_latency_per_job_ms": round(1000 * (ray_["single_s"] - local["single_s"]), 1),
        "step_event_ms": {
            "replica_to_front_end_p50": ms(ray_["replica_latency"]),
            "front_end_to_websocket_p50": ms(ray_["ws_latency"]),
            "replica_to_websocket_p50": (ms(ray_["replica_latency"]) or 0) + (ms(ray_["ws_latency"]) or 0),
            "replica_to_front_end_p95": ms(ray_["replica_latency"], 95),
            "local_front_end_to_websocket_p50": ms(local["ws_latency"]),
        },
    }
    return summary


def format_report(summary: dict[str, Any]) -> str:
    s, lo, ra, st = summary["setup"], summary["local"], summary["ray"], summary["step_event_ms"]
    return "\n".join([
        (f"scale-out: {s['jobs']} jobs of {s['size']}x{s['size']}, {s['steps']} steps; ray: {s['replicas']} replicas "
         f"({s['gpus_per_replica']:g} GPU each)"),
        "| backend | one job (s) | burst (s) | jobs/s |",
        "|---|---|---|---|",
        f"| local | {lo['single_job_s']} | {lo['burst_s']} | {lo['jobs_per_s']} |",
        f"| ray | {ra['single_job_s']} | {ra['burst_s']} | {ra['jobs_per_s']} |",
        f"throughput ray/local: {summary['speedup']}x; added latency per job: {summary['added_latency_per_job_ms']} ms",
        (f"step event p50: replica -> front end {st['replica_to_front_end_p50']} ms "
         f"(p95 {st['replica_to_front_end_p95']}), front end -> websocket {st['front_end_to_websocket_p50']} ms "
         f"(local: {st['local_front_end_to_websocket_p50']} ms), replica -> websocket {st['replica_to_websocket_p50']:.2f} ms"),
        ("one 1024x1024 PNG ({png_kb} KB, encoded on the worker in {encode_ms} ms), call to file on disk: "
         "returned and written by the front end {via_front_end_ms} ms (the write {front_end_write_ms} ms), "
         "written by the worker to a shared OUTPUT_DIR {via_shared_dir_ms} ms (the write {shared_dir_write_ms} ms)"
         ).format(**summary["outputs"]),
    ])


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        base = load_settings({"MODEL_ID": "tiny", "TORCH_THREADS": "1", **os.environ})
    except ConfigError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 2
    summary = report(run(args, base), args)
    print(format_report(summary))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
