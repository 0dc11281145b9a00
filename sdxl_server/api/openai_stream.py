"""OpenAI image streaming: ``stream: true`` on ``/v1/images/generations`` and ``/v1/images/edits``.

OpenAI answers such a request with server-sent events: up to ``partial_images`` (0 to 3) events
``image_generation.partial_image`` (edits: ``image_edit.partial_image``) while the image is made,
then one ``image_generation.completed`` (``image_edit.completed``) with the final image, each
event's ``data`` one JSON object (``type``, ``b64_json``, ``created_at``, ``size``, ``quality``,
``background``, ``output_format``, and ``partial_image_index`` or ``usage``). The SDKs read only
that ``data``. Here the partial images are the job's step previews (the worker makes them while
someone subscribed to the job's events wants them: :meth:`.EventHub.wants_previews`), spread over
the steps, scaled to the asked size and encoded as ``output_format``. As OpenAI says, a fast
image may complete before every partial image was sent.

The job is queued before the answer starts, so a full queue or a bad request is still a plain
JSON error; an error after that is an ``error`` event in OpenAI's shape (the SDKs raise it). A
client that leaves mid-stream ends this handler at the job's next event; the job itself goes on
and ends as every job does (its image is kept, like any other). Never imports torch.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import math
import time
from typing import Any

from aiohttp import web
from PIL import Image

from ..errors import ApiError
from ..jobs.events import Subscription
from ..jobs.job import Job
from ..jobs.states import TERMINAL_EVENTS
from ..params import GenerationParams
from . import image_inputs, keys
from .openai import SIZE_NAMES, ImagesAsk, base64_images, error_body
from .validation import client_connected

log = logging.getLogger(__name__)

MAX_PARTIAL_IMAGES = 3  # OpenAI's limit
# What this server counts of OpenAI's token usage: nothing (there are no image tokens here).
NO_USAGE = {"input_tokens": 0, "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
            "output_tokens": 0, "total_tokens": 0}
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def partial_steps(total: int, count: int) -> list[int]:
    """The steps after which each of ``count`` partial images is due: evenly spread, the last one
    before the final step (whose image is the completed one)."""
    return [max(1, math.ceil(total * (index + 1) / (count + 1))) for index in range(count)]


def event(kind: str, b64: str, params: GenerationParams, asked: ImagesAsk, **extra: Any) -> dict[str, Any]:
    """One event's ``data``, with the fields OpenAI sends on every image event."""
    return {
        "type": kind, "b64_json": b64, "created_at": int(time.time()), "size": f"{params.width}x{params.height}",
        "quality": asked.quality, "background": asked.background, "output_format": asked.output_format, **extra,
    }


def encode_preview(data_url: str, size: tuple[int, int], output_format: str, compression: int) -> str:
    """A step preview (a small JPEG data URL) at the image's size, as ``output_format``, in base64:
    a client shows it where the final image will be."""
    blob = base64.b64decode(data_url.partition(",")[2])
    with Image.open(io.BytesIO(blob)) as preview:
        scaled = preview.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    out = io.BytesIO()
    options = {} if output_format == "png" else {"quality": max(1, min(100, compression))}
    scaled.save(out, format=output_format.upper(), **options)
    return base64.b64encode(out.getvalue()).decode("ascii")


class ImageStream:
    """One streamed answer: the job, its event subscription, and the response being written."""

    def __init__(self, request: web.Request, params: GenerationParams, asked: ImagesAsk, kind: str) -> None:
        self.request, self.params, self.asked, self.kind = request, params, asked, kind
        self.response = web.StreamResponse(headers=SSE_HEADERS)
        self.sent = 0  # partial images sent
        self.total = params.steps  # the job's steps, as its progress events count them

    async def run(self) -> web.StreamResponse:
        """Queue the job, then answer with its partial images and its final image."""
        app = self.request.app
        job, _ = await image_inputs.submit(self.request, self.params, names=SIZE_NAMES)
        # Subscribed before the event loop runs again: the worker cannot have taken a step yet.
        subscription = app[keys.HUB].subscribe(job.id, previews=self.asked.partial_images > 0)
        try:
            await self.response.prepare(self.request)
            if await self._partials(job, subscription):
                await self._completed(job)
                return self.response
        except ConnectionError:
            pass  # a write found the connection gone
        except asyncio.CancelledError:  # where aiohttp cancels the handler of a client that left
            log.info("the client of streamed job %s left; the job goes on", job.id)
            raise
        finally:
            app[keys.HUB].unsubscribe(subscription)
        log.info("the client of streamed job %s left; the job goes on", job.id)
        return self.response

    async def _partials(self, job: Job, subscription: Subscription) -> bool:
        """Send partial images from the job's events until it ends; False if the client left."""
        due = partial_steps(self.total, self.asked.partial_images)
        while True:
            message = await subscription.next()
            if not client_connected(self.request):
                return False
            if message is None:  # fell too far behind: no more previews, wait for the end
                await job.wait()
                return True
            kind = message.event["type"]
            if kind in TERMINAL_EVENTS:
                return True
            if kind == "suspended":  # a shutdown keeps it queued for the next start: this stream ends here
                _, body = error_body(503, message.event.get("error") or {"error": "shutting_down", "message": "shutting down"})
                await self._send(body, name="error")
                return False
            if kind == "progress":
                self.total = message.event.get("total_steps") or self.total
                due = partial_steps(self.total, self.asked.partial_images)
            elif kind == "preview" and self.sent < len(due) and due[self.sent] <= message.event["step"] < self.total:
                await self._partial(message.event["image"])

    async def _partial(self, data_url: str) -> None:
        asked, params = self.asked, self.params
        b64 = await asyncio.get_running_loop().run_in_executor(
            None, encode_preview, data_url, (params.width, params.height), asked.output_format, asked.compression)
        await self._send(event(f"{self.kind}.partial_image", b64, params, asked, partial_image_index=self.sent))
        self.sent += 1

    async def _completed(self, job: Job) -> None:
        """The final image, or the job's error as OpenAI's ``error`` event."""
        await job.wait()
        try:
            result = job.outcome()
        except ApiError as exc:
            _, body = error_body(exc.status, exc.to_dict())
            await self._send(body, name="error")
            return
        image_id = (result.get("images") or [{"id": result["meta"]["id"]}])[0]["id"]
        [b64] = await base64_images(self.request.app, [image_id], self.asked.output_format, self.asked.compression)
        await self._send(event(f"{self.kind}.completed", b64, self.params, self.asked, usage=NO_USAGE))

    async def _send(self, data: dict[str, Any], name: str | None = None) -> None:
        """One server-sent event: ``event: <type>`` and its JSON on one ``data:`` line."""
        text = f"event: {name or data['type']}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
        await self.response.write(text.encode())

async def stream_images(request: web.Request, params: GenerationParams, asked: ImagesAsk, kind: str) -> web.StreamResponse:
    """Answer ``asked`` (an :class:`.openai.ImagesAsk` with ``stream``) with OpenAI's image events;
    ``kind``: ``image_generation`` or ``image_edit``."""
    return await ImageStream(request, params, asked, kind).run()
