"""The bounded load test (``python -m sdxl_server.tools.loadtest``) against a real server on loopback."""

from __future__ import annotations

import pytest
from live_server import LiveServer

from sdxl_server.tools.loadtest import main, run_load


@pytest.fixture
def server(tiny_cache, tmp_path):
    live = LiveServer(tiny_cache, tmp_path / "outputs", QUEUE_SIZE="4").wait_ready()
    yield live
    live.stop()


async def test_a_burst_of_several_times_the_queue(server):
    body = {"prompt": "load", "width": 64, "height": 64, "steps": 1}
    report = await run_load(server.url, burst=24, body=body, headers={}, rss_tolerance_mb=64)
    assert report.failures == []
    assert report.accepted + report.refused_429 == 24
    assert report.refused_429 > 0 and report.refused_without_retry_after == 0
    assert report.accepted >= 4  # QUEUE_SIZE at least (one more if the worker took one before the rest came)
    assert sorted(report.ends_per_job.values()) == [1] * report.accepted
    assert report.metrics_succeeded_delta == report.succeeded == report.accepted


def test_the_script_refuses_anything_but_loopback(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--url", "http://example.com:8001"])
    assert info.value.code == 2
    assert "only runs against a server on loopback" in capsys.readouterr().err
