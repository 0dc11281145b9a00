"""The shape a new feature plugs into: a third pass in the generation plan and a third input role,
each added in a few lines, handled by progress, cancel, storage, sweep, metadata and recovery with
no other change."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass

import pytest
from PIL import Image
from wsclient import events_until_terminal

from sdxl_server.api import keys
from sdxl_server.jobs.housekeeping import adopted_record
from sdxl_server.jobs.job import Job
from sdxl_server.params import INPUT_ROLES, GenerationParams, InputRole
from sdxl_server.pipeline import plan

EXTRA_STEPS = 3


@dataclass
class ExtraPass:
    """A third pass: EXTRA_STEPS steps that leave the latents as they are; it records the input
    image of its role, and can hold at one step until the test lets it go."""

    steps: int = EXTRA_STEPS
    name: str = "extra"
    takes_over_at: float | None = None

    def run(self, batch, latents, report):
        for index in range(self.steps):
            if index == 1 and HOLD.is_set():
                REACHED.set()
                assert GO.wait(30), "the test never let the pass go on"
            report(index, latents)
        return latents

    def info(self):
        return {"extra_pass": True}


HOLD, REACHED, GO = threading.Event(), threading.Event(), threading.Event()
SEEN: dict[str, object] = {}


def extra_pass(context):
    if "style" in context.inputs:
        SEEN["style"] = context.inputs["style"]
    return ExtraPass() if "extra" in context.params.prompt else None


@pytest.fixture
def third_pass(monkeypatch):
    for event in (HOLD, REACHED, GO):
        event.clear()
    SEEN.clear()
    monkeypatch.setattr(plan, "LATER_PASSES", [*plan.LATER_PASSES, extra_pass])


@pytest.fixture
def third_role(monkeypatch):
    monkeypatch.setitem(INPUT_ROLES, "style", InputRole("style", "style_image", "RGB"))


async def test_a_third_pass_counts_in_the_progress_total(client, third_pass):
    ws = await client.ws_connect("/api/v1/ws")
    await ws.receive_json()  # snapshot
    resp = await client.post("/api/v1/jobs", json={"prompt": "an extra pass", "steps": 3})
    job = await resp.json()
    events = await events_until_terminal(ws, job["id"])
    progress = [e for e in events if e["type"] == "progress" and e["id"] == job["id"]]
    assert [e["step"] for e in progress] == list(range(1, 3 + EXTRA_STEPS + 1))
    assert {e["total_steps"] for e in progress} == {3 + EXTRA_STEPS}
    done = await (await client.get(f"/api/v1/jobs/{job['id']}")).json()
    assert done["status"] == "succeeded" and done["step"] == done["total_steps"] == 3 + EXTRA_STEPS


async def test_a_job_is_cancelled_in_the_third_pass(client, third_pass):
    HOLD.set()
    resp = await client.post("/api/v1/jobs", json={"prompt": "an extra pass", "steps": 3})
    job = await resp.json()
    assert await asyncio.get_running_loop().run_in_executor(None, REACHED.wait, 30)
    try:
        assert (await client.delete(f"/api/v1/jobs/{job['id']}")).status == 202  # it stops at its next step
    finally:
        GO.set()
    await (await client.app[keys.QUEUE].find(job["id"])).wait()
    state = await (await client.get(f"/api/v1/jobs/{job['id']}")).json()
    assert state["status"] == "cancelled" and state["step"] == 3 + 1  # stopped at the pass's second step
    assert not list((client.app[keys.SETTINGS].output_dir / "images").glob("*.png"))


async def test_a_third_input_role_is_stored_used_recorded_swept_and_recovered(client, third_pass, third_role):
    app = client.app
    inputs = app[keys.STORE].inputs
    style = Image.new("RGB", (64, 64), (200, 30, 30))
    with inputs.held() as hold:
        sha256 = hold.put(style)
        params = GenerationParams(prompt="a styled picture", negative_prompt="", width=64, height=64, steps=2,
                                  guidance_scale=5.0, seed=1, inputs={"style": sha256})
        job, _ = await app[keys.QUEUE].submit(params)
        assert inputs.blobs.exists(inputs.key(sha256))
    # A queued job's record keeps the role, and what a Ray replica is sent includes its file.
    record = Job.from_record(json.loads(json.dumps(job.to_record())))
    assert record.params.inputs == {"style": sha256}
    assert list(inputs.files(record.params)) == [sha256]
    await job.wait()
    assert job.status.value == "succeeded", job.error
    assert SEEN["style"].mode == "RGB" and SEEN["style"].getpixel((0, 0)) == (200, 30, 30)  # decoded for the passes
    meta = json.loads((app[keys.SETTINGS].output_dir / "metadata" / f"{job.id}.json").read_text())
    assert meta["style_image_sha256"] == sha256  # the metadata names it
    await inputs.swept()
    assert not inputs.blobs.exists(inputs.key(sha256))  # swept once no job needs it
    # Recovery rebuilds the job from its metadata with the role.
    adopted = adopted_record(job.id, [meta], app[keys.STORE], time.time())
    assert Job.from_record(adopted).params.inputs == {"style": sha256}
