"""Encoding and writing off the critical path: the worker thread starts the next job while the
encoder thread writes the previous one's files; a job still ends only once its files are on disk."""

from __future__ import annotations

import asyncio
import io
from concurrent.futures import ThreadPoolExecutor

import pytest
from doubles import FullDiskOutputStore, GatedEngine, GatedOutputStore
from PIL import Image

from sdxl_server.jobs.queue import JobQueue
from sdxl_server.jobs.states import JobStatus
from sdxl_server.jobs.store import JobStore
from sdxl_server.jobs.work import GenerationWork
from sdxl_server.params import GenerationParams


def _params(prompt: str) -> GenerationParams:
    return GenerationParams(prompt=prompt, negative_prompt="", width=64, height=64, steps=2, guidance_scale=7.0, seed=3)


@pytest.fixture
async def make_queue(settings, tmp_path):
    """A queue over the real tiny engine and ``outputs`` (a double of the output store), recording
    for each terminal event whether the job's files were on disk when it was published."""
    made = []

    async def make(engine, outputs):
        outputs.prepare()
        store = JobStore(tmp_path / "jobs.sqlite3")
        await store.open()
        told: list[tuple[str, str, bool]] = []

        def publish(event):
            if event["type"] in ("completed", "failed"):
                told.append((event["id"], event["type"], outputs.image_path(event["id"]).exists()))

        executor = ThreadPoolExecutor(max_workers=1)
        queue = JobQueue(GenerationWork(engine, outputs), executor, store, capacity=4, publish=publish)
        queue.start()
        await queue.ready.wait()
        made.append((queue, store, executor, outputs))
        return queue, told

    yield make
    for queue, store, executor, outputs in made:
        getattr(outputs, "gate", asyncio.Event()).set()
        await queue.stop()
        await store.close()
        executor.shutdown(wait=True)
        outputs.close()


async def _acquire(semaphore) -> None:
    assert await asyncio.to_thread(semaphore.acquire, timeout=60), "never happened"


async def test_the_next_job_generates_while_the_previous_one_is_written(make_queue, settings, tmp_path):
    engine = GatedEngine(settings)
    engine.gate.set()  # generations run at once; engine.entered counts their starts
    outputs = GatedOutputStore(tmp_path / "outputs")
    queue, told = await make_queue(engine, outputs)
    first, _ = await queue.submit(_params("first"))
    second, _ = await queue.submit(_params("second"))

    await _acquire(outputs.entered)  # the first job's files are being written (held at the gate)
    await _acquire(engine.entered)
    await _acquire(engine.entered)  # ... and the second job's generation has started meanwhile
    assert first.status is JobStatus.RUNNING and not first.done
    assert queue.position(first) == 0 and not outputs.image_path(first.id).exists()
    assert told == []

    outputs.gate.set()
    await asyncio.wait_for(asyncio.gather(first.wait(), second.wait()), 60)
    assert [first.status, second.status] == [JobStatus.SUCCEEDED, JobStatus.SUCCEEDED]
    assert told == [(first.id, "completed", True), (second.id, "completed", True)]  # files before the news
    meta = first.result["meta"]
    assert meta["timings"]["encode_s"] >= 0 and meta["timings"]["total_s"] >= meta["timings"]["inference_s"]


async def test_a_job_being_written_cannot_be_cancelled_any_more(make_queue, settings, tmp_path):
    outputs = GatedOutputStore(tmp_path / "outputs")
    queue, _ = await make_queue(GatedEngine(settings), outputs)
    queue.worker.work.engine.gate.set()
    job, _ = await queue.submit(_params("almost done"))
    await _acquire(outputs.entered)
    with pytest.raises(Exception, match="its files are being written"):
        await queue.cancel(job.id)
    outputs.gate.set()
    await asyncio.wait_for(job.wait(), 60)
    assert job.status is JobStatus.SUCCEEDED


async def test_a_full_disk_fails_that_job_only_and_leaves_no_file(make_queue, settings, tmp_path):
    from sdxl_server.pipeline.engine import Engine

    outputs = FullDiskOutputStore(tmp_path / "outputs", full_for=set())
    queue, told = await make_queue(Engine(settings), outputs)
    doomed, _ = await queue.submit(_params("no room"))
    outputs.full_for.add(doomed.id)
    fine, _ = await queue.submit(_params("room again"))
    await asyncio.wait_for(asyncio.gather(doomed.wait(), fine.wait()), 60)

    assert doomed.status is JobStatus.FAILED and doomed.error.code == "storage_failed"
    assert "No space left on device" in doomed.error.message
    assert fine.status is JobStatus.SUCCEEDED
    on_disk = sorted(p.name for p in outputs.root.rglob("*") if p.is_file() and p.parent != outputs.root)
    assert on_disk == [f"{fine.id}.json", f"{fine.id}.png"]  # nothing of the failed job, not even a partial file
    assert told == [(doomed.id, "failed", False), (fine.id, "completed", True)]


async def test_metadata_says_how_long_the_encode_took(client):
    resp = await client.post("/api/v1/generate", json={"prompt": "timed"})
    assert resp.status == 200, await resp.text()
    timings = (await resp.json())["meta"]["timings"]
    assert set(timings) == {"queue_s", "inference_s", "decode_s", "encode_s", "total_s"}
    assert timings["encode_s"] > 0


def test_png_compress_level_trades_size_for_time(tmp_path):
    from sdxl_server.jobs.outputs import OutputStore

    image = Image.linear_gradient("L").convert("RGB").resize((512, 512))
    meta = {"prompt": "p", "steps": 1, "scheduler": "euler", "guidance_scale": 7.0, "seed": 1,
            "width": 512, "height": 512, "model_id": "tiny"}
    stored, smallest = (OutputStore(tmp_path, png_compress_level=level).encode_png(image, meta) for level in (0, 9))
    assert len(stored) > 4 * len(smallest)
    assert Image.open(io.BytesIO(stored)).tobytes() == Image.open(io.BytesIO(smallest)).tobytes() == image.tobytes()
