"""Nothing is lost when the server stops, crashes or is retried."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys

import aiohttp
import pytest
from files import output_files
from live_server import LiveServer, free_port
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from wsclient import events_until

from sdxl_server.api import keys
from sdxl_server.jobs.states import TERMINAL_EVENTS as TERMINAL
from sdxl_server.jobs.store import SCHEMA_VERSION


async def _succeeded_total(session, url) -> float:
    text = await (await session.get(f"{url}/metrics")).text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sdxl_jobs_total" and sample.labels.get("status") == "succeeded":
                return sample.value
    return 0.0


async def _crash_with_jobs_in_flight(tiny_cache, output_dir, **env):
    """One finished job, one running and three waiting when the server is killed (SIGKILL)."""
    server = LiveServer(tiny_cache, output_dir, **env).wait_ready()
    try:
        async with aiohttp.ClientSession() as session:
            url = server.url
            done = await (await session.post(f"{url}/api/v1/generate", json={"prompt": "before", "steps": 1})).json()
            ws = await session.ws_connect(f"{url}/api/v1/ws")
            await ws.receive_json()
            body = {"prompt": "in flight", "steps": 30, "width": 256, "height": 256}
            running = await (await session.post(f"{url}/api/v1/jobs", json=body)).json()
            waiting = [await (await session.post(f"{url}/api/v1/jobs", json={"prompt": f"w{n}", "steps": 2})).json()
                       for n in range(3)]
            await events_until(ws, lambda e: e["type"] == "progress" and e["id"] == running["id"])
            server.process.kill()  # no shutdown hook runs
            await ws.close()
        assert server.exit_code() == -9
    finally:
        server.stop()
    return done, running, waiting


@pytest.mark.slow(30)
async def test_sigkill_then_restart_loses_nothing_and_repeats_nothing(tiny_cache, tmp_path):
    output_dir = tmp_path / "outputs"
    done, running, waiting = await _crash_with_jobs_in_flight(tiny_cache, output_dir)
    (output_dir / "images" / ".partial-crash").write_bytes(b"half a png")  # as a crash mid-write leaves

    server = LiveServer(tiny_cache, output_dir).wait_ready()
    try:
        async with aiohttp.ClientSession() as session:
            url = server.url
            ws = await session.ws_connect(f"{url}/api/v1/ws")
            snapshot = await ws.receive_json()
            unfinished = [running["id"]] + [job["id"] for job in waiting]
            assert [job["id"] for job in snapshot["jobs"]] == unfinished  # the running one first, then in order
            ends: dict[str, list[str]] = {}
            while len(ends) < len(unfinished):
                event = await ws.receive_json(timeout=120)
                if event["type"] in TERMINAL:
                    ends.setdefault(event["id"], []).append(event["type"])
            assert ends == {job_id: ["completed"] for job_id in unfinished}
            assert await _succeeded_total(session, url) == len(unfinished)  # the job finished before was not redone

            listed = await (await session.get(f"{url}/api/v1/jobs?limit=100")).json()
            assert [job["id"] for job in listed["jobs"]] == [*unfinished[::-1], done["id"]]
            assert all(job["status"] == "succeeded" for job in listed["jobs"])
            for job in listed["jobs"]:
                image = await session.get(f"{url}{job['image_url']}")
                Image.open(io.BytesIO(await image.read())).verify()
            restarted = await (await session.get(f"{url}/api/v1/jobs/{running['id']}")).json()
            assert restarted["status"] == "succeeded"
            await ws.close()
    finally:
        server.stop()
    files = output_files(output_dir)
    assert ".partial-crash" not in " ".join(files)
    assert len(files) == 2 * 5  # one image and one metadata file per job, nothing twice


@pytest.mark.slow(25)
async def test_the_running_job_can_be_marked_failed_instead(tiny_cache, tmp_path):
    output_dir = tmp_path / "outputs"
    _, running, waiting = await _crash_with_jobs_in_flight(tiny_cache, output_dir)
    server = LiveServer(tiny_cache, output_dir, RESTART_RUNNING="fail").wait_ready()
    try:
        async with aiohttp.ClientSession() as session:
            failed = await (await session.get(f"{server.url}/api/v1/jobs/{running['id']}")).json()
            assert failed["status"] == "failed" and failed["error"]["error"] == "interrupted"
            assert "submit it again" in failed["error"]["message"]
            ws = await session.ws_connect(f"{server.url}/api/v1/ws?job={waiting[-1]['id']}")
            await events_until(ws, lambda e: e["type"] == "completed" or e.get("job", {}).get("status") == "succeeded")
            await ws.close()
    finally:
        server.stop()


async def test_same_idempotency_key_same_job_even_across_restarts(make_client, settings):
    headers = {"Idempotency-Key": "order-42"}
    client = await make_client(settings)
    first = await client.post("/api/v1/jobs", json={"prompt": "once", "steps": 1}, headers=headers)
    assert first.status == 202
    job = await first.json()
    again = await client.post("/api/v1/jobs", json={"prompt": "once", "steps": 1}, headers=headers)
    assert again.status == 200 and again.headers["Idempotent-Replayed"] == "true"
    assert (await again.json())["id"] == job["id"]
    blocking = await client.post("/api/v1/generate", json={"prompt": "once", "steps": 1}, headers=headers)
    assert blocking.status == 200 and (await blocking.json())["id"] == job["id"]
    other = await client.post("/api/v1/jobs", json={"prompt": "different", "steps": 1}, headers=headers)
    assert other.status == 422
    body = await other.json()
    assert body["error"] == "idempotency_conflict" and "Idempotency-Key" in body["fields"]
    await client.close()

    restarted = await make_client(settings)  # the same OUTPUT_DIR
    replay = await restarted.post("/api/v1/generate", json={"prompt": "once", "steps": 1}, headers=headers)
    assert replay.status == 200 and (await replay.json())["id"] == job["id"]
    jobs = await (await restarted.get("/api/v1/jobs")).json()
    assert [j["id"] for j in jobs["jobs"]] == [job["id"]]  # generated once, in all
    for bad in ("", "x" * 256, "tab\tkey"):
        resp = await restarted.post("/api/v1/jobs", json={"prompt": "k"}, headers={"Idempotency-Key": bad})
        assert resp.status == 422


async def test_a_seed_of_minus_one_and_no_seed_are_the_same_request(client):
    first = await client.post("/api/v1/jobs", json={"prompt": "any seed", "steps": 1}, headers={"Idempotency-Key": "r-1"})
    assert first.status == 202
    for seed in (-1, None):
        again = await client.post(
            "/api/v1/jobs", json={"prompt": "any seed", "steps": 1, "seed": seed}, headers={"Idempotency-Key": "r-1"}
        )
        assert again.status == 200, await again.text()
        assert (await again.json())["id"] == (await first.json())["id"]


async def test_history_pages_through_many_jobs(make_client, settings):
    client = await make_client(settings.replace(queue_size=50))
    ids = []
    for n in range(25):
        resp = await client.post("/api/v1/jobs", json={"prompt": f"p{n}", "steps": 1, "width": 64, "height": 64})
        ids.append((await resp.json())["id"])
    await (await client.post("/api/v1/generate", json={"prompt": "last", "steps": 1})).json()
    seen, before = [], None
    while True:
        query = f"/api/v1/jobs?limit=10{f'&before={before}' if before else ''}"
        page = await (await client.get(query)).json()
        seen += [job["id"] for job in page["jobs"]]
        before = page["next_before"]
        if before is None:
            break
    assert seen[1:] == ids[::-1] and len(seen) == len(set(seen)) == 26


async def test_retention_removes_exactly_the_oldest_finished_jobs(make_client, settings):
    client = await make_client(settings)
    ids = [(await (await client.post("/api/v1/generate", json={"prompt": f"r{n}", "steps": 1})).json())["id"] for n in range(4)]
    await client.close()
    client = await make_client(settings.replace(retention_count=2))  # applied at start-up
    jobs = await (await client.get("/api/v1/jobs")).json()
    assert [job["id"] for job in jobs["jobs"]] == ids[:1:-1]
    assert output_files(settings.output_dir) == sorted(
        [f"images/{i}.png" for i in ids[2:]] + [f"metadata/{i}.json" for i in ids[2:]]
    )
    for gone in ids[:2]:
        assert (await client.get(f"/api/v1/jobs/{gone}")).status == 404
        assert (await client.get(f"/outputs/images/{gone}.png")).status == 404


async def test_missing_files_are_reported_and_stray_files_left_alone_at_start(make_client, settings):
    client = await make_client(settings)
    body = await (await client.post("/api/v1/generate", json={"prompt": "lost", "steps": 1})).json()
    kept = await (await client.post("/api/v1/generate", json={"prompt": "kept", "steps": 1})).json()
    await client.close()
    (settings.output_dir / "images" / f"{body['id']}.png").unlink()
    stray = settings.output_dir / "images" / ("f" * 32 + ".png")
    stray.write_bytes(b"not ours, and no metadata")
    folder = settings.output_dir / "images" / ("e" * 32 + ".png")
    folder.mkdir()  # a folder named like an output file
    client = await make_client(settings)
    lost = await (await client.get(f"/api/v1/jobs/{body['id']}")).json()
    assert lost["status"] == "failed" and lost["error"]["error"] == "output_missing"
    assert not {"image_url", "meta_url", "meta"} & set(lost)  # no dead links
    assert (await client.get(body["meta_url"])).status == 404  # never served half
    assert (settings.output_dir / "metadata" / f"{body['id']}.json").exists()  # but never deleted either
    assert stray.read_bytes() == b"not ours, and no metadata" and folder.is_dir()  # left alone
    assert (await (await client.get(f"/api/v1/jobs/{kept['id']}")).json())["status"] == "succeeded"


def _start(tiny_cache, output_dir) -> subprocess.CompletedProcess:
    env = {"MODEL_ID": "tiny", "TINY_CACHE": str(tiny_cache), "OUTPUT_DIR": str(output_dir), "PORT": str(free_port()),
           "HOST": "127.0.0.1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "sdxl_server"], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=120)


def test_a_damaged_database_is_a_clear_start_up_error(tmp_path, tiny_cache):
    output_dir = tmp_path / "outputs"
    output_dir.mkdir()
    (output_dir / "jobs.sqlite3").write_bytes(b"this is not a database" * 100)
    done = _start(tiny_cache, output_dir)
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("sdxl-server: error: the job database") and "is damaged" in last and "move it aside" in last


def test_a_database_from_a_newer_release_is_refused(tmp_path, tiny_cache):
    output_dir = tmp_path / "outputs"
    output_dir.mkdir()
    with sqlite3.connect(output_dir / "jobs.sqlite3") as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    done = _start(tiny_cache, output_dir)
    assert done.returncode == 2 and "is from a newer release" in done.stderr


@pytest.mark.slow(10)
def test_a_database_locked_by_another_program_is_a_clear_error(tmp_path, tiny_cache):
    output_dir = tmp_path / "outputs"
    output_dir.mkdir()
    other = sqlite3.connect(output_dir / "jobs.sqlite3", isolation_level=None)
    other.execute("PRAGMA journal_mode=DELETE")
    other.execute("BEGIN EXCLUSIVE")
    try:
        done = _start(tiny_cache, output_dir)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert done.returncode == 2 and "is locked by another program" in done.stderr


async def test_an_older_schema_is_migrated(make_client, settings):
    settings.output_dir.mkdir(parents=True)
    sqlite3.connect(settings.output_dir / "jobs.sqlite3").close()  # an empty database: schema version 0
    client = await make_client(settings)
    assert (await client.post("/api/v1/generate", json={"prompt": "migrated", "steps": 1})).status == 200
    with sqlite3.connect(settings.output_dir / "jobs.sqlite3") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert json.loads(db.execute("SELECT params FROM jobs").fetchone()[0])["prompt"] == "migrated"


async def test_a_success_is_recorded_before_the_client_hears_of_it(make_client, settings):
    client = await make_client(settings)
    body = await (await client.post("/api/v1/generate", json={"prompt": "recorded", "steps": 1})).json()
    with sqlite3.connect(settings.output_dir / "jobs.sqlite3") as db:
        status, result = db.execute("SELECT status, result FROM jobs WHERE id = ?", (body["id"],)).fetchone()
    assert status == "succeeded" and json.loads(result)["image_url"] == body["image_url"]


async def test_a_job_running_at_two_crashes_is_not_run_a_third_time(make_client, settings):
    from sdxl_server.jobs.store import JobStore

    store = JobStore(settings.jobs_db_path)
    await store.open()
    params = {"prompt": "crashes the server", "negative_prompt": "", "width": 64, "height": 64, "steps": 1,
              "guidance_scale": 7.0, "seed": 1, "scheduler": "default", "num_images": 1}
    await store.save({"id": "c" * 32, "status": "running", "params": params, "created_at": 1.0, "started_at": 2.0,
                      "step": 0, "total_steps": 1, "attempts": 2})
    await store.close()
    client = await make_client(settings)
    job = await (await client.get(f"/api/v1/jobs/{'c' * 32}")).json()
    assert job["status"] == "failed" and job["error"]["error"] == "interrupted"
    assert "stopped again" in job["error"]["message"]


async def test_retention_by_age_never_touches_queued_jobs(make_client, settings):
    from sdxl_server.jobs.store import JobStore

    client = await make_client(settings)
    old = (await (await client.post("/api/v1/generate", json={"prompt": "old", "steps": 1})).json())["id"]
    recent = (await (await client.post("/api/v1/generate", json={"prompt": "recent", "steps": 1})).json())["id"]
    await client.close()
    store = JobStore(settings.jobs_db_path)
    await store.open()
    ten_days_ago = 1_000_000.0
    record = await store.get(old)
    await store.save({**record, "created_at": ten_days_ago, "finished_at": ten_days_ago})
    params = {**record["params"], "prompt": "queued long ago"}
    await store.save({"id": "a" * 32, "status": "queued", "params": params, "created_at": ten_days_ago,
                      "step": 0, "total_steps": 1})
    await store.close()

    client = await make_client(settings.replace(retention_days=1))  # applied at start-up
    assert (await client.get(f"/api/v1/jobs/{old}")).status == 404
    assert not (settings.output_dir / "images" / f"{old}.png").exists()
    assert (await (await client.get(f"/api/v1/jobs/{recent}")).json())["status"] == "succeeded"
    ws = await client.ws_connect(f"/api/v1/ws?job={'a' * 32}")
    await events_until(ws, lambda e: e["type"] == "completed" or e.get("job", {}).get("status") == "succeeded")
    assert (await (await client.get(f"/api/v1/jobs/{'a' * 32}")).json())["status"] == "succeeded"


async def test_a_schema_1_database_keeps_its_jobs_and_gains_warnings(make_client, settings):
    """Schemas 2 and 3 add each job's warnings (what an A1111 request asked for and was not applied)
    and its owner: a job queued under schema 1 is kept (owned by the admin: no owner), runs, and
    the new columns are there for the next."""
    from sdxl_server.jobs.store import MIGRATIONS

    settings.output_dir.mkdir(parents=True)
    with sqlite3.connect(settings.output_dir / "jobs.sqlite3") as db:
        db.executescript(MIGRATIONS[0])
        db.execute("PRAGMA user_version = 1")
        params = {"prompt": "queued under schema 1", "negative_prompt": "", "width": 64, "height": 64, "steps": 1,
                  "guidance_scale": 7.0, "seed": 5}
        db.execute("INSERT INTO jobs (id, status, params, created_at) VALUES (?, 'queued', ?, ?)",
                   ("ab" * 16, json.dumps(params), 1.0))
    client = await make_client(settings)
    job = await client.app[keys.QUEUE].find("ab" * 16)
    await job.wait()
    assert job.status.value == "succeeded"
    body = {"prompt": "a lighthouse", "steps": 1, "width": 64, "height": 64, "restore_faces": True}
    info = json.loads((await (await client.post("/sdapi/v1/txt2img", json=body)).json())["info"])
    assert any("restore_faces" in warning for warning in info["warnings"])
    with sqlite3.connect(settings.output_dir / "jobs.sqlite3") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == len(MIGRATIONS)
        stored = [json.loads(w) for (w,) in db.execute("SELECT warnings FROM jobs WHERE warnings IS NOT NULL")]
    assert stored == [info["warnings"]]  # a job recovered after a crash writes them into its metadata too
    with sqlite3.connect(settings.output_dir / "jobs.sqlite3") as db:
        assert db.execute("SELECT owner FROM jobs WHERE id = ?", ("ab" * 16,)).fetchone() == (None,)
