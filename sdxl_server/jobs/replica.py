"""The Ray Serve replica: one pipeline on one GPU, streaming a job's steps back to the front end.

Runs inside a Ray worker process (see :mod:`.ray_backend` for the front end). Each replica owns an
engine and runs one job at a time through the same :class:`~.work.GenerationWork` as the local
backend, so the images and their metadata are the same; the images come back PNG-encoded (with
their parameters chunk) for the front end to write under ``OUTPUT_DIR``, or with ``OUTPUT_STORE``
the replica writes them to the object storage itself (and reads the job's inputs from it). Cancelling the streaming
response sets the cancel flag the pipeline checks at every step, so a cancelled job frees its GPU
at the next step. Never imports ray, torch or aiohttp at import time.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..config import Settings
from ..errors import ApiError
from ..params import GenerationParams
from .inputs import SentInputs
from .job import Job
from .blobs import blobs_for
from .outputs import OutputStore, encode_png
from .work import GenerationWork

STOP_WAIT_S = 30.0  # how long a cancelled generation may take to reach its next step


class EncodedOutputs:
    """Where :class:`GenerationWork` puts a replica's images: encoded, kept for the front end."""

    def __init__(self, png_compress_level: int, inputs: SentInputs) -> None:
        self.outputs: list[tuple[str, bytes, dict[str, Any]]] = []
        self.png_compress_level = png_compress_level
        self.inputs = inputs  # the job's input image and mask, sent with it

    def encode_png(self, image: Any, meta: dict[str, Any]) -> bytes:
        return encode_png(image, meta, self.png_compress_level)

    def write_outputs(self, output_id: str, png: bytes, meta: dict[str, Any]) -> None:
        self.outputs.append((output_id, png, meta))

    def remove_outputs(self, job_id: str) -> int:
        removed, self.outputs = len(self.outputs), []
        return removed

    def result_of(self, metas: list[dict[str, Any]]) -> dict[str, Any]:
        return {"metas": metas}


class StoredOutputs(OutputStore):
    """With ``OUTPUT_STORE``, where :class:`GenerationWork` puts a replica's images: straight into
    the object storage the front end serves from (inputs read from it too), each one's metadata
    naming the replica; only the metadata travels back."""

    def __init__(self, settings: Settings, place: dict[str, Any]) -> None:
        super().__init__(settings.output_dir, settings.png_compress_level, blobs=blobs_for(settings))
        self.place = place
        self.written: list[dict[str, Any]] = []

    def write_outputs(self, output_id: str, image: Any, meta: dict[str, Any]) -> None:
        meta["replica"] = self.place  # which process on which node made it
        super().write_outputs(output_id, image, meta)
        self.written.append(meta)


class Replica:
    """The deployment's class: loads the model when Ray starts the replica."""

    def __init__(self, settings: Settings, engine_factory: Callable[[Settings], Any] | None = None) -> None:
        if engine_factory is None:
            from ..pipeline.engine import Engine  # torch-side: only inside the replica

            engine_factory = Engine
        self.engine = engine_factory(settings)
        self.engine.load()  # a failure fails the replica's start; Serve reports it and retries
        self.preview_every = settings.preview_every
        self.png_compress_level = settings.png_compress_level
        self.place = {"pid": os.getpid(), "node": socket.gethostname()}
        self.settings = settings
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdxl-replica")

    def describe(self) -> dict[str, Any]:
        """The engine's description (model, device, versions), as ``/health`` shows it."""
        return self.engine.describe()

    async def generate(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Stream one job: ``placed``, then ``step`` events (with a preview when asked), then
        ``outputs`` (PNG bytes and metadata) or ``error`` (an :class:`ApiError`'s record)."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        cancel = threading.Event()
        job = Job(params=GenerationParams.from_dict(request["params"]), id=request["id"], created_at=request["created_at"],
                  warnings=tuple(request.get("warnings") or ()))
        outputs: EncodedOutputs | StoredOutputs = (
            StoredOutputs(self.settings, self.place) if self.settings.output_store
            else EncodedOutputs(self.png_compress_level, SentInputs(request.get("inputs") or {})))
        work = GenerationWork(
            self.engine, outputs, preview_every=self.preview_every, previews_wanted=lambda job_id: request["previews"]
        )

        def on_step(step: int, total: int, preview: Any) -> None:
            event = {"type": "step", "step": step, "total": total, "at": time.time(), "preview": preview}
            loop.call_soon_threadsafe(events.put_nowait, event)

        def run() -> dict[str, Any]:
            try:
                work(job, on_step, cancel.is_set)()  # generate, then encode (and with OUTPUT_STORE write) here
                if isinstance(outputs, StoredOutputs):
                    return {"type": "outputs", "written": outputs.written}
                for _, _, meta in outputs.outputs:
                    meta["replica"] = self.place  # which process on which node made it
                return {"type": "outputs", "outputs": outputs.outputs}
            except ApiError as exc:
                return {"type": "error", "error": exc.to_record(), "cancelled": cancel.is_set()}

        yield {"type": "placed", **self.place}
        running = loop.run_in_executor(self._thread, run)
        try:
            while True:
                getting = asyncio.ensure_future(events.get())
                await asyncio.wait([getting, running], return_when=asyncio.FIRST_COMPLETED)
                if getting.done():
                    yield getting.result()
                    continue
                getting.cancel()
                while not events.empty():
                    yield events.get_nowait()
                yield running.result()
                return
        except (asyncio.CancelledError, GeneratorExit):
            cancel.set()  # the pipeline stops at its next step, and the GPU is free for the next job
            await asyncio.wait([running], timeout=STOP_WAIT_S)
            raise
