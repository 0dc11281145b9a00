"""Nothing lost, nothing run twice, tried against real server processes: a database moved aside,
a second server on the same folder, SIGTERM then a crash, Ctrl-C twice."""

from __future__ import annotations

import io
import shutil
import signal
import sqlite3

import aiohttp
import pytest
from live_server import LiveServer
from PIL import Image
from wsclient import events_until

pytestmark = pytest.mark.slow(25)  # each test runs one or two real servers

LONG_JOB = {"prompt": "long", "steps": 40, "width": 256, "height": 256}


def _row(output_dir, job_id) -> sqlite3.Row:
    with sqlite3.connect(output_dir / "jobs.sqlite3") as db:
        db.row_factory = sqlite3.Row
        return db.execute("SELECT status, attempts FROM jobs WHERE id = ?", (job_id,)).fetchone()


async def test_a_database_moved_aside_loses_no_image(tiny_cache, tmp_path):
    """The server's own advice for a damaged database: move it aside. The images stay, and come
    back as succeeded jobs, rebuilt from their metadata."""
    output_dir = tmp_path / "outputs"
    server = LiveServer(tiny_cache, output_dir).wait_ready()
    try:
        status, single = server.request("POST", "/api/v1/generate", {"prompt": "one", "seed": 7})
        assert status == 200
        status, batch = server.request("POST", "/api/v1/generate", {"prompt": "two", "num_images": 2, "seed": 9})
        assert status == 200
    finally:
        server.stop()
    aside = tmp_path / "aside"
    aside.mkdir()
    for path in output_dir.glob("jobs.sqlite3*"):
        shutil.move(path, aside / path.name)
    no_sidecar = output_dir / "images" / ("d" * 32 + ".png")
    no_sidecar.write_bytes(b"an image without its metadata")

    server = LiveServer(tiny_cache, output_dir).wait_ready()
    try:
        assert "adopted 2 job(s)" in server.log_text()
        assert "left alone 1 file(s)" in server.log_text() and no_sidecar.name in server.log_text()
        status, listed = server.get_json("/api/v1/jobs?limit=10")
        assert status == 200
        jobs = {job["id"]: job for job in listed["jobs"]}
        assert set(jobs) == {single["id"], batch["id"]}
        assert jobs[single["id"]]["status"] == "succeeded" and jobs[single["id"]]["image_url"] == single["image_url"]
        assert jobs[single["id"]]["params"]["prompt"] == "one" and jobs[single["id"]]["params"]["seed"] == 7
        assert [image["id"] for image in jobs[batch["id"]]["images"]] == [image["id"] for image in batch["images"]]
        async with aiohttp.ClientSession() as session:
            for image in [single, *batch["images"]]:
                async with session.get(server.url + image["image_url"]) as resp:
                    assert resp.status == 200
                    Image.open(io.BytesIO(await resp.read())).verify()
        assert no_sidecar.read_bytes() == b"an image without its metadata"
    finally:
        server.stop()


async def test_a_second_server_on_the_same_output_dir_is_refused_whatever_its_jobs_db(tiny_cache, tmp_path):
    output_dir = tmp_path / "outputs"
    first = LiveServer(tiny_cache, output_dir).wait_ready()
    try:
        status, made = first.request("POST", "/api/v1/generate", {"prompt": "mine"})
        assert status == 200
        second = LiveServer(tiny_cache, output_dir, JOBS_DB=str(tmp_path / "elsewhere.sqlite3"))
        assert second.exit_code() == 2
        second.stop()
        last = second.log_text().strip().splitlines()[-1]
        assert last.startswith("sdxl-server: error: another sdxl-server is already using OUTPUT_DIR")
        status, _ = first.request("GET", made["meta_url"])  # the first server's images are all still there
        assert status == 200 and (output_dir / "images" / f"{made['id']}.png").exists()
    finally:
        first.stop()


async def _start_long_job(server: LiveServer, **changes) -> str:
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{server.url}/api/v1/ws")
        await ws.receive_json()
        job = await (await session.post(f"{server.url}/api/v1/jobs", json={**LONG_JOB, **changes})).json()
        await events_until(ws, lambda e: e["type"] == "progress" and e["id"] == job["id"])
        await ws.close()
    return job["id"]


async def test_a_suspension_is_not_an_attempt(tiny_cache, tmp_path):
    """SIGTERM suspends the running job; a crash during its next run must not fail it as
    "stopped again": only crashes count."""
    output_dir = tmp_path / "outputs"
    server = LiveServer(tiny_cache, output_dir, SHUTDOWN_GRACE="0").wait_ready()
    job_id = await _start_long_job(server)
    server.stop()
    assert server.exit_code() == 0
    assert tuple(_row(output_dir, job_id)) == ("queued", 0)

    server = LiveServer(tiny_cache, output_dir).wait_ready()  # runs it again: attempt 1 ...
    try:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"{server.url}/api/v1/ws?job={job_id}")
            await events_until(ws, lambda e: e["type"] == "progress")
            server.process.kill()  # ... and crashes
            await ws.close()
        assert server.exit_code() == -9
    finally:
        server.stop()
    assert tuple(_row(output_dir, job_id)) == ("running", 1)

    server = LiveServer(tiny_cache, output_dir).wait_ready()
    try:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"{server.url}/api/v1/ws?job={job_id}")
            end = (await events_until(ws, lambda e: e["type"] in ("completed", "failed") or
                                      e.get("job", {}).get("status") in ("succeeded", "failed")))[-1]
            await ws.close()
        assert end.get("type") == "completed" or end["job"]["status"] == "succeeded"
    finally:
        server.stop()


async def test_a_second_sigterm_ends_the_grace_period_cleanly(tiny_cache, tmp_path):
    output_dir = tmp_path / "outputs"
    server = LiveServer(tiny_cache, output_dir, SHUTDOWN_GRACE="600", MAX_STEPS="1000").wait_ready()
    try:
        job_id = await _start_long_job(server, steps=1000)  # far longer than the test: it never finishes
        server.process.send_signal(signal.SIGTERM)
        server.wait_for_log(r"shutting down: .*a second signal", timeout=60)
        server.process.send_signal(signal.SIGTERM)  # Ctrl-C twice: do not wait 600 s
        assert server.exit_code(timeout=120) == 0
        assert "Event loop is closed" not in server.log_text() and "Traceback" not in server.log_text()
    finally:
        server.stop()
    assert tuple(_row(output_dir, job_id)) == ("queued", 0)  # suspended, to run at the next start
    assert not list((output_dir / "images").glob("*.png"))  # and no half image
