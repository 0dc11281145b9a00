"""Each key's limits as clients see them: a 429 (or 403) naming the limit and when it resets, in
our shape, OpenAI's and A1111's; ``GET /api/v1/usage``; the metrics by key; a day that turns."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from test_metrics import scrape

from sdxl_server.api import keys
from sdxl_server.api.key_file import hash_text

ALICE, BOB, ADMIN = "sdxl-alice-secret", "sdxl-bob-secret", "sdxl-admin-secret"
LATE = dt.datetime(2026, 12, 7, 23, 59, 50, tzinfo=dt.timezone.utc).timestamp()


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def keys_file(path, alice_limits: str) -> object:
    path.write_text(
        f'[keys.alice]\nhash = "{hash_text(ALICE)}"\n{alice_limits}\n'
        f'[keys.bob]\nhash = "{hash_text(BOB)}"\n'
        f'[keys.boss]\nhash = "{hash_text(ADMIN)}"\nscopes = ["admin"]\n', encoding="utf-8")
    return path


@pytest.fixture
def limited(make_client, settings, tmp_path):
    async def start(alice_limits: str):
        return await make_client(settings.replace(keys_file=keys_file(tmp_path / "keys.toml", alice_limits), queue_size=8))
    return start


SMALL = {"prompt": "a cat", "width": 64, "height": 64, "steps": 1}


async def test_requests_per_minute_answer_429_in_each_routes_shape(limited):
    client = await limited("requests_per_minute = 2")
    for _ in range(2):
        assert (await client.post("/api/v1/jobs", json=SMALL, headers=bearer(ALICE))).status == 202
    own = await client.post("/api/v1/jobs", json=SMALL, headers=bearer(ALICE))
    assert own.status == 429 and 1 <= int(own.headers["Retry-After"]) <= 60
    body = await own.json()
    assert body["error"] == "over_limit" and body["limit"] == "requests_per_minute"
    assert body["resets_at"].endswith("Z") and "2 generation request(s) a minute" in body["message"]

    openai = await client.post("/v1/images/generations", json={"prompt": "x", "size": "64x64"}, headers=bearer(ALICE))
    assert openai.status == 429 and "Retry-After" in openai.headers
    error = (await openai.json())["error"]
    assert (error["type"], error["code"], error["limit"]) == ("rate_limit_error", "rate_limit_exceeded", "requests_per_minute")

    a1111 = await client.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64}, headers=bearer(ALICE))
    assert a1111.status == 429 and "Retry-After" in a1111.headers
    body = await a1111.json()
    assert body["limit"] == "requests_per_minute" and body["detail"] == body["message"]

    assert (await client.get("/api/v1/jobs", headers=bearer(ALICE))).status == 200  # reads are free
    assert (await client.post("/api/v1/jobs", json=SMALL, headers=bearer(BOB))).status == 202  # bob has his own


async def test_a_model_the_key_may_not_use_is_refused_before_queueing(limited):
    client = await limited('models = ["some-other-model"]')
    own = await client.post("/api/v1/generate", json=SMALL, headers=bearer(ALICE))
    assert own.status == 403
    body = await own.json()
    assert body["error"] == "not_allowed" and body["limit"] == "models" and "model" in body["fields"]
    openai = await client.post("/v1/images/generations", json={"prompt": "x", "size": "64x64"}, headers=bearer(ALICE))
    assert openai.status == 403 and (await openai.json())["error"]["param"] == "model"
    a1111 = await client.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64}, headers=bearer(ALICE))
    assert a1111.status == 403 and "some-other-model" in (await a1111.json())["detail"]
    assert client.app[keys.QUEUE].unfinished() == []  # nothing was queued
    assert (await client.post("/api/v1/generate", json=SMALL, headers=bearer(BOB))).status == 200


async def test_images_per_day_counts_usage_shows_it_and_midnight_resets_it(limited):
    client = await limited("images_per_day = 1")
    usage = client.app[keys.USAGE]
    usage.clock = lambda: LATE
    assert (await client.post("/api/v1/generate", json=SMALL, headers=bearer(ALICE))).status == 200
    refused = await client.post("/api/v1/generate", json=SMALL, headers=bearer(ALICE))
    assert refused.status == 429
    body = await refused.json()
    assert (body["limit"], body["resets_at"]) == ("images_per_day", "2026-12-08T00:00:00Z")
    assert refused.headers["Retry-After"] == "10"  # the seconds to UTC midnight
    a1111 = await client.post("/sdapi/v1/txt2img", json={"prompt": "x", "width": 64, "height": 64, "steps": 1},
                              headers=bearer(ALICE))
    assert a1111.status == 429 and (await a1111.json())["limit"] == "images_per_day"

    mine = await (await client.get("/api/v1/usage", headers=bearer(ALICE))).json()
    assert [entry["key"] for entry in mine["keys"]] == ["alice"]
    day = mine["keys"][0]["days"]["2026-12-07"]
    assert (day["jobs"], day["images"]) == (1, 1) and day["gpu_seconds"] > 0
    assert mine["keys"][0]["limits"]["images_per_day"] == 1 and mine["resets_at"] == "2026-12-08T00:00:00Z"
    assert (await client.get("/api/v1/usage?key=alice", headers=bearer(BOB))).status == 404  # not another key's
    bobs = await (await client.get("/api/v1/usage", headers=bearer(BOB))).json()
    assert bobs["keys"] == [{"key": "bob", "days": {}, "limits": bobs["keys"][0]["limits"]}]
    everyone = await (await client.get("/api/v1/usage", headers=bearer(ADMIN))).json()
    assert "alice" in [entry["key"] for entry in everyone["keys"]]
    assert (await client.get("/api/v1/usage?days=40", headers=bearer(ADMIN))).status == 422

    metrics = await scrape(client, headers=bearer(ADMIN))
    assert metrics["sdxl_key_images_total{key=alice}"] == 1
    assert metrics["sdxl_key_refused_total{key=alice,limit=images_per_day}"] == 2
    assert metrics["sdxl_key_images_today{key=alice}"] == 1

    usage.clock = lambda: LATE + 20  # past midnight (UTC): a new day
    assert (await client.post("/api/v1/generate", json=SMALL, headers=bearer(ALICE))).status == 200


async def test_a_limit_changed_in_the_keys_file_applies_to_the_next_request(limited, tmp_path):
    client = await limited('models = ["some-other-model"]\nweight = 3')
    assert (await client.post("/api/v1/jobs", json=SMALL, headers=bearer(ALICE))).status == 403
    assert client.app[keys.QUEUE].quotas.weight("alice") == 3
    keys_file(tmp_path / "keys.toml", "requests_per_minute = 1")  # the operator edits the file
    assert await asyncio.to_thread(client.app[keys.KEY_RING].refresh)  # as the watcher does when it changes
    assert (await client.post("/api/v1/jobs", json=SMALL, headers=bearer(ALICE))).status == 202
    assert client.app[keys.QUEUE].quotas.weight("alice") == 1
    refused = await client.post("/api/v1/jobs", json=SMALL, headers=bearer(ALICE))
    assert refused.status == 429 and (await refused.json())["limit"] == "requests_per_minute"
