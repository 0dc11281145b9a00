"""BACKEND=ray on a real local Ray (not Serve's local testing mode) with two CPU replicas: jobs run
at the same time with their progress in order, a cancel stops the replica that runs the job, a
replica killed mid-job ends that job exactly once, and a burst beyond the queue gets 429s with
nothing lost. Marked ``ray`` (skip with ``-m "not ray"``); skipped when Ray is not installed."""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import subprocess
import sys

import pytest

pytest.importorskip("ray.serve", reason="BACKEND=ray needs the ray extra: pip install -e '.[ray]'")

import doubles
import ray
from doubles import FileGatedEngine
from files import output_files
from live_server import LiveServer
from wsclient import TERMINAL, events_until, next_event

from sdxl_server.api import keys
from sdxl_server.jobs.ray_backend import RayCluster

pytestmark = [pytest.mark.ray, pytest.mark.slow(25)]

HOLD_AT = 2  # held jobs wait after this step until the gate file exists


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray for the module (the server joins it rather than starting its own)."""
    ray.cloudpickle.register_pickle_by_value(doubles)  # the replicas cannot import tests/
    ray.init(address="local", num_cpus=4, include_dashboard=False, namespace="sdxl_server", log_to_driver=False)
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture
def ray_settings(settings, local_ray, tmp_path):
    return settings.replace(
        backend="ray", ray_replicas=2, ray_gpus_per_replica=0.0, queue_size=2, default_steps=6, max_steps=20
    )


@pytest.fixture
def gate(tmp_path):
    return tmp_path / "gate"


async def _ray_client(make_client, settings, gate):
    factory = functools.partial(FileGatedEngine, gate=str(gate), hold_at=HOLD_AT)
    return await make_client(settings, engine_factory=lambda s: RayCluster(s, replica_engine=factory))


@pytest.fixture
async def ray_client(make_client, ray_settings, gate):
    client = await _ray_client(make_client, ray_settings, gate)
    assert client.app[keys.ENGINE].state == "ready"  # deployed at start-up (PRELOAD)
    return client


async def _submit(client, prompt: str, **extra) -> str:
    resp = await client.post("/api/v1/jobs", json={"prompt": prompt, **extra})
    assert resp.status == 202, await resp.text()
    return (await resp.json())["id"]


async def _held(ws, job_ids: set[str]) -> list[dict]:
    """Events until every job in ``job_ids`` has reported the step it is held after."""
    waiting = set(job_ids)
    return await events_until(
        ws, lambda e: e["type"] == "progress" and e["step"] == HOLD_AT and not waiting.discard(e["id"]) and not waiting
    )


async def _until_all_end(ws, job_ids: set[str]) -> list[dict]:
    left = set(job_ids)
    return await events_until(ws, lambda e: e["type"] in TERMINAL and not left.discard(e["id"]) and not left)


def _steps(events: list[dict], job_id: str) -> list[int]:
    return [e["step"] for e in events if e["id"] == job_id and e["type"] == "progress"]


async def test_two_jobs_run_at_once_with_their_progress_in_order_and_a_burst_beyond_the_queue_gets_429s(ray_client, gate):
    ws = await ray_client.ws_connect("/api/v1/ws")
    await next_event(ws)  # snapshot
    first, second = await _submit(ray_client, "hold one"), await _submit(ray_client, "hold two")
    events = await _held(ws, {first, second})  # both at step 2 at once: neither can finish before the gate opens
    placements = ray_client.app[keys.ENGINE].placements
    assert placements[first]["pid"] != placements[second]["pid"]  # one replica each
    health = await (await ray_client.get("/health")).json()
    assert sorted(health["queue"]["running_jobs"]) == sorted([first, second]) and health["queue"]["concurrency"] == 2

    burst = await asyncio.gather(*(ray_client.post("/api/v1/jobs", json={"prompt": f"burst {n}"}) for n in range(6)))
    accepted = [(await r.json())["id"] for r in burst if r.status == 202]
    refused = [r for r in burst if r.status == 429]
    assert len(accepted) == 2 and len(refused) == 4  # QUEUE_SIZE=2 wait behind the two busy replicas
    assert all(int(r.headers["Retry-After"]) >= 1 for r in refused)
    assert {(await r.json())["error"] for r in refused} == {"queue_full"}

    gate.touch()
    everyone = {first, second, *accepted}
    events += await _until_all_end(ws, everyone)
    assert sorted(e["id"] for e in events if e["type"] in TERMINAL) == sorted(everyone)  # each ends once
    for job_id in everyone:
        assert _steps(events, job_id) == list(range(1, 7))  # every step, in order, over the wire
        job = await (await ray_client.get(f"/api/v1/jobs/{job_id}")).json()
        assert job["status"] == "succeeded"
        png = await ray_client.get(job["image_url"])
        assert png.status == 200 and (await png.read()).startswith(b"\x89PNG")  # nothing lost
    jobs = [await (await ray_client.get(f"/api/v1/jobs/{job_id}")).json() for job_id in (first, second)]
    starts, ends = [j["started_at"] for j in jobs], [j["finished_at"] for j in jobs]
    assert max(starts) < min(ends)  # their running intervals overlap


async def test_cancel_stops_the_replica_within_a_few_steps_and_it_takes_the_next_job(make_client, ray_settings, gate):
    ray_client = await _ray_client(make_client, ray_settings.replace(preload=False), gate)
    health = await ray_client.get("/health")
    assert health.status == 200 and (await health.json())["model"]["state"] == "not_loaded"  # deployed on first use
    ws = await ray_client.ws_connect("/api/v1/ws")
    await next_event(ws)
    cancelled, kept = await _submit(ray_client, "hold cancelled"), await _submit(ray_client, "hold kept")
    events = await _held(ws, {cancelled, kept})
    placements = ray_client.app[keys.ENGINE].placements
    freed = placements[cancelled]["pid"]
    following = await _submit(ray_client, "runs next")  # both replicas are busy: it waits
    assert (await ray_client.delete(f"/api/v1/jobs/{cancelled}")).status in (200, 202)
    events += await events_until(ws, lambda e: e["id"] == following and e["type"] == "started")
    assert [e["type"] for e in events if e["id"] == cancelled][-1] == "cancelled"
    assert max(_steps(events, cancelled)) <= HOLD_AT + 1  # stopped at its next step, not run to the end
    events += await _until_all_end(ws, {following})
    made = await (await ray_client.get(f"/api/v1/jobs/{following}")).json()
    assert made["meta"]["replica"]["pid"] == freed  # the cancelled job's replica took it
    assert _steps(events, following) == list(range(1, 7))  # the freed replica ran it while "kept" still holds
    assert (await (await ray_client.get(f"/api/v1/jobs/{kept}")).json())["status"] == "running"
    gate.touch()
    events += await _until_all_end(ws, {kept})
    ends = [e["type"] for e in events if e["id"] == cancelled and e["type"] in TERMINAL]
    assert ends == ["cancelled"]
    assert not [name for name in output_files(ray_client.app[keys.SETTINGS].output_dir) if cancelled in name]


async def test_a_replica_killed_mid_job_ends_that_job_exactly_once_and_the_next_jobs_complete(ray_client, gate):
    ws = await ray_client.ws_connect("/api/v1/ws")
    await next_event(ws)
    lost = await _submit(ray_client, "hold lost")
    events = await _held(ws, {lost})
    pid = ray_client.app[keys.ENGINE].placements[lost]["pid"]
    os.kill(pid, signal.SIGKILL)  # the replica's process dies mid-job, as on a lost GPU node
    events += await events_until(ws, lambda e: e["id"] == lost and e["type"] == "queued")
    assert events[-1]["error"]["error"] == "interrupted"  # requeued by the crash rules: a second attempt
    gate.touch()
    after = [await _submit(ray_client, f"after {n}") for n in range(2)]
    events += await _until_all_end(ws, {lost, *after})
    for job_id in (lost, *after):
        assert [e["type"] for e in events if e["id"] == job_id and e["type"] in TERMINAL] == ["completed"]
    job = await (await ray_client.get(f"/api/v1/jobs/{lost}")).json()
    record = await ray_client.app[keys.JOB_STORE].get(lost)
    assert job["status"] == "succeeded" and record["attempts"] == 2  # one interrupted start, one that finished
    assert ray_client.app[keys.ENGINE].placements == {}


def test_an_unreachable_cluster_stops_start_up_with_one_clear_line_and_exit_2(tmp_path):
    environ = {**os.environ, "BACKEND": "ray", "RAY_ADDRESS": "127.0.0.1:9", "MODEL_ID": "tiny",
               "OUTPUT_DIR": str(tmp_path / "outputs"), "PORT": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "sdxl_server"], env=environ, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert errors == [(
        "sdxl-server: error: RAY_ADDRESS=127.0.0.1:9: no Ray cluster answers at 127.0.0.1:9 within 5s "
        "(Connection refused); start one (ray start --head) or fix the address"
    )]


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process tree from /proc")
def test_sigterm_drains_the_running_job_and_leaves_no_ray_process_behind(tiny_cache, tmp_path):
    server = LiveServer(tiny_cache, tmp_path / "outputs", BACKEND="ray", RAY_REPLICAS="1", RAY_GPUS_PER_REPLICA="0",
                        MAX_STEPS="100")
    try:
        server.wait_for_log(r"replica\(s\) of tiny ready in", r"Running on http://127\.0\.0\.1")
        status, job = server.request("POST", "/api/v1/jobs", {"prompt": "drained", "steps": 100, "width": 128, "height": 128})
        assert status == 202
        server.wait_for_log(rf"job {job['id']} runs on replica")
        ray_processes = _descendants(server.process.pid)
        assert ray_processes  # the local Ray this server started
        server.terminate()
        assert server.exit_code() == 0
    finally:
        server.stop()
    assert f"images/{job['id']}.png" in output_files(tmp_path / "outputs")  # it finished within the grace period
    assert [pid for pid in ray_processes if _alive(pid)] == []


async def test_per_key_limits_and_the_fair_queue_work_the_same_on_ray(make_client, ray_settings, gate, tmp_path):
    """Admission and fairness stay in the front end: key alice (one job running at once) fills
    neither replica twice, bob's job takes the other replica ahead of alice's waiting ones, and
    each key's GPU-seconds are measured while its jobs held a replica."""
    from test_limits import ALICE, BOB, bearer
    from test_limits import keys_file as write_keys

    path = write_keys(tmp_path / "keys.toml", "running = 1")
    client = await _ray_client(make_client, ray_settings.replace(keys_file=path, queue_size=4), gate)
    ws = await client.ws_connect("/api/v1/ws", headers=bearer(ALICE))
    await next_event(ws)  # snapshot
    alice = [(await (await client.post("/api/v1/jobs", json={"prompt": f"hold {n}"}, headers=bearer(ALICE))).json())["id"]
             for n in range(3)]
    bob = (await (await client.post("/api/v1/jobs", json={"prompt": "hold bob"}, headers=bearer(BOB))).json())["id"]
    bobs_ws = await client.ws_connect("/api/v1/ws", headers=bearer(BOB))
    await next_event(bobs_ws)
    await _held(ws, {alice[0]})
    await _held(bobs_ws, {bob})  # bob's job runs on the second replica while alice's others wait
    assert sorted(job.id for job in client.app[keys.QUEUE].running_jobs) == sorted([alice[0], bob])
    second = await (await client.get(f"/api/v1/jobs/{alice[1]}", headers=bearer(ALICE))).json()
    assert second["status"] == "queued" and second["position"] == 1
    gate.touch()
    await _until_all_end(ws, set(alice))
    usage = await (await client.get("/api/v1/usage", headers=bearer(ALICE))).json()
    (day,) = usage["keys"][0]["days"].values()
    assert day["jobs"] == 3 and day["gpu_seconds"] > 0
