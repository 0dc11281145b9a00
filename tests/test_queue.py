"""One worker, a bounded queue, and failures that leave the server serving the next request."""

from __future__ import annotations

import asyncio

import pytest
from doubles import FaultyUnetEngine, GatedEngine, cuda_out_of_memory
from files import output_files
from wsclient import events_until

from sdxl_server.api import keys


def _outputs(settings):
    return sorted(name.split("/")[1] for name in output_files(settings.output_dir))


async def _entered(engine) -> None:
    await asyncio.get_running_loop().run_in_executor(None, engine.entered.acquire)


async def test_full_queue_answers_429_with_retry_after(make_client, settings):
    client = await make_client(settings.replace(queue_size=1), engine_factory=GatedEngine)
    engine = client.app[keys.ENGINE]
    ws = await client.ws_connect("/api/v1/ws")
    await ws.receive_json()  # snapshot
    running = asyncio.create_task(client.post("/api/v1/generate", json={"prompt": "one"}))
    await _entered(engine)  # the first job is on the worker thread
    await events_until(ws, lambda e: e["type"] == "started")
    waiting = asyncio.create_task(client.post("/api/v1/generate", json={"prompt": "two"}))
    await events_until(ws, lambda e: e["type"] == "queued")  # the second job waits

    resp = await client.post("/api/v1/generate", json={"prompt": "three"})
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) >= 1
    body = await resp.json()
    assert body["error"] == "queue_full" and "1 waiting" in body["message"]

    engine.gate.set()
    first, second = await running, await waiting
    assert first.status == 200 and second.status == 200
    a, b = await first.json(), await second.json()
    assert a["id"] != b["id"]
    assert b["meta"]["timings"]["queue_s"] >= a["meta"]["timings"]["inference_s"]  # it ran after the first


@pytest.mark.parametrize(
    ("error", "status", "code", "needle"),
    [
        (cuda_out_of_memory(), 503, "out_of_memory", "ran out of memory at 64x64: try a smaller size"),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), 500, "generation_failed", "mat1 and mat2"),
    ],
)
async def test_a_failed_generation_is_a_json_error_and_the_next_works(make_client, settings, error, status, code, needle):
    client = await make_client(settings, engine_factory=lambda s: FaultyUnetEngine(s, error, at_call=2))
    resp = await client.post("/api/v1/generate", json={"prompt": "fails mid-run"})
    assert resp.status == status
    body = await resp.json()
    assert body["error"] == code and needle in body["message"]
    assert _outputs(settings) == []  # nothing half-written

    resp = await client.post("/api/v1/generate", json={"prompt": "works"})
    assert resp.status == 200
    data = await resp.json()
    assert _outputs(settings) == sorted([f"{data['id']}.json", f"{data['id']}.png"])


async def test_unwritable_output_dir_is_a_clear_error_and_leaves_nothing(client, settings):
    images = settings.output_dir / "images"
    images.rmdir()
    images.write_text("not a folder")  # unwritable even for root, unlike a chmod
    resp = await client.post("/api/v1/generate", json={"prompt": "nowhere to write"})
    assert resp.status == 500
    body = await resp.json()
    assert body["error"] == "storage_failed" and str(settings.output_dir) in body["message"]
    assert _outputs(settings) == []  # no metadata, and "images" is still the file we left
    assert images.read_text() == "not a folder"

    images.unlink()
    images.mkdir()
    resp = await client.post("/api/v1/generate", json={"prompt": "writable again"})
    assert resp.status == 200


async def test_a_batch_that_cannot_be_saved_leaves_none_of_its_images(client, settings, monkeypatch):
    from sdxl_server.jobs.blobs import LocalBlobs

    write, calls = LocalBlobs._write_atomic, []

    def disk_fills_at_the_second_image(path, content):
        calls.append(path)
        if len(calls) == 3:  # image 0, its metadata, then image 1
            raise OSError(28, "No space left on device")
        return write(path, content)

    monkeypatch.setattr(LocalBlobs, "_write_atomic", staticmethod(disk_fills_at_the_second_image))
    resp = await client.post("/api/v1/generate", json={"prompt": "three", "num_images": 3, "steps": 1})
    assert resp.status == 500 and (await resp.json())["error"] == "storage_failed"
    assert _outputs(settings) == []
    monkeypatch.setattr(LocalBlobs, "_write_atomic", staticmethod(write))
    assert (await client.post("/api/v1/generate", json={"prompt": "next", "steps": 1})).status == 200
