"""The ``admission`` section: what the key check and admission cost each request, by themselves.

The server's own middlewares (:func:`~sdxl_server.api.security.auth_middleware`, then
:func:`~sdxl_server.api.admission.admission_middleware`) are timed on ``POST /api/v1/jobs``, the
route the router really resolves, with a ``KEYS_FILE`` of ``--admission-keys`` keys each with
limits: a valid key (its requests per minute charged), a wrong key (the 401), and no
``KEYS_FILE`` (the single ``API_KEY``) for comparison. No HTTP, no engine: the figure is the
middlewares' own time (target: p99 under 1 ms). The route's handler is a stand-in that answers at once.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from ...api import keys
from ...api.admission import admission_middleware
from ...api.app import create_app
from ...api.key_file import hash_text
from ...api.security import auth_middleware
from ...config import Settings
from ...errors import Unauthorized
from .options import BenchOptions
from .stats import summarize

PATH = "/api/v1/jobs"
TARGET_P99_MS = 1.0


def _keys_file(path: Path, count: int) -> list[str]:
    secrets = [f"sdxl-bench-key-{index:05d}" for index in range(count)]
    path.write_text("".join(
        f'[keys.bench{index}]\nhash = "{hash_text(secret)}"\nscopes = ["generate", "read"]\n'
        f"requests_per_minute = 100000000\nrunning = 1\nwaiting = 20\nimages_per_day = 500\nweight = 2\n"
        for index, secret in enumerate(secrets)), encoding="utf-8")
    return secrets


async def _answer(request: web.Request) -> web.StreamResponse:
    return web.Response(status=202)


async def _passes(request: web.Request) -> web.StreamResponse:
    return await admission_middleware(request, _answer)


async def _time(app: web.Application, secrets: list[str], samples: int, refused: bool) -> tuple[list[float], list[float]]:
    """Seconds each request spent in the key check and admission: on the wall clock, and of this
    thread's CPU time (what the code costs, without the time the machine gave other processes)."""
    probe = make_mocked_request("POST", PATH, app=app)
    match = await app.router.resolve(probe)
    match.add_app(app)  # as the application does before its middlewares run
    seconds, cpu = [], []
    for index in range(samples):
        secret = secrets[index % len(secrets)] + ("-wrong" if refused else "")
        request = make_mocked_request("POST", PATH, headers={"Authorization": f"Bearer {secret}"}, app=app)
        request._match_info = match  # the route the router resolved (the helper's own is a stand-in)
        started, cpu_started = time.perf_counter(), time.thread_time()
        try:
            await auth_middleware(request, _passes)
        except Unauthorized:
            if not refused:
                raise
        seconds.append(time.perf_counter() - started)
        cpu.append(time.thread_time() - cpu_started)
    return seconds, cpu


def _app(settings: Settings) -> web.Application:
    app = create_app(settings)
    app[keys.KEY_RING].load()  # as the keys context does at start-up
    return app


def section_admission(settings: Settings, opts: BenchOptions) -> dict[str, Any]:
    """p50/p99/max of the middlewares' time per request, in milliseconds."""
    with tempfile.TemporaryDirectory(prefix="sdxl-bench-keys-") as scratch:
        path = Path(scratch) / "keys.toml"
        secrets = _keys_file(path, opts.admission_keys)
        with_keys = _app(settings.replace(keys_file=path, api_key=None))
        one_key = _app(settings.replace(keys_file=None, api_key=secrets[0]))

        async def measure() -> dict[str, tuple[list[float], list[float]]]:
            await _time(with_keys, secrets, min(200, opts.admission_samples), False)  # warm-up, not counted
            return {
                "valid_key": await _time(with_keys, secrets, opts.admission_samples, False),
                "wrong_key": await _time(with_keys, secrets, opts.admission_samples, True),
                "api_key": await _time(one_key, secrets[:1], opts.admission_samples, False),
            }

        timings = asyncio.run(measure())
    result: dict[str, Any] = {"keys": opts.admission_keys, "samples": opts.admission_samples, "target_p99_ms": TARGET_P99_MS}
    for name, (wall, cpu) in timings.items():
        result[name] = {**summarize(wall, 1000, 4), "cpu_ms": summarize(cpu, 1000, 4)}
    result["within_target"] = {
        "wall": all(result[name]["p99"] < TARGET_P99_MS for name in timings),
        "cpu": all(result[name]["cpu_ms"]["p99"] < TARGET_P99_MS for name in timings),
    }
    result["load_average"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other work on the machine
    return result


def admission_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = [("", ""), (
        f"key check + admission per request ({result['keys']} keys in KEYS_FILE, {result['samples']} requests each)", "")]
    for name, label in (("valid_key", "a valid key (limits charged)"), ("wrong_key", "a wrong key (401)"),
                        ("api_key", "the single API_KEY")):
        figures = result[name]
        cpu = figures["cpu_ms"]
        rows.append((f"  {label}", f"median {figures['median']:.4f} ms, p99 {figures['p99']:.4f} ms, "
                                   f"max {figures['max']:.4f} ms; CPU time p99 {cpu['p99']:.4f} ms"))
    met = {clock: "met" if ok else "MISSED" for clock, ok in result["within_target"].items()}
    load = "" if result["load_average"] is None else f" (load average {result['load_average']:.1f} while measured)"
    rows.append(("  target", f"p99 under {result['target_p99_ms']:g} ms: wall clock {met['wall']}, CPU time {met['cpu']}{load}"))
    return rows
