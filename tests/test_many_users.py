"""Many users on one server (KEYS_FILE), against a real server process with several keys: each
key sees, lists, follows, cancels and fetches only its own jobs and files; admin sees all; the
A1111 progress and interrupt act on the caller's jobs; output URLs are signed; the keys file is
read again when it changes; a bad key is one 401 whatever was wrong with it."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time

import aiohttp
import pytest
from live_server import LiveServer

from sdxl_server.api.key_file import hash_text
from sdxl_server.api.signed_urls import SECRET_FILE_NAME
from sdxl_server.tools.keys_cli import main as keys_main

ALICE, BOB, OPS, DAVE, LEGACY = "sdxl-alice-key", "sdxl-bob-key", "sdxl-ops-key", "sdxl-dave-key", "legacy-admin-key"
KEYS = {"alice": ALICE, "bob": BOB, "ops": OPS, "dave": DAVE}


def keys_text(extra: str = "") -> str:
    tables = [f'[keys.{name}]\nhash = "{hash_text(secret)}"\n' + ('scopes = ["admin"]\n' if name == "ops" else "")
              for name, secret in KEYS.items()]
    return "# the team's keys\n" + "\n".join(tables) + extra


@pytest.fixture(scope="module")
def server(tiny_cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("many-users")
    keys_file = root / "keys.toml"
    keys_file.write_text(keys_text())
    live = LiveServer(tiny_cache, root / "outputs", KEYS_FILE=str(keys_file), API_KEY=LEGACY,
                      MAX_STEPS="1000", QUEUE_SIZE="20").wait_ready()
    live.keys_file = keys_file
    yield live
    live.stop()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def http(server):
    async with aiohttp.ClientSession(server.url) as session:
        yield session


async def call(http, method: str, path: str, key: str | None = None, body=None, headers=None) -> tuple[int, object]:
    async with http.request(method, path, json=body, headers={**(bearer(key) if key else {}), **(headers or {})}) as response:
        text = await response.text()
        return response.status, (json.loads(text) if text and response.content_type == "application/json" else text)


async def generate(http, key: str, prompt: str, **extra) -> dict:
    status, body = await call(http, "POST", "/api/v1/generate", key, {"prompt": prompt, "steps": 2, **extra})
    assert status == 200, body
    return body


async def test_a_key_sees_lists_gets_and_cancels_only_its_own_jobs(server, http):
    mine = await generate(http, ALICE, "alice's lighthouse")
    theirs = await generate(http, BOB, "bob's secret garden")
    status, listed = await call(http, "GET", "/api/v1/jobs?limit=100", ALICE)
    assert status == 200 and mine["id"] in [job["id"] for job in listed["jobs"]]
    assert theirs["id"] not in json.dumps(listed) and "secret garden" not in json.dumps(listed)
    assert (await call(http, "GET", f"/api/v1/jobs/{mine['id']}", ALICE))[0] == 200
    absent = await call(http, "GET", "/api/v1/jobs/0123456789abcdef0123456789abcdef", ALICE)
    other = await call(http, "GET", f"/api/v1/jobs/{theirs['id']}", ALICE)
    assert other[0] == absent[0] == 404 and other[1]["error"] == absent[1]["error"] == "not_found"
    assert theirs["id"] in other[1]["message"] and "secret" not in json.dumps(other[1])
    assert (await call(http, "DELETE", f"/api/v1/jobs/{theirs['id']}", ALICE))[0] == 404
    # bob queues a job behind a long one of his; alice cannot cancel it, bob can
    long = await call(http, "POST", "/api/v1/jobs", BOB, {"prompt": "long", "steps": 400})
    queued = await call(http, "POST", "/api/v1/jobs", BOB, {"prompt": "queued", "steps": 2})
    assert (await call(http, "DELETE", f"/api/v1/jobs/{queued[1]['id']}", ALICE))[0] == 404
    assert (await call(http, "DELETE", f"/api/v1/jobs/{queued[1]['id']}", BOB))[1]["status"] == "cancelled"
    assert (await call(http, "DELETE", f"/api/v1/jobs/{long[1]['id']}", BOB))[0] in (200, 202)
    for admin in (OPS, LEGACY):  # a key with the admin scope, and the single API_KEY: every owner's jobs
        listed = json.dumps((await call(http, "GET", "/api/v1/jobs?limit=100", admin))[1])
        assert mine["id"] in listed and theirs["id"] in listed
        assert (await call(http, "GET", f"/api/v1/jobs/{theirs['id']}", admin))[0] == 200


async def test_an_idempotency_key_is_the_keys_own(server, http):
    body = {"prompt": "once", "steps": 2, "seed": 7}
    first = await call(http, "POST", "/api/v1/jobs", ALICE, body, {"Idempotency-Key": "order-1"})
    again = await call(http, "POST", "/api/v1/jobs", ALICE, body, {"Idempotency-Key": "order-1"})
    assert first[0] == 202 and again[0] == 200 and again[1]["id"] == first[1]["id"]  # alice's retry
    bobs = await call(http, "POST", "/api/v1/jobs", BOB, body, {"Idempotency-Key": "order-1"})
    assert bobs[0] == 202 and bobs[1]["id"] != first[1]["id"]  # bob's own job: alice's is not his to see
    other = await call(http, "POST", "/api/v1/jobs", DAVE, {**body, "seed": 8}, {"Idempotency-Key": "order-1"})
    assert other[0] == 202  # no conflict with a key another owner used


async def test_output_urls_are_signed_and_only_a_good_signature_reads_the_file(server, http):
    mine = await generate(http, ALICE, "a signed picture")
    theirs = await generate(http, BOB, "another picture")
    url = mine["image_url"]
    path, _, query = url.partition("?")
    assert path.startswith("/outputs/images/") and "expires=" in query and "sig=" in query
    async with http.get(url) as response:  # no header: an <img> tag, an OpenAI client
        assert response.status == 200 and (await response.read()).startswith(b"\x89PNG")
        assert response.headers["Cache-Control"].startswith("private")
    async with http.get(mine["meta_url"]) as response:
        assert response.status == 200 and (await response.json())["prompt"] == "a signed picture"
    other_path = theirs["image_url"].partition("?")[0]
    refused = [path, f"{path}?{query.replace('sig=', 'sig=A')}", f"{other_path}?{query}",
               f"/outputs/images/00000000000000000000000000000000.png?{query}",
               f"{path}?{query}".replace("expires=", "expires=9")]
    answers = set()
    for bad in refused:
        async with http.get(bad) as response:
            answers.add((response.status, await response.text()))
    assert len(answers) == 1 and next(iter(answers))[0] == 403  # the same answer, file or none
    # A signature made with the server's own secret, for an expiry in the past: replayed too late.
    secret = bytes.fromhex((server.output_dir / SECRET_FILE_NAME).read_text().strip())
    expired = int(time.time()) - 5
    mac = hmac.new(secret, f"{path}\n{expired}".encode(), hashlib.sha256).digest()
    signature = base64.urlsafe_b64encode(mac).decode().rstrip("=")
    async with http.get(f"{path}?expires={expired}&sig={signature}") as response:
        assert (response.status, await response.text()) == next(iter(answers))
    log = server.log_text()
    assert "GET /outputs/images/" in log and query.partition("sig=")[2] not in log  # the access log hides it
    assert all(key not in log for key in KEYS.values())
    # the OpenAI route's URLs are signed too: its clients fetch them without headers
    status, body = await call(http, "POST", "/v1/images/generations", ALICE, {"prompt": "openai", "response_format": "url"})
    assert status == 200
    async with http.get(body["data"][0]["url"]) as response:
        assert response.status == 200


async def ws_events(http, key: str, job: str | None = None):
    query = f"?job={job}" if job else ""
    return await http.ws_connect(f"/api/v1/ws{query}", headers=bearer(key))


async def test_a_key_follows_only_its_own_jobs_on_the_websocket(server, http):
    mine = await generate(http, ALICE, "followed")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await ws_events(http, BOB, mine["id"])
    assert refused.value.status == 404
    async with await ws_events(http, BOB) as bob_ws, await ws_events(http, OPS) as ops_ws:
        assert (await bob_ws.receive_json())["type"] == "snapshot"
        assert (await ops_ws.receive_json())["type"] == "snapshot"
        alice_job = (await call(http, "POST", "/api/v1/jobs", ALICE, {"prompt": "alice's", "steps": 2}))[1]
        bob_job = (await call(http, "POST", "/api/v1/jobs", BOB, {"prompt": "bob's", "steps": 2}))[1]
        seen_by_bob = []
        while True:  # FIFO: alice's events all come before bob's job ends
            event = await asyncio.wait_for(bob_ws.receive_json(), 60)
            seen_by_bob.append(event)
            if event["type"] == "completed" and event["id"] == bob_job["id"]:
                break
        assert {event["id"] for event in seen_by_bob} == {bob_job["id"]}
        assert seen_by_bob[-1]["image_url"].partition("?")[2].startswith("expires=")  # signed for the owner
        seen_by_ops = set()
        while bob_job["id"] not in seen_by_ops or alice_job["id"] not in seen_by_ops:
            seen_by_ops.add((await asyncio.wait_for(ops_ws.receive_json(), 60))["id"])


async def test_a1111_progress_and_interrupt_act_on_the_callers_own_job(server, http):
    basic = {"Authorization": "Basic " + base64.b64encode(f"user:{ALICE}".encode()).decode()}
    async with await ws_events(http, ALICE) as alice_ws:
        await alice_ws.receive_json()
        txt2img = asyncio.create_task(call(http, "POST", "/sdapi/v1/txt2img", headers=basic,
                                           body={"prompt": "interrupt me", "steps": 600, "width": 64, "height": 64}))
        while (await asyncio.wait_for(alice_ws.receive_json(), 60))["type"] != "progress":
            pass  # alice's job is running
        status, bobs = await call(http, "GET", "/sdapi/v1/progress", BOB)
        assert status == 200 and bobs["state"]["job"] == "" and bobs["state"]["job_count"] == 0
        assert bobs["current_image"] is None and bobs["progress"] == 0.0
        assert (await call(http, "POST", "/sdapi/v1/interrupt", BOB))[0] == 200  # not bob's: nothing stops
        status, alices = await call(http, "GET", "/sdapi/v1/progress", headers=basic)
        assert alices["state"]["job"] and alices["state"]["job_count"] == 1 and not alices["state"]["interrupted"]
        assert (await call(http, "POST", "/sdapi/v1/interrupt", headers=basic))[0] == 200
        status, answer = await txt2img
        assert status == 200, answer
        info = json.loads(answer["info"])
        assert "interrupted" in json.dumps(info)


async def test_unknown_revoked_and_malformed_keys_get_one_answer(server, http):
    answers = set()
    for headers in (bearer("sdxl-no-such-key"), bearer(DAVE + "x"), {"X-API-Key": "nope"},
                    {"Authorization": "Basic !!!not-base64"}, {"Authorization": "Bearer"}, {}):
        async with http.get("/api/v1/jobs", headers=headers) as response:
            answers.add((response.status, await response.text(), response.headers.get("WWW-Authenticate")))
    assert len(answers) == 1 and next(iter(answers))[0] == 401
    for headers in (bearer(ALICE), {"X-API-Key": ALICE},
                    {"Authorization": "Basic " + base64.b64encode(f"anyone:{ALICE}".encode()).decode()}):
        assert (await call(http, "GET", "/api/v1/jobs", headers=headers))[0] == 200
    assert (await call(http, "GET", "/metrics", ALICE))[0] == 403  # a valid key without the admin scope
    assert (await call(http, "GET", "/metrics", OPS))[0] == 200


async def test_the_keys_file_is_read_again_and_a_bad_change_keeps_the_last_good_keys(server, http):
    assert (await call(http, "GET", "/api/v1/jobs", DAVE))[0] == 200
    assert keys_main(["revoke", "dave"], {"KEYS_FILE": str(server.keys_file)}) == 0
    await asyncio.to_thread(server.wait_for_log, r"KEYS_FILE .* read again")
    revoked = await call(http, "GET", "/api/v1/jobs", DAVE)
    assert revoked == await call(http, "GET", "/api/v1/jobs", "sdxl-never-was")
    assert revoked[0] == 401
    good = server.keys_file.read_text()
    server.keys_file.write_text(good + '\n[keys.carol]\nhash = "sha256:nothex"\n')
    await asyncio.to_thread(server.wait_for_log, r"KEYS_FILE .*hash must be.*last good reading stay in use")
    health = (await call(http, "GET", "/health", OPS))[1]
    assert "hash must be" in health["keys_file"]["problem"] and health["keys_file"]["keys"] == 3
    assert "keys_file" not in (await call(http, "GET", "/health", ALICE))[1]  # for admins only
    assert (await call(http, "GET", "/api/v1/jobs", ALICE))[0] == 200  # the last good keys still work
    carol = "sdxl-carol-key"
    server.keys_file.write_text(good + f'\n[keys.carol]\nhash = "{hash_text(carol)}"\nscopes = ["read"]\n')
    await asyncio.to_thread(server.wait_for_log, r"KEYS_FILE .* read again: 4 key")
    assert (await call(http, "GET", "/api/v1/jobs", carol))[0] == 200
    assert (await call(http, "POST", "/api/v1/jobs", carol, {"prompt": "x"}))[0] == 403  # read only
    assert (await call(http, "GET", "/health", OPS))[1]["keys_file"]["problem"] is None


def test_a_bad_keys_file_stops_the_start_naming_the_problem(tiny_cache, tmp_path):
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(f'[keys.a]\nhash = "{hash_text("k")}"\nrunning = 0\n')
    live = LiveServer(tiny_cache, tmp_path / "outputs", KEYS_FILE=str(keys_file))
    try:
        assert live.exit_code() == 2
    finally:
        live.stop()
    assert "KEYS_FILE" in live.log_text() and "key 'a': running must be a whole number" in live.log_text()


async def test_owners_and_signed_urls_survive_a_restart(tiny_cache, tmp_path):
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(keys_text())
    first = LiveServer(tiny_cache, tmp_path / "outputs", KEYS_FILE=str(keys_file)).wait_ready()
    try:
        async with aiohttp.ClientSession(first.url) as http:
            made = await generate(http, ALICE, "kept across a restart")
    finally:
        first.stop()
    again = LiveServer(tiny_cache, tmp_path / "outputs", KEYS_FILE=str(keys_file)).wait_ready()
    try:
        async with aiohttp.ClientSession(again.url) as http:
            assert (await call(http, "GET", f"/api/v1/jobs/{made['id']}", ALICE))[0] == 200
            assert (await call(http, "GET", f"/api/v1/jobs/{made['id']}", BOB))[0] == 404
            listed = (await call(http, "GET", "/api/v1/jobs", BOB))[1]
            assert made["id"] not in json.dumps(listed)
            async with http.get(made["image_url"]) as response:  # the URL signed before the restart
                assert response.status == 200
    finally:
        again.stop()
