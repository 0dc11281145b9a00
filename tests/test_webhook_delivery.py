"""Delivering webhooks against real receivers: the SSRF guard, redirects, slow, failing and
endless receivers, a receiver down for minutes (on a clock the test moves), and the outbox kept
across restarts."""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import time

import pytest
from aiohttp.abc import AbstractResolver
from live_server import free_port
from standardwebhooks import Webhook
from webhook_receiver import Receiver

from sdxl_server.api.webhook_client import MAX_ANSWER_BYTES, WebhookClient
from sdxl_server.api.webhook_guard import AddressGuard, GuardedResolver, Refused, kind_of
from sdxl_server.api.webhook_targets import check_default_webhook
from sdxl_server.config import ConfigError, Settings
from sdxl_server.jobs import outbox
from sdxl_server.jobs.job import Job
from sdxl_server.jobs.states import JobStatus
from sdxl_server.jobs.store import JobStore
from sdxl_server.jobs.webhook_delivery import RETRY_FIRST_S, Dispatcher, backoff
from sdxl_server.jobs.webhooks import Outbox, webhook_spec
from sdxl_server.params import GenerationParams

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
BODY = b'{"type":"job.completed"}'
HEADERS = {"webhook-id": "msg_1", "webhook-timestamp": "0", "Content-Type": "application/json"}


@pytest.fixture
async def receiver():
    receiver = await Receiver().start()
    yield receiver
    await receiver.stop()


def local(**changes) -> Settings:
    return Settings(webhook_allow="127.0.0.1", **changes)


@pytest.fixture
async def sender():
    clients = []

    def make(settings: Settings, resolver: AbstractResolver | None = None) -> WebhookClient:
        clients.append(WebhookClient(settings, resolver))
        return clients[-1]

    yield make
    for client in clients:
        await client.close()


# -- the guard ------------------------------------------------------------------------------

@pytest.mark.parametrize("address, kind", [
    ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("::1", "loopback"),
    ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.0.1", "private"), ("fc00::1", "private"),
    ("fd12:3456::1", "private"),
    ("169.254.169.254", "cloud metadata"), ("fd00:ec2::254", "cloud metadata"), ("100.100.100.200", "cloud metadata"),
    ("169.254.1.1", "link-local"), ("fe80::1", "link-local"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("100.64.0.1", "not public"), ("240.0.0.1", "private"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:192.168.1.1", "private"),
    ("2002:0a00:0001::1", "private"), ("64:ff9b::a9fe:a9fe", "cloud metadata"),
])
def test_the_guard_refuses_each_private_range(address, kind):
    assert kind_of(ipaddress.ip_address(address)) == kind
    assert AddressGuard(Settings().webhook_allow).refusal("h.example", address) is not None


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2606:4700:4700::1111"])
def test_public_addresses_pass(address):
    assert AddressGuard(Settings().webhook_allow).refusal("h.example", address) is None


def test_webhook_allow_names_hosts_and_networks():
    guard = AddressGuard(Settings(webhook_allow="10.0.0.0/8, *.lan, receiver.internal").webhook_allow)
    assert guard.refusal("x", "10.2.3.4") is None
    assert guard.refusal("x", "192.168.1.1") is not None
    assert guard.refusal("printer.lan", "192.168.1.1") is None
    assert guard.refusal("receiver.internal", "127.0.0.1") is None
    assert guard.refusal("evil-receiver.internal", "127.0.0.1") is not None


class Names(AbstractResolver):
    """A resolver with fixed answers: each lookup of a name returns its next list (the last repeats)."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.lookups = 0

    async def resolve(self, host, port=0, family=socket.AF_INET):
        self.lookups += 1
        lists = self.answers[host]
        addresses = lists.pop(0) if len(lists) > 1 else lists[0]
        return [
            {"hostname": host, "host": a, "port": port, "family": socket.AF_INET6 if ":" in a else socket.AF_INET,
             "proto": 0, "flags": socket.AI_NUMERICHOST} for a in addresses
        ]

    async def close(self) -> None:
        pass


async def test_the_resolver_keeps_only_allowed_addresses():
    resolver = GuardedResolver(AddressGuard(Settings().webhook_allow), Names({
        "mixed.test": [["93.184.216.34", "10.0.0.1"]], "inside.test": [["10.0.0.1", "169.254.169.254"]],
    }))
    assert [r["host"] for r in await resolver.resolve("mixed.test", 80)] == ["93.184.216.34"]
    with pytest.raises(Refused, match="private"):
        await resolver.resolve("inside.test", 80)


async def test_a_name_that_rebinds_to_loopback_never_reaches_it(receiver, sender):
    """The name resolves to a public address when first asked, then to 127.0.0.1 (DNS rebinding):
    the address connected to is the one checked, so nothing arrives."""
    names = Names({"rebind.test": [["127.0.0.1"]]})
    client = sender(Settings(), names)
    answer = await client.send(f"http://rebind.test:{receiver.port}/hook", BODY, HEADERS)
    assert not answer.delivered and not answer.retry and "loopback" in answer.error
    assert names.lookups == 1 and receiver.received == []
    allowed = sender(Settings(webhook_allow="rebind.test"), Names({"rebind.test": [["127.0.0.1"]]}))
    assert (await allowed.send(f"http://rebind.test:{receiver.port}/hook", BODY, HEADERS)).delivered
    assert len(receiver.received) == 1


# -- the client against real receivers -----------------------------------------------------

async def test_redirects_are_not_followed_by_default(receiver, sender):
    answer = await sender(local()).send(receiver.url + "/redirect?to=/hook", BODY, HEADERS)
    assert answer.status == 307 and not answer.delivered and "WEBHOOK_REDIRECTS" in answer.error
    assert [d.path for d in receiver.received] == ["/redirect"]


async def test_an_allowed_redirect_is_followed_and_checked_again(receiver, sender):
    client = sender(local(webhook_redirects=2))
    assert (await client.send(receiver.url + "/redirect?to=/hook", BODY, HEADERS)).delivered
    assert [d.path for d in receiver.received] == ["/redirect", "/hook"]
    assert receiver.received[1].body == BODY and receiver.received[1].headers["webhook-id"] == "msg_1"
    answer = await client.send(receiver.url + "/redirect?to=http://169.254.169.254/latest/meta-data", BODY, HEADERS)
    assert not answer.delivered and not answer.retry and "cloud metadata" in answer.error


async def test_a_slow_receiver_is_given_up_on_within_the_timeout(receiver, sender):
    receiver.hang = True
    started = time.monotonic()
    answer = await sender(local(webhook_timeout=0.5)).send(receiver.url + "/hook", BODY, HEADERS)
    assert not answer.delivered and answer.retry and "WEBHOOK_TIMEOUT" in answer.error
    assert time.monotonic() - started < 5


async def test_a_failing_receiver_is_an_error_to_retry(receiver, sender):
    receiver.answers = [503]
    answer = await sender(local()).send(receiver.url + "/hook", BODY, HEADERS)
    assert answer.status == 503 and answer.retry and "503" in answer.error


async def test_an_endless_answer_is_cut_off(receiver, sender):
    started = time.monotonic()
    answer = await sender(local(webhook_timeout=30)).send(receiver.url + "/endless", BODY, HEADERS)
    assert answer.delivered  # its 200 counts; the body is read no further than MAX_ANSWER_BYTES
    assert time.monotonic() - started < 10 and MAX_ANSWER_BYTES <= 1024 * 1024


async def test_a_receiver_that_is_not_there(sender):
    answer = await sender(local()).send(f"http://127.0.0.1:{free_port()}/hook", BODY, HEADERS)
    assert not answer.delivered and answer.retry and "connect" in answer.error


# -- the dispatcher: retries on a clock the test moves -----------------------------------------

class MovedClock:
    """The dispatcher's time, moved by the test: a wait ends when its event is set or the test
    has moved the time past its end."""

    def __init__(self) -> None:
        self.t = time.time()
        self._moved = asyncio.Event()
        self.watched = asyncio.Event()
        self.waiting = False  # a wait is blocked, and has seen the latest time

    def now(self) -> float:
        return self.t

    async def wait(self, event: asyncio.Event, timeout: float | None) -> None:
        end = None if timeout is None else self.t + timeout
        self.watched = event
        try:
            while not event.is_set() and (end is None or self.t < end):
                self._moved.clear()
                self.waiting = True
                waits = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._moved.wait())]
                _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for task in pending:
                    task.cancel()
        finally:
            self.waiting = False

    def advance(self, seconds: float) -> None:
        self.t += seconds
        self.waiting = False  # until the waiter has seen the new time
        self._moved.set()


async def idle(clock: MovedClock, dispatcher: Dispatcher, deadline_s: float = 30.0) -> None:
    """Until the dispatcher waits with nothing in flight."""
    end = time.monotonic() + deadline_s
    while not (clock.waiting and dispatcher.sending == 0 and not clock.watched.is_set()):
        assert time.monotonic() < end, "the dispatcher did not settle"
        await asyncio.sleep(0.01)


def _job(url: str) -> Job:
    job = Job(params=GenerationParams(prompt="x", negative_prompt="", width=64, height=64, steps=2, guidance_scale=5.0, seed=1), webhook=webhook_spec(url, base="http://server.example"))
    job.status = JobStatus.SUCCEEDED
    return job


async def _row(store: JobStore, letters: Outbox, job: Job) -> str:
    rows = letters.letters(Job(params=job.params, id=job.id), job)
    await store.save_soon(job.to_record(), rows)
    return rows[0]["id"]


async def _state(store: JobStore, job_id: str) -> dict:
    (row,) = await store.run(outbox.of_job, job_id)
    return row


@pytest.fixture
async def store(tmp_path):
    store = JobStore(tmp_path / "jobs.sqlite3")
    await store.open()
    yield store
    await store.close()


async def test_a_receiver_down_for_minutes_gets_the_event_once_it_is_back(store, sender):
    clock, port = MovedClock(), free_port()
    letters = Outbox(store, lambda job: {"id": job.id, "status": job.status.value}, progress_interval=1, now=clock.now)
    dispatcher = Dispatcher(store, sender(local()), letters.wakeup, secret=SECRET, retry_for=3600, clock=clock,
                            rng=random.Random(1))
    running = asyncio.create_task(dispatcher.run())
    receiver = None
    try:
        job = _job(f"http://127.0.0.1:{port}/hook")
        delivery_id = await _row(store, letters, job)
        letters.posted()
        for _ in range(10):  # ten minutes down
            await idle(clock, dispatcher)
            clock.advance(60)
        await idle(clock, dispatcher)
        down = await _state(store, job.id)
        assert down["state"] == "pending" and 4 <= down["attempts"] <= 9 and "connect" in down["last_error"]
        receiver = await Receiver().start(port)
        clock.advance(RETRY_FIRST_S * 2 ** down["attempts"])
        delivery = await receiver.next()
        payload = Webhook(SECRET).verify(delivery.body, delivery.headers)
        assert delivery.headers["webhook-id"] == delivery_id and payload["data"]["id"] == job.id
        assert payload["data"]["status"] == "succeeded"
        for _ in range(5):  # and no second time
            await idle(clock, dispatcher)
            clock.advance(3600)
        await idle(clock, dispatcher)
        assert len(receiver.received) == 1
        up = await _state(store, job.id)
        assert up["state"] == "delivered" and up["attempts"] == down["attempts"] + 1 and up["last_status"] == 200
    finally:
        running.cancel()
        await dispatcher.close()
        if receiver is not None:
            await receiver.stop()


async def test_retries_stop_after_webhook_retry_for(store, sender):
    clock = MovedClock()
    letters = Outbox(store, lambda job: {"id": job.id}, progress_interval=1, now=clock.now)
    dispatcher = Dispatcher(store, sender(local()), letters.wakeup, secret=SECRET, retry_for=600, clock=clock)
    running = asyncio.create_task(dispatcher.run())
    try:
        job = _job(f"http://127.0.0.1:{free_port()}/hook")
        await _row(store, letters, job)
        letters.posted()
        for _ in range(30):
            await idle(clock, dispatcher)
            clock.advance(60)
        await idle(clock, dispatcher)
        given_up = await _state(store, job.id)
        assert given_up["state"] == "failed" and given_up["last_at"] - given_up["created_at"] <= 600
    finally:
        running.cancel()
        await dispatcher.close()


async def test_a_refused_target_fails_at_once(store, sender):
    letters = Outbox(store, lambda job: {"id": job.id}, progress_interval=1)
    dispatcher = Dispatcher(store, sender(Settings()), letters.wakeup, secret=SECRET, retry_for=3600)
    running = asyncio.create_task(dispatcher.run())
    try:
        job = _job("http://127.0.0.1:9/hook")
        await _row(store, letters, job)
        letters.posted()
        end = time.monotonic() + 30
        while (await _state(store, job.id))["state"] == "pending":
            assert time.monotonic() < end
            await asyncio.sleep(0.01)
        refused = await _state(store, job.id)
        assert refused["state"] == "failed" and refused["attempts"] == 1 and "loopback" in refused["last_error"]
    finally:
        running.cancel()
        await dispatcher.close()


def test_backoff_doubles_with_jitter_and_is_bounded():
    rng = random.Random(7)
    for attempt in range(1, 40):
        ceiling = min(3600.0, RETRY_FIRST_S * 2 ** (attempt - 1))
        pauses = [backoff(attempt, rng) for _ in range(20)]
        assert all(ceiling / 2 <= p <= ceiling for p in pauses) and len(set(pauses)) > 1


async def test_an_ended_job_without_its_end_event_gets_it_at_start_up(store):
    """Recovery ends jobs (a job that ran to the end before a crash, one failed after two) without
    the recorder: reconciling writes their end events."""
    job = _job("https://receiver.example/hook")
    await store.save(job.to_record())
    letters = Outbox(store, lambda j: {"id": j.id, "status": j.status.value}, progress_interval=1)
    assert await letters.reconcile() == 1
    row = await _state(store, job.id)
    assert row["event"] == "completed" and row["state"] == "pending"
    assert await letters.reconcile() == 0  # once


async def test_deleting_a_job_deletes_its_deliveries(store):
    """Retention deletes jobs; their outbox rows go with them (and are never sent after)."""
    letters = Outbox(store, lambda j: {"id": j.id}, progress_interval=1)
    job = _job("https://receiver.example/hook")
    await _row(store, letters, job)
    assert await store.run(outbox.due, time.time() + 1, 10, [])
    await store.delete([job.id])
    assert await store.run(outbox.of_job, job.id) == []
    assert await store.run(outbox.due, time.time() + 1, 10, []) == []


def test_a_default_webhook_the_guard_refuses_stops_start_up():
    with pytest.raises(ConfigError, match="WEBHOOK_URL=.*loopback.*WEBHOOK_ALLOW"):
        check_default_webhook(Settings(webhook_url="http://127.0.0.1:9000/hook"))
    check_default_webhook(Settings(webhook_url="http://127.0.0.1:9000/hook", webhook_allow="127.0.0.1"))
    check_default_webhook(Settings(webhook_url="https://hooks.example.com/x"))
