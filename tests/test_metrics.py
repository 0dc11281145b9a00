"""GET /metrics: Prometheus text that agrees with what a client saw."""

from __future__ import annotations

from doubles import FaultyUnetEngine
from prometheus_client.parser import text_string_to_metric_families


async def scrape(client, headers: dict[str, str] | None = None) -> dict[str, float]:
    resp = await client.get("/metrics", headers=headers)
    assert resp.status == 200 and resp.content_type == "text/plain"
    samples = {}
    for family in text_string_to_metric_families(await resp.text()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "le")
            name = sample.name + (f"{{{labels}}}" if labels else "")
            if "le" not in sample.labels:
                samples[name] = sample.value
    return samples


async def test_metrics_count_jobs_by_outcome_and_time_them(make_client, settings):
    client = await make_client(settings, engine_factory=lambda s: FaultyUnetEngine(s, RuntimeError("boom"), at_call=3))
    ws = await client.ws_connect("/api/v1/ws")
    await ws.receive_json()
    statuses = []
    for steps in (1, 3, 2):  # the UNet fails on its third call: the second job's second step
        resp = await client.post("/api/v1/generate", json={"prompt": "metrics", "steps": steps})
        statuses.append(resp.status)
    assert statuses == [200, 500, 200]

    m = await scrape(client)
    assert m["sdxl_jobs_total{status=succeeded}"] == 2
    assert m["sdxl_jobs_total{status=failed}"] == 1
    assert m["sdxl_generation_seconds_count"] == 2 and m["sdxl_generation_seconds_sum"] > 0
    assert m["sdxl_queue_wait_seconds_count"] == 3
    assert m["sdxl_step_seconds_count"] == 1  # the only step that followed another in the same job
    assert m["sdxl_queue_depth"] == 0 and m["sdxl_jobs_running"] == 0
    assert m["sdxl_websocket_connections"] == 1
    assert m["sdxl_model_load_seconds"] > 0
    assert m["process_resident_memory_bytes"] > 0
    assert "sdxl_gpu_memory_allocated_bytes" not in m  # no GPU here
