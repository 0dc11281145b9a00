"""The encoder thread: a generated job's images are encoded and written here while the worker
thread already generates the next job, so the device never waits for a PNG.

Its own single-thread executor (so encodes never compete with the pipeline's thread and run in
order); at most ``backlog`` jobs wait for it, after which the worker waits before it starts
another (a slow disk slows the queue rather than filling memory with images). A job ends only
once its save has finished (:class:`~.worker.Worker` ends it). Never imports torch or aiohttp.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .job import Job, Save

BACKLOG = 2


class Encoder:
    """Saves jobs' files on one thread of its own, tracking each job until it is saved."""

    def __init__(self, backlog: int = BACKLOG) -> None:
        self.backlog = backlog
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdxl-encoder")
        self._saving: dict[str, asyncio.Task] = {}

    def saving(self, job: Job) -> bool:
        """Whether ``job`` has been generated and its files are being written."""
        return job.id in self._saving

    async def run(self, save: Save) -> dict[str, Any]:
        """Run ``save`` on the encoder thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, save)

    def track(self, job: Job, saving: Coroutine[Any, Any, None]) -> None:
        """Run ``saving`` (which awaits :meth:`run` and ends the job) as a task of its own."""
        task = asyncio.create_task(saving, name=f"sdxl-save-{job.id}")
        self._saving[job.id] = task
        task.add_done_callback(lambda _: self._saving.pop(job.id, None))

    async def room(self) -> None:
        """Until fewer than ``backlog`` jobs are being saved."""
        while len(self._saving) >= self.backlog:
            await asyncio.wait(list(self._saving.values()), return_when=asyncio.FIRST_COMPLETED)

    async def drain(self, timeout: float) -> None:
        """Until every save has finished, or ``timeout`` seconds (saves are never cancelled)."""
        if self._saving:
            await asyncio.wait(list(self._saving.values()), timeout=max(0.0, timeout))

    def close(self) -> None:
        self._executor.shutdown(wait=False)
