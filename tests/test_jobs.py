"""Jobs as resources: submit, look up, list, cancel; positions and estimates."""

from __future__ import annotations

import asyncio

from doubles import GatedEngine, PausingEngine
from files import output_files
from wsclient import events_until, events_until_terminal

from sdxl_server.api import keys


def _files(settings):
    return sorted(name.split("/")[1] for name in output_files(settings.output_dir))


async def _submit(client, **body):
    resp = await client.post("/api/v1/jobs", json={"prompt": "job", **body})
    assert resp.status == 202, await resp.text()
    return resp, await resp.json()


async def _entered(engine) -> None:
    await asyncio.get_running_loop().run_in_executor(None, engine.entered.acquire)


async def test_submit_returns_202_then_the_job_succeeds(client):
    ws = await client.ws_connect("/api/v1/ws")
    await ws.receive_json()  # snapshot
    resp, job = await _submit(client, steps=2, seed=9)
    assert resp.headers["Location"] == f"/api/v1/jobs/{job['id']}"
    assert job["status"] == "queued" and job["position"] == 1
    assert job["step"] == 0 and job["total_steps"] == 2 and job["progress"] == 0.0
    assert job["params"]["seed"] == 9 and job["created_at"] > 0
    await events_until_terminal(ws, job["id"])

    resp = await client.get(resp.headers["Location"])
    assert resp.status == 200
    done = await resp.json()
    assert done["status"] == "succeeded" and done["position"] is None
    assert done["step"] == 2 and done["progress"] == 1.0
    assert done["started_at"] >= done["created_at"] and done["finished_at"] >= done["started_at"]
    assert done["image_url"] == f"/outputs/images/{job['id']}.png" and done["meta"]["seed"] == 9
    assert (await client.get(done["image_url"])).status == 200


async def test_blocking_generate_is_a_job_too(client):
    resp = await client.post("/api/v1/generate", json={"prompt": "blocking", "steps": 1})
    generated = await resp.json()
    job = await (await client.get(f"/api/v1/jobs/{generated['id']}")).json()
    assert job["status"] == "succeeded" and job["image_url"] == generated["image_url"]


async def test_list_is_newest_first_with_limit_and_status(client):
    ids = []
    for n in range(3):
        resp = await client.post("/api/v1/generate", json={"prompt": f"n{n}", "steps": 1})
        ids.append((await resp.json())["id"])
    listed = await (await client.get("/api/v1/jobs")).json()
    assert [j["id"] for j in listed["jobs"]] == ids[::-1]
    limited = await (await client.get("/api/v1/jobs?limit=2")).json()
    assert [j["id"] for j in limited["jobs"]] == ids[:0:-1]
    none = await (await client.get("/api/v1/jobs?status=failed")).json()
    assert none["jobs"] == []
    for bad in ("limit=0", "limit=101", "limit=x", "status=done", "other=1", "before=99999999999999999999999"):
        resp = await client.get(f"/api/v1/jobs?{bad}")
        assert resp.status == 422
        assert bad.split("=")[0] in (await resp.json())["fields"]


async def test_unknown_ids_are_404_and_finished_jobs_409(client):
    for method, path in (("GET", "/api/v1/jobs/nope"), ("DELETE", "/api/v1/jobs/nope"), ("GET", "/api/v1/ws?job=nope")):
        resp = await client.request(method, path)
        assert resp.status == 404
        body = await resp.json()
        assert body["error"] == "not_found" and "nope" in body["message"]
    resp = await client.post("/api/v1/generate", json={"prompt": "done", "steps": 1})
    job_id = (await resp.json())["id"]
    resp = await client.delete(f"/api/v1/jobs/{job_id}")
    assert resp.status == 409
    assert (await resp.json())["error"] == "conflict"


async def test_cancel_a_queued_job_only_and_positions_move(make_client, settings):
    client = await make_client(settings.replace(queue_size=3), engine_factory=GatedEngine)
    engine = client.app[keys.ENGINE]
    ws = await client.ws_connect("/api/v1/ws")
    await ws.receive_json()
    _, running = await _submit(client, steps=1)
    await _entered(engine)
    _, second = await _submit(client, steps=1)
    _, third = await _submit(client, steps=1)
    assert (second["position"], third["position"]) == (1, 2)

    resp = await client.delete(f"/api/v1/jobs/{second['id']}")
    assert resp.status == 200
    cancelled = await resp.json()
    assert cancelled["status"] == "cancelled" and cancelled["position"] is None
    third_now = await (await client.get(f"/api/v1/jobs/{third['id']}")).json()
    assert third_now["position"] == 1

    events = await events_until(ws, lambda e: e["type"] == "position" and e["id"] == third["id"] and e["position"] == 1)
    assert any(e["type"] == "cancelled" and e["id"] == second["id"] for e in events)

    engine.gate.set()
    await events_until_terminal(ws, third["id"])
    for job in (running, third):
        assert (await (await client.get(f"/api/v1/jobs/{job['id']}")).json())["status"] == "succeeded"
    assert f"{second['id']}.png" not in _files(settings)


async def test_cancel_a_running_job_stops_it_without_files_and_the_worker_moves_on(make_client, settings):
    client = await make_client(settings, engine_factory=lambda s: PausingEngine(s, pause_after=2))
    ws = await client.ws_connect("/api/v1/ws")
    await ws.receive_json()
    _, job = await _submit(client, steps=5)
    await events_until(ws, lambda e: e["type"] == "progress" and e["step"] == 2)

    resp = await client.delete(f"/api/v1/jobs/{job['id']}")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "cancelled" and body["step"] == 2
    events = await events_until_terminal(ws, job["id"])
    assert [e["type"] for e in events] == ["cancelled"]
    assert _files(settings) == []

    resp = await client.post("/api/v1/generate", json={"prompt": "next", "steps": 1})
    assert resp.status == 200


async def test_a_cancelled_blocking_request_answers_409(make_client, settings):
    client = await make_client(settings, engine_factory=GatedEngine)
    engine = client.app[keys.ENGINE]
    blocking = asyncio.create_task(client.post("/api/v1/generate", json={"prompt": "to cancel", "steps": 1}))
    await _entered(engine)
    job_id = client.app[keys.QUEUE].running.id
    deleted = await client.delete(f"/api/v1/jobs/{job_id}")  # the gated job stops at its first step
    assert deleted.status == 200
    resp = await blocking
    assert resp.status == 409
    assert (await resp.json())["error"] == "cancelled"


async def test_estimates_come_from_measured_speed_and_tighten(make_client, settings):
    client = await make_client(settings.replace(queue_size=2), engine_factory=GatedEngine)
    engine = client.app[keys.ENGINE]
    engine.gate.set()
    resp = await client.post("/api/v1/generate", json={"prompt": "measure", "steps": 4})  # learn this machine's speed
    assert resp.status == 200
    engine.gate.clear()

    ws = await client.ws_connect("/api/v1/ws")
    await ws.receive_json()
    _, first = await _submit(client, steps=8)
    await _entered(engine)
    _, second = await _submit(client, steps=8)
    assert second["eta_s"] > 0
    assert second["estimated_start_at"] < second["estimated_finish_at"]

    engine.gate.set()
    events = await events_until_terminal(ws, first["id"])
    progress = [e for e in events if e["type"] == "progress" and e["id"] == first["id"]]
    assert [e["step"] for e in progress] == list(range(1, 9))
    assert all(e["eta_s"] is not None for e in progress)
    assert progress[-1]["eta_s"] < progress[0]["eta_s"]
    assert progress[-1]["elapsed_s"] > progress[0]["elapsed_s"]
    await events_until_terminal(ws, second["id"])
