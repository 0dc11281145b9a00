"""``python -m sdxl_server.tools.loadtest``: a bounded burst against a running server, checked end to end.

It submits ``--burst`` jobs at once (several times ``QUEUE_SIZE``), then checks what a client and
the operator see: every accepted job (202) ends exactly once and succeeds, every refused one got
``429`` with ``Retry-After``, ``/metrics`` counts what the client counted, and the server's
resident memory after the burst is back near where it was before it. Loopback use only: it
prints a table and exits 1 if a check fails. With ``--key NAME=KEY`` twice or more, the
multi-key mode (:mod:`.loadtest_keys`): one key's burst while the others work.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from ..jobs.states import TERMINAL_EVENTS


@dataclass
class LoadReport:
    burst: int
    accepted: int = 0
    refused_429: int = 0
    refused_without_retry_after: int = 0
    other_statuses: dict[str, int] = field(default_factory=dict)
    ends_per_job: dict[str, int] = field(default_factory=dict)
    succeeded: int = 0
    metrics_succeeded_delta: float = 0.0
    queue_depth_after: float = 0.0
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    def check(self, rss_tolerance_mb: float) -> None:
        if self.accepted + self.refused_429 != self.burst:
            self.failures.append(f"unexpected statuses: {self.other_statuses}")
        if self.refused_without_retry_after:
            self.failures.append(f"{self.refused_without_retry_after} refusals had no Retry-After")
        if sorted(self.ends_per_job.values()) != [1] * self.accepted:
            self.failures.append("not every accepted job ended exactly once")
        if self.succeeded != self.accepted:
            self.failures.append(f"{self.accepted - self.succeeded} accepted jobs did not succeed")
        if self.metrics_succeeded_delta != self.succeeded:
            self.failures.append(f"metrics counted {self.metrics_succeeded_delta:g} successes, the client {self.succeeded}")
        if self.queue_depth_after:
            self.failures.append(f"queue depth {self.queue_depth_after:g} after the burst")
        if self.rss_after_mb - self.rss_before_mb > rss_tolerance_mb:
            self.failures.append(
                f"resident memory grew {self.rss_after_mb - self.rss_before_mb:.1f} MB (> {rss_tolerance_mb} MB)"
            )


async def _metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    async with session.get(f"{url}/metrics") as resp:
        text = await resp.text()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name + "".join(f"[{k}={v}]" for k, v in sorted(sample.labels.items()))
            values[key] = sample.value
    return values


async def run_load(url: str, burst: int, body: dict, headers: dict[str, str], rss_tolerance_mb: float) -> LoadReport:
    report = LoadReport(burst=burst)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        warm = await session.post(f"{url}/api/v1/generate", json=body)  # the first job pays one-off costs
        warm.release()
        before = await _metrics(session, url)
        report.rss_before_mb = before.get("process_resident_memory_bytes", 0) / 2**20
        ws = await session.ws_connect(f"{url}/api/v1/ws")
        await ws.receive_json()  # snapshot
        started = time.perf_counter()

        async def submit() -> None:
            async with session.post(f"{url}/api/v1/jobs", json=body) as resp:
                if resp.status == 202:
                    report.accepted += 1
                    report.ends_per_job.setdefault((await resp.json())["id"], 0)
                elif resp.status == 429:
                    report.refused_429 += 1
                    report.refused_without_retry_after += "Retry-After" not in resp.headers
                else:
                    report.other_statuses[str(resp.status)] = report.other_statuses.get(str(resp.status), 0) + 1

        await asyncio.gather(*(submit() for _ in range(burst)))
        ended: dict[str, str] = {}
        while len(ended) < report.accepted:
            event = await ws.receive_json(timeout=600)
            if event["type"] in TERMINAL_EVENTS and event["id"] in report.ends_per_job:
                report.ends_per_job[event["id"]] += 1
                ended[event["id"]] = event["type"]
        report.seconds = round(time.perf_counter() - started, 2)
        report.succeeded = sum(1 for kind in ended.values() if kind == "completed")
        await ws.close()
        after = await _metrics(session, url)
    report.metrics_succeeded_delta = after.get("sdxl_jobs_total[status=succeeded]", 0) - before.get(
        "sdxl_jobs_total[status=succeeded]", 0
    )
    report.queue_depth_after = after.get("sdxl_queue_depth", 0)
    report.rss_after_mb = after.get("process_resident_memory_bytes", 0) / 2**20
    report.check(rss_tolerance_mb)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdxl_server.tools.loadtest", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8001")
    parser.add_argument("--burst", type=int, default=40, help="jobs submitted at once (several times QUEUE_SIZE)")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--rss-tolerance-mb", type=float, default=64.0)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--key", action="append", default=[], metavar="NAME=KEY",
                        help="multi-key mode: a key of KEYS_FILE (repeat; the first bursts, the others submit --per-key)")
    parser.add_argument("--per-key", type=int, default=1, help="multi-key mode: jobs each other key submits")
    parser.add_argument("--admin-key", default=None, help="multi-key mode: a key that may read /metrics")
    args = parser.parse_args(argv)
    if not (args.url.startswith("http://127.") or args.url.startswith("http://localhost")):
        parser.error("the load test only runs against a server on loopback")
    body = {"prompt": "load test", "width": args.width, "height": args.height, "steps": args.steps}
    if args.key:
        return _multi_key(parser, args, body)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    report = asyncio.run(run_load(args.url, args.burst, body, headers, args.rss_tolerance_mb))
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print(f"burst {report.burst}: {report.accepted} accepted, {report.refused_429} refused with 429 "
              f"in {report.seconds}s")
        print(f"succeeded {report.succeeded}; /metrics counted {report.metrics_succeeded_delta:g}; "
              f"queue depth after {report.queue_depth_after:g}")
        print(f"resident memory {report.rss_before_mb:.1f} MB before, {report.rss_after_mb:.1f} MB after")
        print("OK" if not report.failures else "FAILED: " + "; ".join(report.failures))
    return 1 if report.failures else 0


def _multi_key(parser: argparse.ArgumentParser, args: argparse.Namespace, body: dict) -> int:
    from .loadtest_keys import print_report, run_keys

    pairs = [item.partition("=") for item in args.key]
    if len(pairs) < 2 or any(not name or not secret for name, _, secret in pairs):
        parser.error("multi-key mode needs at least two --key NAME=KEY")
    keys = {name: secret for name, _, secret in pairs}
    report = asyncio.run(run_keys(args.url, keys, args.burst, args.per_key, body, args.admin_key))
    if args.json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print_report(report)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
