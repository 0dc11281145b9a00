"""HTTP handlers: thin, they validate, call the queue or the store, and shape the reply.

Errors are raised, never formatted here (see :mod:`sdxl_server.middleware`). Never imports torch.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from aiohttp import web

from . import keys
from .errors import JobCancelled, NotFound
from .jobs import Job, JobStatus
from .schemas import to_params
from .validation import load_body


def _version() -> str:
    try:
        return version("sdxl-server")
    except PackageNotFoundError:
        return "0+unknown"


VERSION = _version()


def _health(app: web.Application) -> tuple[int, dict[str, Any]]:
    engine, queue = app[keys.ENGINE], app[keys.QUEUE]
    info = engine.describe()
    state = info["model"]["state"]
    if state == "failed":
        status = "error"
    elif state == "loading" or (state == "not_loaded" and app[keys.SETTINGS].preload):
        status = "loading"
    elif not queue.accepting:
        status = "shutting_down"
    else:
        status = "ok"
    body = {
        "status": status,
        "version": VERSION,
        **info,
        "queue": {
            "running": queue.running.id if queue.running else None,
            "waiting": queue.waiting,
            "capacity": queue.capacity,
            "eta_s": queue.eta_seconds(None),
        },
    }
    return (200 if status == "ok" else 503), body


async def health(request: web.Request) -> web.Response:
    """Readiness: 200 when the model is loaded (or loads on demand), 503 while loading or after a failure."""
    status, body = _health(request.app)
    return web.json_response(body, status=status)


def _wants_html(request: web.Request) -> bool:
    accept = request.headers.get("Accept", "")
    return "text/html" in accept


async def index(request: web.Request) -> web.StreamResponse:
    """The web page for browsers; a JSON status for everything else."""
    static_dir = request.app[keys.STATIC_DIR]
    if _wants_html(request) and (static_dir / "index.html").is_file():
        return web.FileResponse(static_dir / "index.html")
    _, health_body = _health(request.app)
    return web.json_response(
        {
            "name": "sdxl_server",
            "version": VERSION,
            "status": health_body["status"],
            "model": health_body["model"]["id"],
            "endpoints": {
                "generate": "POST /api/v1/generate",
                "health": "GET /health",
                "images": "GET /outputs/images/{id}.png",
                "metadata": "GET /outputs/metadata/{id}.json",
            },
        }
    )


def _result_or_raise(job: Job) -> dict[str, Any]:
    if job.status is JobStatus.SUCCEEDED:
        return {"id": job.id, **(job.result or {})}
    if job.status is JobStatus.CANCELLED:
        raise JobCancelled(f"job {job.id} was cancelled before it finished")
    assert job.error is not None
    raise job.error


async def generate(request: web.Request) -> web.Response:
    """Validate, queue, wait for the image to be saved, and return ``{id, image_url, meta_url, meta}``."""
    data = await load_body(request, request.app[keys.GENERATE_SCHEMA])
    job = request.app[keys.QUEUE].submit(to_params(data))
    await job.wait()
    return web.json_response(_result_or_raise(job))


async def output_file(request: web.Request) -> web.FileResponse:
    """``/outputs/images/{id}.png`` and ``/outputs/metadata/{id}.json``; nothing else under OUTPUT_DIR."""
    path = request.app[keys.STORE].servable(request.match_info["folder"], request.match_info["filename"])
    if path is None:
        raise NotFound("no such output")
    return web.FileResponse(path, headers={"Cache-Control": "public, max-age=31536000, immutable"})
