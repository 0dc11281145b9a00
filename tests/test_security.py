"""API key and cross-origin rules, as a client on the network sees them."""

from __future__ import annotations

import asyncio
import base64

import aiohttp
import pytest
import rawhttp

KEY = "s3cret-key"
BEARER = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def settings(settings):
    return settings.replace(api_key=KEY, cors_origins=("http://localhost:3000",), preload=False)


PROTECTED = [
    ("POST", "/api/v1/generate"),
    ("POST", "/api/v1/jobs"),
    ("GET", "/api/v1/jobs"),
    ("GET", "/api/v1/jobs/0123456789abcdef0123456789abcdef"),
    ("DELETE", "/api/v1/jobs/0123456789abcdef0123456789abcdef"),
    ("GET", "/api/v1/info"),
    ("GET", "/api/v1/ws"),
]


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": "Basic czNjcmV0"}]
)
async def test_api_routes_need_the_key(client, method, path, headers):
    resp = await client.request(method, path, headers=headers, json={"prompt": "x"})
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    body = await resp.json()
    assert body["error"] == "unauthorized" and "Authorization: Bearer" in body["message"]


async def test_the_key_opens_the_api(client):
    resp = await client.post("/api/v1/generate", json={"prompt": "authorised", "steps": 1}, headers=BEARER)
    assert resp.status == 200
    resp = await client.get("/api/v1/jobs", headers={"X-API-Key": KEY})
    assert resp.status == 200


@pytest.mark.parametrize("path", ["/", "/health", "/static/js/main.js", "/openapi.json"])
async def test_page_and_health_stay_public(client, path):
    resp = await client.get(path)
    assert resp.status in (200, 503)  # /health: 503 until the (lazily loaded) model is ready
    if path == "/health":
        assert (await resp.json())["auth_required"] is True


async def test_query_token_only_where_headers_cannot_be_sent(client):
    assert (await client.get(f"/api/v1/jobs?token={KEY}")).status == 401  # keys in URLs only where needed
    ws = await client.ws_connect(f"/api/v1/ws?token={KEY}")
    assert (await ws.receive_json())["type"] == "snapshot"
    await ws.close()
    ws = await client.ws_connect("/api/v1/ws", protocols=("sdxl-server", f"bearer.{KEY}"))
    assert ws.protocol == "sdxl-server"
    assert (await ws.receive_json())["type"] == "snapshot"
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect("/api/v1/ws?token=wrong")
    assert info.value.status == 401


async def test_outputs_need_the_key_only_when_configured(make_client, settings):
    for need, anonymous in ((False, 200), (True, 401)):
        client = await make_client(settings.replace(outputs_need_key=need))
        resp = await client.post("/api/v1/generate", json={"prompt": "o", "steps": 1}, headers=BEARER)
        url = (await resp.json())["image_url"]
        assert (await client.get(url)).status == anonymous
        assert (await client.get(url, headers=BEARER)).status == 200
        assert (await client.get(f"{url}?token={KEY}")).status == 200
        await client.close()


async def test_cors_preflight_for_allowed_origins_on_every_api_route(client):
    for method, path in PROTECTED[:-1]:
        resp = await client.options(
            path,
            headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": method,
                     "Access-Control-Request-Headers": "authorization, content-type"},
        )
        assert resp.status == 204, path
        assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        assert method in resp.headers["Access-Control-Allow-Methods"]
        assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]


async def test_cors_refuses_other_origins(client):
    resp = await client.options(
        "/api/v1/generate", headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    )
    assert resp.status == 403
    assert "Access-Control-Allow-Origin" not in resp.headers
    assert (await resp.json())["error"] == "forbidden_origin"
    resp = await client.get("/health", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_cors_headers_on_answers_and_errors_so_browsers_can_read_them(client):
    origin = {"Origin": "http://localhost:3000"}
    resp = await client.post("/api/v1/generate", json={"prompt": ""}, headers={**BEARER, **origin})
    assert resp.status == 422
    assert resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    resp = await client.post("/api/v1/jobs", json={"prompt": "x", "steps": 1}, headers={**BEARER, **origin})
    assert resp.status == 202
    assert "Location" in resp.headers["Access-Control-Expose-Headers"]
    resp = await client.get("/api/v1/jobs", headers=origin)
    assert resp.status == 401 and resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


async def test_cors_is_off_by_default(make_client, settings):
    client = await make_client(settings.replace(cors_origins=(), api_key=None))
    resp = await client.options(
        "/api/v1/generate", headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}
    )
    assert resp.status == 403
    resp = await client.get("/api/v1/jobs", headers={"Origin": "http://localhost:3000"})
    assert resp.status == 200 and "Access-Control-Allow-Origin" not in resp.headers


async def test_websocket_origin_is_checked(client):
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(f"/api/v1/ws?token={KEY}", origin="https://evil.example")
    assert info.value.status == 403
    ws = await client.ws_connect(f"/api/v1/ws?token={KEY}", origin="http://localhost:3000")
    assert (await ws.receive_json())["type"] == "snapshot"
    own = f"http://{client.host}:{client.port}"
    ws = await client.ws_connect(f"/api/v1/ws?token={KEY}", origin=own)
    assert (await ws.receive_json())["type"] == "snapshot"


async def test_websocket_message_limits(make_client, settings):
    client = await make_client(settings.replace(api_key=None, ws_max_messages=3, ws_max_message_bytes=128))
    ws = await client.ws_connect("/api/v1/ws")
    await ws.receive_json()
    for _ in range(3):
        await ws.send_str("ping")
        assert (await ws.receive_json())["type"] == "pong"
    await ws.send_str("ping")
    message = await ws.receive(timeout=30)
    assert message.type == aiohttp.WSMsgType.CLOSE and message.data == aiohttp.WSCloseCode.POLICY_VIOLATION

    ws = await client.ws_connect("/api/v1/ws")
    await ws.receive_json()
    await ws.send_str("x" * 500)
    message = await ws.receive(timeout=30)
    assert message.type == aiohttp.WSMsgType.CLOSE and message.data == aiohttp.WSCloseCode.MESSAGE_TOO_BIG


def test_the_access_log_never_shows_a_key():
    import logging

    from aiohttp.test_utils import make_mocked_request

    from sdxl_server.api.security import RedactingAccessLogger

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("test-access")
    logger.addHandler(Collect())
    logger.setLevel(logging.INFO)
    access = RedactingAccessLogger(logger, '%r %s')
    response = type("Response", (), {"status": 101, "body_length": 0, "headers": {}})()
    access.log(make_mocked_request("GET", f"/api/v1/ws?job=abc&token={KEY}"), response, 0.1)
    access.log(make_mocked_request("GET", "/outputs/images/x.png"), response, 0.1)
    assert records == ["GET /api/v1/ws?job=abc&token=*** HTTP/1.1 101", "GET /outputs/images/x.png HTTP/1.1 101"]
    records.clear()
    access = RedactingAccessLogger(logger, '%r %{Authorization}i %{X-API-Key}i')
    basic = "Basic " + base64.b64encode(f"user:{KEY}".encode()).decode()
    access.log(make_mocked_request("GET", "/sdapi/v1/options", headers={"Authorization": basic}), response, 0.1)
    access.log(make_mocked_request("GET", "/api/v1/jobs", headers={"X-API-Key": KEY}), response, 0.1)
    assert records == ["GET /sdapi/v1/options HTTP/1.1 Basic *** -", "GET /api/v1/jobs HTTP/1.1 - ***"]


def _basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


@pytest.mark.parametrize("credentials", [f"user:{KEY}", f":{KEY}", f"sillytavern:{KEY}"])
async def test_basic_auth_with_the_key_as_password_opens_the_api(client, credentials):
    # SillyTavern, Open WebUI's A1111 mode and webuiapi can send only HTTP Basic auth.
    for path in ("/sdapi/v1/options", "/api/v1/jobs", "/v1/models"):
        resp = await client.get(path, headers=_basic(credentials))
        assert resp.status == 200, (path, await resp.text())


@pytest.mark.parametrize("header", [_basic(f"user:{KEY}x"), _basic(KEY), _basic(f"{KEY}:"), {"Authorization": "Basic !!notbase64"},
                                    {"Authorization": "Basic " + base64.b64encode(b"user:\xff\xfe").decode()}])
async def test_basic_auth_with_anything_else_is_refused_with_both_challenges(client, header):
    resp = await client.get("/sdapi/v1/options", headers=header)
    assert resp.status == 401
    assert resp.headers.getall("WWW-Authenticate") == ['Bearer realm="sdxl_server"', 'Basic realm="sdxl_server", charset="UTF-8"']
    assert "HTTP Basic auth with the key as the password" in (await resp.json())["message"]


async def test_a_client_that_did_not_try_basic_auth_gets_no_basic_challenge(client):
    # A browser shows its own login dialog on a Basic challenge: the page's requests must not get one.
    resp = await client.get("/api/v1/info")
    assert resp.status == 401
    assert resp.headers.getall("WWW-Authenticate") == ['Bearer realm="sdxl_server"']


async def test_basic_auth_user_and_password_together_may_be_the_key(make_client, settings):
    # A1111's --api-auth is 'user:password'; the same text as API_KEY works whole.
    client = await make_client(settings.replace(api_key="admin:pa55"))
    assert (await client.get("/sdapi/v1/options", headers=_basic("admin:pa55"))).status == 200
    assert (await client.get("/sdapi/v1/options", headers=_basic("admin:wrong"))).status == 401


@pytest.mark.parametrize(
    "header", [b"Authorization: Bearer s3cr\xe9t-key", b"Authorization: Bearer \xff\xfe", b"X-API-Key: \xe9t\xe9"]
)
async def test_a_key_that_is_not_utf8_is_refused_not_a_crash(client, header):
    name, _, value = header.partition(b": ")
    resp = await rawhttp.exchange(client.host, client.port, rawhttp.request("GET", "/api/v1/jobs", {name.decode(): value}))
    assert resp.status == 401
    assert resp.json()["error"] == "unauthorized"


BEHIND_TLS_PROXY = [  # what a TLS-terminating proxy on loopback adds (default TRUSTED_PROXIES)
    {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "images.example.com"},
    {"Forwarded": 'for=203.0.113.9;proto=https;host="images.example.com"'},
    {"Forwarded": "for=203.0.113.9;proto=https;host=images.example.com, for=127.0.0.1;proto=http;host=internal:8001"},
]


@pytest.mark.parametrize("forwarded", BEHIND_TLS_PROXY)
async def test_the_pages_own_websocket_works_behind_a_trusted_https_proxy(client, forwarded):
    ws = await client.ws_connect(f"/api/v1/ws?token={KEY}", origin="https://images.example.com", headers=forwarded)
    assert (await ws.receive_json())["type"] == "snapshot"
    await ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:  # still only the public origin
        await client.ws_connect(f"/api/v1/ws?token={KEY}", origin="https://other.example.com", headers=forwarded)
    assert info.value.status == 403


@pytest.mark.parametrize("forwarded", BEHIND_TLS_PROXY)
async def test_forwarded_headers_from_an_untrusted_peer_are_ignored(make_client, settings, forwarded):
    client = await make_client(settings.replace(trusted_proxies=()))
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(f"/api/v1/ws?token={KEY}", origin="https://images.example.com", headers=forwarded)
    assert info.value.status == 403
    own = f"http://{client.host}:{client.port}"
    ws = await client.ws_connect(f"/api/v1/ws?token={KEY}", origin=own, headers=forwarded)
    assert (await ws.receive_json())["type"] == "snapshot"


async def test_public_url_is_an_own_origin(make_client, settings):
    client = await make_client(settings.replace(public_url="https://images.example.com"))
    ws = await client.ws_connect(f"/api/v1/ws?token={KEY}", origin="https://images.example.com")
    assert (await ws.receive_json())["type"] == "snapshot"


CHAINS = [  # (headers from the proxy on loopback, an origin that is the client's own, one that is not)
    (  # two proxies, both trusted: the outer one's view
        {"X-Forwarded-For": "203.0.113.9, 127.0.0.2", "X-Forwarded-Proto": "https, http",
         "X-Forwarded-Host": "images.example.com, internal:8001"},
        "https://images.example.com", "http://internal:8001",
    ),
    (  # the outer hop is not trusted: only what the trusted one saw
        {"X-Forwarded-For": "203.0.113.9, 198.51.100.1", "X-Forwarded-Proto": "https, http",
         "X-Forwarded-Host": "images.example.com, internal:8001"},
        "http://internal:8001", "https://images.example.com",
    ),
    (  # one value each, as nginx's proxy_set_header sends them; a default port is no port
        {"X-Forwarded-For": "203.0.113.9", "X-Forwarded-Proto": "HTTPS", "X-Forwarded-Host": "Images.Example.com:443"},
        "https://images.example.com", "http://images.example.com",
    ),
    (  # a host that is not one is ignored
        {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "images.example.com/evil"},
        "https://{own}", "https://images.example.com",
    ),
    (  # RFC 7239 wins over X-Forwarded-*, and its IPv6 nodes are understood
        {"Forwarded": 'for="[2001:db8::1]:4711";proto=https;host=images.example.com, for="[::1]";host=internal',
         "X-Forwarded-Host": "other.example.com"},
        "https://images.example.com", "https://other.example.com",
    ),
]


@pytest.mark.parametrize(("headers", "own", "other"), CHAINS)
async def test_which_forwarded_values_count(client, headers, own, other):
    host = f"{client.host}:{client.port}"
    ws = await client.ws_connect(f"/api/v1/ws?token={KEY}", origin=own.format(own=host), headers=headers)
    assert (await ws.receive_json())["type"] == "snapshot"
    await ws.close()
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await client.ws_connect(f"/api/v1/ws?token={KEY}", origin=other, headers=headers)
    assert info.value.status == 403


async def test_a_doubled_leading_slash_still_needs_the_key(client):
    for path in ("//sdapi/v1/options", "///api/v1/jobs", "//v1/models"):
        resp = await rawhttp.exchange(client.host, client.port, rawhttp.request("GET", path))
        assert resp.status == 401, path


async def test_nothing_public_names_a_job_a_prompt_a_model_location_or_a_lora(make_client, settings, tmp_path):
    """With API_KEY set, /health, / and /openapi.json answer callers without the key with the
    server's readiness only: another user's running job (and so its image) cannot be found."""
    from doubles import GatedEngine

    engine = None

    def gated(s):
        nonlocal engine
        engine = GatedEngine(s)
        return engine

    client = await make_client(settings.replace(preload=True, model_dir=tmp_path / "a-private-folder"), engine_factory=gated)
    job = await (await client.post("/api/v1/jobs", json={"prompt": "a secret prompt", "steps": 1}, headers=BEARER)).json()
    await asyncio.get_running_loop().run_in_executor(None, engine.entered.acquire)  # it runs
    try:
        for path in ("/health", "/", "/openapi.json"):
            text = await (await client.get(path, headers={"Accept": "application/json"})).text()
            for secret in (job["id"], "a secret prompt", "a-private-folder", ': "tiny"'):
                assert secret not in text, (path, secret)
            assert path == "/openapi.json" or '"location"' not in text  # (the document describes the field)
        public = await (await client.get("/health")).json()
        assert public["queue"]["busy"] == 1 and public["model"]["state"] == "ready" and public["status"] == "ok"
        full = await client.get("/health", headers=BEARER)
        assert full.headers["Vary"] == "Authorization, X-API-Key"  # a shared cache keeps them apart
        full = await full.json()
        assert full["queue"]["running"] == job["id"] and full["model"]["id"] == "tiny"
    finally:
        engine.gate.set()


# What the openai package (openai-node, in a browser with dangerouslyAllowBrowser) sends on each request.
OPENAI_SDK_HEADERS = ("authorization, content-type, x-stainless-arch, x-stainless-lang, x-stainless-os, "
                      "x-stainless-package-version, x-stainless-retry-count, x-stainless-runtime, "
                      "x-stainless-runtime-version, x-stainless-timeout, openai-organization, openai-project")


async def test_a_preflight_allows_the_headers_it_asks_for_from_allowed_origins(client):
    preflight = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": OPENAI_SDK_HEADERS}
    resp = await client.options("/v1/images/generations", headers=preflight)
    assert resp.status == 204 and resp.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    allowed = {name.strip().lower() for name in resp.headers["Access-Control-Allow-Headers"].split(",")}
    assert {name.strip() for name in OPENAI_SDK_HEADERS.split(",")} <= allowed
    assert "x-api-key" in allowed and "idempotency-key" in allowed  # ours, whatever was asked
    assert resp.headers["Vary"] == "Origin, Access-Control-Request-Headers"

    resp = await client.options("/v1/images/generations", headers={**preflight, "Origin": "https://evil.example"})
    assert resp.status == 403 and "Access-Control-Allow-Headers" not in resp.headers
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_a_preflight_asking_for_malformed_or_endless_headers_is_refused(client):
    preflight = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "POST"}
    for asked in ("x-ok, bad header", "x-ok, a:b", "x-" + "a" * 3000):
        resp = await client.options("/v1/images/generations", headers={**preflight, "Access-Control-Request-Headers": asked})
        assert resp.status == 400 and "Access-Control-Allow-Headers" not in resp.headers
        assert "Access-Control-Request-Headers" in (await resp.json())["error"]["message"]
