"""Webhooks as a user meets them: a job's events POSTed to their receiver, signed, with the job's
images; the default webhook on every route; bad targets refused with the field named."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest
from doubles import GatedEngine
from live_server import LiveServer
from standardwebhooks import Webhook
from webhook_receiver import Receiver

from sdxl_server.api import keys

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
async def receiver():
    receiver = await Receiver().start()
    yield receiver
    await receiver.stop()


@pytest.fixture
def hooked(settings):
    return settings.replace(webhook_secret=SECRET, webhook_allow="127.0.0.1", webhook_progress_interval=0.1)


def verified(delivery) -> dict:
    """The payload, verified by the Standard Webhooks reference library (raises if it is not)."""
    return Webhook(SECRET).verify(delivery.body, delivery.headers)


async def until_delivered(client, job_id: str, count: int = 1, deadline_s: float = 30.0) -> dict:
    """The job once ``count`` of its deliveries are recorded as delivered (the receiver answers
    before the server records that); ``client`` has ``get(path)`` (a test client, or a session
    with its ``base_url``)."""
    end = time.monotonic() + deadline_s
    while True:
        body = await (await client.get(f"/api/v1/jobs/{job_id}")).json()
        states = [d["state"] for d in body["webhook"]["deliveries"]]
        if states.count("delivered") >= count or time.monotonic() > end:
            return body
        await asyncio.sleep(0.02)


async def test_a_finished_job_is_delivered_signed_with_its_images(make_client, hooked, receiver):
    client = await make_client(hooked)
    answer = await client.post("/api/v1/jobs", json={"prompt": "a lighthouse", "webhook": receiver.url + "/hook?token=abc"})
    assert answer.status == 202
    job_id = (await answer.json())["id"]
    delivery = await receiver.next()
    payload = verified(delivery)
    assert delivery.path == "/hook" and payload["type"] == "job.completed"
    job = payload["data"]
    assert job["id"] == job_id and job["status"] == "succeeded" and job["progress"] == 1.0
    base = f"http://{client.host}:{client.port}"
    assert job["image_url"].startswith(base + "/outputs/")
    image = await client.get(job["image_url"][len(base):])
    assert image.status == 200 and (await image.read()).startswith(b"\x89PNG")
    shown = await until_delivered(client, job_id)
    webhook = shown["webhook"]
    assert webhook["url"] == receiver.url + "/hook"  # the token in its query is not shown
    assert webhook["events"] == ["completed", "failed", "cancelled"]
    (state,) = webhook["deliveries"]
    assert state["id"] == delivery.headers["webhook-id"] and state["event"] == "completed"
    assert state["state"] == "delivered" and state["attempts"] == 1 and state["last_status"] == 200
    with pytest.raises(Exception):  # a body changed on the way no longer verifies
        Webhook(SECRET).verify(delivery.body.replace(b"succeeded", b"failed!!!"), delivery.headers)


async def test_every_event_asked_for_arrives_in_order(make_client, hooked, receiver):
    client = await make_client(hooked)
    events = ["queued", "started", "progress", "completed"]
    answer = await client.post("/api/v1/jobs", json={"prompt": "x", "steps": 3, "webhook": receiver.url, "webhook_events": events})
    job_id = (await answer.json())["id"]
    got = []
    while "job.completed" not in got:
        payload = verified(await receiver.next())
        assert payload["data"]["id"] == job_id
        got.append(payload["type"])
    assert got[0] == "job.queued" and got[1] == "job.started" and got[-1] == "job.completed"
    assert 1 <= got.count("job.progress") <= 3  # throttled, the first one sent
    ids = [d.headers["webhook-id"] for d in receiver.received]
    assert len(set(ids)) == len(ids)


async def test_the_generate_route_takes_a_webhook_too(make_client, hooked, receiver):
    client = await make_client(hooked)
    answer = await client.post("/api/v1/generate", json={"prompt": "x", "webhook": receiver.url, "webhook_events": ["started"]})
    assert answer.status == 200
    payload = verified(await receiver.next())
    assert payload["type"] == "job.started" and payload["data"]["id"] == (await answer.json())["id"]


async def test_the_server_default_reaches_the_openai_and_a1111_routes(make_client, hooked, receiver):
    client = await make_client(hooked.replace(webhook_url=receiver.url + "/default"))
    answer = await client.post("/v1/images/generations", json={"prompt": "x", "size": "256x256"})
    assert answer.status == 200
    openai = verified(await receiver.next())
    assert openai["type"] == "job.completed" and openai["data"]["image_url"].startswith("http://")
    answer = await client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64})
    assert answer.status == 200
    a1111 = verified(await receiver.next())
    assert a1111["type"] == "job.completed" and a1111["data"]["id"] != openai["data"]["id"]
    assert {d.path for d in receiver.received} == {"/default"}


async def test_a_keys_own_webhook_comes_before_the_servers(make_client, hooked, receiver, tmp_path):
    """A key of KEYS_FILE may name its own default webhook: its jobs on every route report there;
    another key's go to the server's WEBHOOK_URL; a request's own webhook still wins."""
    from sdxl_server.api.key_file import hash_text

    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(
        f'[keys.bot]\nhash = "{hash_text("bot-secret-key")}"\nwebhook = "{receiver.url}/bot"\n'
        f'[keys.app]\nhash = "{hash_text("app-secret-key")}"\n'
    )
    client = await make_client(hooked.replace(keys_file=keys_file, webhook_url=receiver.url + "/server"))
    bot, app = ({"Authorization": f"Bearer {key}"} for key in ("bot-secret-key", "app-secret-key"))
    body = {"prompt": "x", "steps": 2, "width": 64, "height": 64}
    assert (await client.post("/sdapi/v1/txt2img", json=body, headers=bot)).status == 200
    assert (await receiver.next()).path == "/bot"
    assert (await client.post("/api/v1/jobs", json=body, headers=app)).status == 202
    assert (await receiver.next()).path == "/server"
    answer = await client.post("/api/v1/jobs", json={**body, "webhook": receiver.url + "/own"}, headers=bot)
    assert answer.status == 202 and (await receiver.next()).path == "/own"


@pytest.mark.parametrize("url, reason", [
    ("not a url", "not an http"),
    ("ftp://example.com/hook", "not an http"),
    ("file:///etc/passwd", "not an http"),
    ("http://10.1.2.3/hook", "private"),
    ("http://192.168.1.1/hook", "private"),
    ("http://127.0.0.1:9/hook", "loopback"),
    ("http://[::1]/hook", "loopback"),
    ("http://169.254.169.254/latest/meta-data", "cloud metadata"),
    ("http://[fd00:ec2::254]/", "cloud metadata"),
    ("http://[::ffff:10.0.0.1]/", "private"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://localhost:8080/", "loopback"),
])
async def test_unusable_webhooks_are_refused_naming_the_field(client, url, reason):
    answer = await client.post("/api/v1/jobs", json={"prompt": "x", "webhook": url})
    body = await answer.json()
    assert answer.status == 422, body
    assert "webhook" in body["fields"] and reason in body["message"]


@pytest.mark.parametrize("fields, named", [
    ({"webhook": "https://example.com/h", "webhook_events": ["finished"]}, "webhook_events"),
    ({"webhook": "https://example.com/h", "webhook_events": []}, "webhook_events"),
    ({"webhook_events": ["completed"]}, "webhook_events"),
    ({"webhook": 42}, "webhook"),
    ({"webhook": "https://example.com/" + "x" * 3000}, "webhook"),
])
async def test_bad_webhook_fields_are_refused(client, fields, named):
    answer = await client.post("/api/v1/jobs", json={"prompt": "x", **fields})
    assert answer.status == 422
    assert named in (await answer.json())["fields"]


async def test_a_job_without_a_webhook_shows_none_and_sends_nothing(client):
    job = await (await client.post("/api/v1/generate", json={"prompt": "x"})).json()
    body = await (await client.get(f"/api/v1/jobs/{job['id']}")).json()
    assert "webhook" not in body
    rows = await client.app[keys.JOB_STORE].run(lambda db: db.execute("SELECT COUNT(*) FROM webhook_deliveries").fetchone()[0])
    assert rows == 0


async def test_a_failing_receiver_is_retried_with_the_same_id(make_client, hooked, receiver):
    receiver.answers = [500]
    client = await make_client(hooked)
    answer = await client.post("/api/v1/jobs", json={"prompt": "x", "webhook": receiver.url})
    job_id = (await answer.json())["id"]
    first = await receiver.next()
    body = await until_delivered(client, job_id, deadline_s=0.0)
    assert body["webhook"]["deliveries"][0]["state"] in ("pending", "delivered")
    second = await receiver.next(timeout=30)  # the first retry comes after a few seconds
    assert second.headers["webhook-id"] == first.headers["webhook-id"]
    verified(second)
    shown = (await until_delivered(client, job_id))["webhook"]["deliveries"][0]
    assert shown["state"] == "delivered" and shown["attempts"] == 2


async def test_a_failed_and_a_cancelled_job_say_so(make_client, hooked, receiver):
    client = await make_client(hooked, engine_factory=lambda s: GatedEngine(s))
    engine = client.app[keys.ENGINE]
    hook = {"webhook": receiver.url, "webhook_events": ["failed", "cancelled"]}
    running = (await (await client.post("/api/v1/jobs", json={"prompt": "runs", **hook})).json())["id"]
    await asyncio.to_thread(engine.entered.acquire)
    waiting = (await (await client.post("/api/v1/jobs", json={"prompt": "waits", **hook})).json())["id"]
    assert (await client.delete(f"/api/v1/jobs/{waiting}")).status == 200
    cancelled = verified(await receiver.next())
    assert cancelled["type"] == "job.cancelled" and cancelled["data"]["id"] == waiting
    assert cancelled["data"]["status"] == "cancelled"
    engine.pipe.unet.forward = None  # the running job's generation now fails
    engine.gate.set()
    failed = verified(await receiver.next())
    assert failed["type"] == "job.failed" and failed["data"]["id"] == running
    assert failed["data"]["status"] == "failed" and failed["data"]["error"]["error"]


def test_the_payload_is_json_of_the_job(settings):
    from sdxl_server.jobs.webhooks import _absolute

    body = {"image_url": "/outputs/a.png", "images": [{"image_url": "/outputs/a.png", "meta_url": "https://cdn/x.json"}]}
    fixed = _absolute(body, "https://img.example.com")
    assert fixed["image_url"] == "https://img.example.com/outputs/a.png"
    assert fixed["images"][0] == {"image_url": "https://img.example.com/outputs/a.png", "meta_url": "https://cdn/x.json"}
    assert json.loads(json.dumps(fixed)) == fixed


@pytest.mark.slow(15)
async def test_a_delivery_cut_by_sigkill_is_made_after_the_restart(tiny_cache, tmp_path, receiver):
    """The server is killed after the job has ended, while its webhook is being sent (the receiver
    has the request and has not answered): the next start sends it again, with the same id."""
    receiver.hang = True
    env = {"WEBHOOK_ALLOW": "127.0.0.1", "WEBHOOK_SECRET": SECRET, "WEBHOOK_TIMEOUT": "120"}
    server = await asyncio.to_thread(LiveServer(tiny_cache, tmp_path / "out", **env).wait_ready)
    try:
        async with aiohttp.ClientSession() as session:
            answer = await session.post(f"{server.url}/api/v1/jobs", json={"prompt": "x", "webhook": receiver.url + "/hook"})
            job_id = (await answer.json())["id"]
            cut = await receiver.next(timeout=120)
    finally:
        server.process.kill()  # SIGKILL: no shutdown, nothing flushed
        await asyncio.to_thread(server.stop)
    assert verified(cut)["data"]["status"] == "succeeded"
    receiver.hang = False
    receiver.release.set()
    server = await asyncio.to_thread(LiveServer(tiny_cache, tmp_path / "out", **env).wait_ready)
    try:
        again = await receiver.next(timeout=120)
        assert again.headers["webhook-id"] == cut.headers["webhook-id"]
        assert verified(again)["data"]["id"] == job_id
        async with aiohttp.ClientSession(base_url=server.url) as session:
            (delivery,) = (await until_delivered(session, job_id))["webhook"]["deliveries"]
        assert delivery["state"] == "delivered" and delivery["attempts"] == 1  # the cut attempt was never recorded
    finally:
        await asyncio.to_thread(server.stop)
    assert [d.headers["webhook-id"] for d in receiver.received] == [cut.headers["webhook-id"]] * 2
