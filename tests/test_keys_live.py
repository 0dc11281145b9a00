"""Several keys against a real server process: the fair queue (key A submits 50 jobs, key B one:
B's starts after at most one of A's, through the load test's multi-key mode), and usage and the
daily limits surviving a restart."""

from __future__ import annotations

import pytest
from live_server import LiveServer
from test_limits import ADMIN, ALICE, BOB, bearer, keys_file

from sdxl_server.tools.loadtest import main as loadtest_main
from sdxl_server.tools.loadtest_keys import run_keys

SMALL = {"prompt": "a cat", "width": 64, "height": 64, "steps": 1}


@pytest.mark.slow(15)
async def test_one_keys_burst_delays_anothers_job_by_at_most_one(tiny_cache, tmp_path):
    path = keys_file(tmp_path / "keys.toml", "")
    server = LiveServer(tiny_cache, tmp_path / "outputs", KEYS_FILE=str(path), QUEUE_SIZE="60").wait_ready()
    try:
        report = await run_keys(server.url, {"alice": ALICE, "bob": BOB}, burst=50, per_key=1, body=SMALL, admin_key=ADMIN)
    finally:
        server.stop()
    assert report.failures == []
    alice, bob = report.keys["alice"], report.keys["bob"]
    assert (alice.accepted, bob.accepted) == (50, 1) and alice.succeeded == 50 and bob.succeeded == 1
    (bob_job,) = bob.created_at
    queued_behind = [at for job_id, at in alice.started_at.items() if job_id in alice.ends_per_job
                     and at > bob.created_at[bob_job]]
    assert len(queued_behind) >= 25  # most of A's burst was still waiting when B's job came
    assert bob.burst_jobs_ahead <= 1  # and B's job started after at most one of them
    assert alice.metrics_jobs_delta == 50 and bob.metrics_jobs_delta == 1  # /metrics by key, as the clients counted


def test_the_multi_key_mode_needs_two_keys(capsys):
    with pytest.raises(SystemExit):
        loadtest_main(["--key", "alice=secret"])
    assert "at least two --key" in capsys.readouterr().err


@pytest.mark.slow(20)
def test_usage_and_the_daily_limit_survive_a_restart(tiny_cache, tmp_path):
    path = keys_file(tmp_path / "keys.toml", "images_per_day = 1")
    settings = {"KEYS_FILE": str(path), "JOBS_DB": str(tmp_path / "jobs.sqlite3")}
    server = LiveServer(tiny_cache, tmp_path / "outputs", **settings).wait_ready()
    try:
        status, _ = server.request("POST", "/api/v1/generate", SMALL, headers=bearer(ALICE))
        assert status == 200
    finally:
        server.stop()
    again = LiveServer(tiny_cache, tmp_path / "outputs", **settings).wait_ready()
    try:
        status, body = again.get_json("/api/v1/usage", headers=bearer(ALICE))
        assert status == 200
        (day,) = body["keys"][0]["days"].values()
        assert (day["jobs"], day["images"]) == (1, 1) and day["gpu_seconds"] > 0
        status, body = again.request("POST", "/api/v1/generate", SMALL, headers=bearer(ALICE))
        assert status == 429 and body["limit"] == "images_per_day"
        status, _ = again.request("POST", "/api/v1/generate", SMALL, headers=bearer(BOB))
        assert status == 200
    finally:
        again.stop()
