"""Signed output URLs (KEYS_FILE): good for URL_TTL, refused once expired, altered, or dated ahead
of what the server signs (its clock set back), on a clock the tests move instead of waiting."""

from __future__ import annotations

import stat

from sdxl_server.api import keys
from sdxl_server.api.key_file import hash_text
from sdxl_server.api.signed_urls import SECRET_FILE_NAME, STEP_S, UrlSigner, load_secret

PATH = "/outputs/images/0123456789abcdef0123456789abcdef.png"


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def query_of(url: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in url.partition("?")[2].split("&"))


def test_a_signed_url_is_good_until_it_expires_and_not_after():
    clock = Clock(1_000_000.0)
    signer = UrlSigner(b"k" * 32, ttl_s=600, clock=clock)
    url = signer.sign(PATH)
    assert url.startswith(PATH + "?expires=")
    left = signer.seconds_left(PATH, query_of(url))
    assert 600 <= left < 600 + STEP_S
    assert signer.sign(PATH) == url  # one URL for a while: browsers cache it
    clock.now += left - 1
    assert signer.seconds_left(PATH, query_of(url)) is not None
    clock.now += 1
    assert signer.seconds_left(PATH, query_of(url)) is None  # replayed after expiry


def test_an_altered_or_foreign_signature_is_refused():
    clock = Clock(1_000_000.0)
    signer = UrlSigner(b"k" * 32, ttl_s=600, clock=clock)
    query = query_of(signer.sign(PATH))
    assert signer.seconds_left(PATH.replace("0123", "3210"), query) is None  # another file
    assert signer.seconds_left(PATH, {**query, "expires": str(int(query["expires"]) + STEP_S)}) is None
    assert signer.seconds_left(PATH, {**query, "sig": query["sig"][::-1]}) is None
    assert signer.seconds_left(PATH, {"expires": query["expires"]}) is None
    assert signer.seconds_left(PATH, {**query, "expires": "-1"}) is None
    assert signer.seconds_left(PATH, {**query, "sig": "é" * 43}) is None
    other = UrlSigner(b"x" * 32, ttl_s=600, clock=clock)
    assert other.seconds_left(PATH, query) is None  # another server's secret


def test_a_url_dated_further_ahead_than_the_server_signs_is_refused_after_a_clock_jump():
    clock = Clock(5_000_000.0)
    signer = UrlSigner(b"k" * 32, ttl_s=600, clock=clock)
    url = signer.sign(PATH)
    clock.now -= 86_400  # the clock set back a day: the URL would otherwise live a day longer
    assert signer.seconds_left(PATH, query_of(url)) is None
    clock.now += 86_400
    assert signer.seconds_left(PATH, query_of(url)) is not None


def test_the_secret_is_made_once_owner_only_and_kept(tmp_path):
    path = tmp_path / "state" / SECRET_FILE_NAME
    secret = load_secret(path)
    assert len(secret) == 32 and load_secret(path) == secret
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_the_servers_urls_expire_on_its_clock(make_client, settings, tmp_path):
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(f'[keys.alice]\nhash = "{hash_text("alice-key")}"\n')
    client = await make_client(settings.replace(keys_file=keys_file, url_ttl=60.0))
    made = await (await client.post("/api/v1/generate", json={"prompt": "x", "steps": 2},
                                    headers={"Authorization": "Bearer alice-key"})).json()
    assert (await client.get(made["image_url"])).status == 200
    signer = client.app[keys.URL_SIGNER]
    now = signer.clock()
    signer.clock = lambda: now + 60 + 2 * STEP_S
    expired = await client.get(made["image_url"])
    assert expired.status == 403 and (await expired.json())["error"] == "forbidden"
    signer.clock = lambda: now
    assert (await client.get(made["image_url"])).status == 200
