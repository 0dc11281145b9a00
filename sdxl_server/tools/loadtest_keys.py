"""The load test's multi-key mode (``python -m sdxl_server.tools.loadtest --key NAME=KEY ...``):
one key's burst while the other keys work, checked for fairness and for each key's limits.

The first key submits ``--burst`` jobs at once; once they are answered, every other key submits
``--per-key`` jobs. Then it checks what each client and the operator see: every accepted job ends
exactly once and succeeds; every refusal is a 429 with ``Retry-After`` naming its limit (counted
per key and limit); each other key's job starts after at most one of the burst's jobs that started
after it was queued (the fair queue); and, given an admin key, ``/metrics`` counts each key's jobs
as its client did.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from ..jobs.states import TERMINAL_EVENTS

MAX_AHEAD = 1  # the burst's jobs that may start between another key's job being queued and its start


@dataclass
class KeyLoad:
    """What one key's client saw."""

    submitted: int = 0
    accepted: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # limit (or error code) -> count
    refused_without_retry_after: int = 0
    succeeded: int = 0
    ends_per_job: dict[str, int] = field(default_factory=dict)
    started_at: dict[str, float] = field(default_factory=dict)  # every start its websocket showed
    created_at: dict[str, float] = field(default_factory=dict)
    burst_jobs_ahead: int = 0  # most of the burst's jobs that started while one of its jobs waited
    metrics_jobs_delta: float | None = None


@dataclass
class MultiKeyReport:
    burst: int
    per_key: int
    keys: dict[str, KeyLoad] = field(default_factory=dict)
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    def check(self) -> None:
        for name, load in self.keys.items():
            if sorted(load.ends_per_job.values()) != [1] * load.accepted:
                self.failures.append(f"{name}: not every accepted job ended exactly once")
            if load.succeeded != load.accepted:
                self.failures.append(f"{name}: {load.accepted - load.succeeded} accepted jobs did not succeed")
            if load.refused_without_retry_after:
                self.failures.append(f"{name}: {load.refused_without_retry_after} refusals had no Retry-After")
            if load.burst_jobs_ahead > MAX_AHEAD:
                self.failures.append(f"{name}: {load.burst_jobs_ahead} of the burst's jobs started while its job waited")
            if load.metrics_jobs_delta is not None and load.metrics_jobs_delta != load.accepted:
                self.failures.append(f"{name}: /metrics counted {load.metrics_jobs_delta:g} jobs, the client {load.accepted}")


async def _submit(session: aiohttp.ClientSession, url: str, body: dict, load: KeyLoad) -> None:
    load.submitted += 1
    async with session.post(f"{url}/api/v1/jobs", json=body) as resp:
        answer = await resp.json(content_type=None)
        if resp.status == 202:
            load.accepted += 1
            load.ends_per_job.setdefault(answer["id"], 0)
            load.created_at[answer["id"]] = answer["created_at"]
            return
        reason = answer.get("limit") or answer.get("error") or str(resp.status)
        load.refused[reason] = load.refused.get(reason, 0) + 1
        load.refused_without_retry_after += resp.status == 429 and "Retry-After" not in resp.headers


async def _follow(ws: aiohttp.ClientWebSocketResponse, load: KeyLoad, done: asyncio.Event) -> None:
    """Each of this key's jobs' start and end, from its websocket, until ``done`` and all ended."""
    ended: set[str] = set()
    while not (done.is_set() and ended >= set(load.ends_per_job)):
        try:
            event = await ws.receive_json(timeout=1.0)
        except asyncio.TimeoutError:
            continue
        job_id = event.get("id")
        if event["type"] == "started":
            load.started_at[job_id] = event["started_at"]
        elif event["type"] in TERMINAL_EVENTS and job_id in load.ends_per_job:
            load.ends_per_job[job_id] += 1
            load.succeeded += event["type"] == "completed"
            ended.add(job_id)


def _fairness(burst: KeyLoad, other: KeyLoad) -> int:
    """The most of the burst's jobs that started after one of ``other``'s jobs was queued and before it started."""
    worst = 0
    bursts = [at for job_id, at in burst.started_at.items() if job_id in burst.ends_per_job]
    for job_id, queued in other.created_at.items():
        began = other.started_at.get(job_id, float("inf"))
        worst = max(worst, sum(1 for at in bursts if queued < at < began))
    return worst


async def _key_metrics(url: str, admin_key: str | None) -> dict[str, float]:
    if admin_key is None:
        return {}
    from .loadtest import _metrics  # the one scrape parser

    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {admin_key}"}) as session:
        return await _metrics(session, url)


async def run_keys(
    url: str, keys: dict[str, str], burst: int, per_key: int, body: dict[str, Any], admin_key: str | None = None,
) -> MultiKeyReport:
    """The multi-key load: ``keys`` maps each key's name to its secret, the first bursting."""
    report = MultiKeyReport(burst=burst, per_key=per_key, keys={name: KeyLoad() for name in keys})
    before = await _key_metrics(url, admin_key)
    sessions = {name: aiohttp.ClientSession(headers={"Authorization": f"Bearer {secret}"},
                                            connector=aiohttp.TCPConnector(limit=0)) for name, secret in keys.items()}
    done = asyncio.Event()
    try:
        sockets = {name: await session.ws_connect(f"{url}/api/v1/ws") for name, session in sessions.items()}
        for ws in sockets.values():
            await ws.receive_json()  # the snapshot
        followers = [asyncio.create_task(_follow(sockets[name], report.keys[name], done)) for name in keys]
        started = time.perf_counter()
        first, *others = keys
        await asyncio.gather(*(_submit(sessions[first], url, body, report.keys[first]) for _ in range(burst)))
        await asyncio.gather(*(_submit(sessions[name], url, body, report.keys[name]) for name in others for _ in range(per_key)))
        done.set()
        await asyncio.wait_for(asyncio.gather(*followers), timeout=600)
        report.seconds = round(time.perf_counter() - started, 2)
        for ws in sockets.values():
            await ws.close()
    finally:
        for session in sessions.values():
            await session.close()
    after = await _key_metrics(url, admin_key)
    for name, load in report.keys.items():
        if admin_key is not None:
            metric = f"sdxl_key_jobs_total[key={name}]"
            load.metrics_jobs_delta = after.get(metric, 0) - before.get(metric, 0)
        if name != first:
            load.burst_jobs_ahead = _fairness(report.keys[first], load)
    report.check()
    return report


def print_report(report: MultiKeyReport) -> None:
    print(f"burst {report.burst} from the first key, {report.per_key} from each other, in {report.seconds}s")
    for name, load in report.keys.items():
        refused = ", ".join(f"{limit} {count}" for limit, count in sorted(load.refused.items())) or "none"
        print(f"  {name}: {load.accepted}/{load.submitted} accepted, {load.succeeded} succeeded, refused: {refused}; "
              f"burst jobs started while one of its jobs waited: {load.burst_jobs_ahead}")
    print("OK" if not report.failures else "FAILED: " + "; ".join(report.failures))
