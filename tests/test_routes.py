"""The route table: one entry per route the router serves, agreeing with the prefix fallback that
answers the requests no route matches, and the caller's identity the key check puts on a request."""

from __future__ import annotations

import base64
from collections import Counter

import pytest
from aiohttp import web

from sdxl_server.api import keys
from sdxl_server.api.app import create_app
from sdxl_server.api.route_table import ALL_SCOPES, BodyLimit, Scope
from sdxl_server.api.routes import ROUTES, entry_for, unmatched_access
from sdxl_server.api.identity import IDENTITY

KEY = "s3cret-key"


@pytest.fixture
def settings(settings):
    return settings.replace(preload=False)


def test_every_router_route_is_in_the_table_once_and_the_table_has_nothing_else(settings):
    app = create_app(settings)
    assert app[keys.STATIC_DIR].is_dir()  # so the static route is registered too
    served = Counter()
    for route in app.router.routes():
        if route.method == "HEAD":  # add_get's twin of a GET, and the static files'
            continue
        entry = entry_for(route.method, route.resource)
        assert entry is not None, (route.method, route.resource)
        assert entry.view is None or entry.view is route.handler, entry
        served[entry.method, entry.path] += 1
    declared = Counter((route.method, route.path) for route in ROUTES)
    assert served == declared and set(declared.values()) == {1}


async def test_openapi_documents_exactly_the_tables_documented_routes(client):
    spec = await (await client.get("/openapi.json")).json()
    documented = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    assert documented == {(route.method, route.path) for route in ROUTES if route.documented}
    assert [route.path for route in ROUTES if not route.documented] == ["/static/"]


@pytest.mark.parametrize("outputs_need_key", [False, True])
def test_each_route_agrees_with_the_fallback_of_its_prefix(settings, outputs_need_key):
    """A 404 or 405 next to a route needs the key and has the error shape the route has, and so do
    the requests aiohttp refuses before routing: the table and the fallback never disagree."""
    settings = settings.replace(api_key=KEY, outputs_need_key=outputs_need_key)
    for route in ROUTES:
        fallback = unmatched_access(route.path)
        assert route.family is fallback.family, route.path
        route_public = route.access.required_scope(settings) is Scope.PUBLIC
        assert route_public == (fallback.required_scope(settings) is Scope.PUBLIC), route.path


def test_what_the_table_declares_for_limits_and_cost():
    image_routes = {route.path for route in ROUTES if route.limit is BodyLimit.IMAGE}
    assert image_routes == {"/api/v1/generate", "/api/v1/jobs", "/sdapi/v1/img2img", "/v1/images/edits",
                            "/v1/images/variations", "/sdapi/v1/png-info", "/sdapi/v1/interrogate", "/api/v1/preprocess",
                            "/controlnet/detect", "/api/v1/upscale",
                            "/sdapi/v1/extra-single-image", "/sdapi/v1/extra-batch-images"}
    assert all(route.method == "POST" for route in ROUTES if route.limit is BodyLimit.IMAGE)
    queueing = {route.path for route in ROUTES if route.cost > 0}
    unqueued = {"/sdapi/v1/png-info", "/sdapi/v1/interrogate", "/api/v1/preprocess", "/controlnet/detect"}
    assert queueing == (image_routes - unqueued) | {"/v1/images/generations", "/sdapi/v1/txt2img"}
    assert all(route.scope is Scope.GENERATE for route in ROUTES if route.cost > 0)


async def test_every_response_schema_is_named_by_a_route(client):
    """The response schemas document the answers: each is reached from some route, none is dead."""
    spec = await (await client.get("/openapi.json")).json()
    schemas = spec["components"]["schemas"]
    reached, todo = set(), [spec["paths"]]
    while todo:
        node = todo.pop()
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] not in reached:
                reached.add(ref.rsplit("/", 1)[1])
                todo.append(schemas[ref.rsplit("/", 1)[1]])
            todo.extend(node.values())
        elif isinstance(node, list):
            todo.extend(node)
    assert reached == set(schemas)


@pytest.fixture
def identity_client(aiohttp_client):
    """A client of an app that records the identity each request reached its view with."""
    seen = []

    @web.middleware
    async def record(request, handler):
        seen.append(request[IDENTITY])
        return await handler(request)

    async def start(settings):
        app = create_app(settings)
        app.middlewares.append(record)  # innermost: after the key check
        client = await aiohttp_client(app)
        await app[keys.QUEUE].ready.wait()
        return client, seen

    return start


async def test_without_api_key_every_caller_is_anonymous_and_may_do_anything(identity_client, settings):
    client, seen = await identity_client(settings)
    assert (await client.get("/api/v1/info")).status == 200
    assert seen[-1].anonymous and seen[-1].name is None and seen[-1].scopes == ALL_SCOPES


async def test_with_api_key_the_identity_is_the_admin_legacy_owner(identity_client, settings):
    client, seen = await identity_client(settings.replace(api_key=KEY))
    assert (await client.get("/health")).status in (200, 503)
    assert seen[-1].anonymous and seen[-1].scopes == {Scope.PUBLIC}
    basic = "Basic " + base64.b64encode(f"user:{KEY}".encode()).decode()
    for headers in ({"Authorization": f"Bearer {KEY}"}, {"X-API-Key": KEY}, {"Authorization": basic}):
        assert (await client.get("/api/v1/info", headers=headers)).status == 200
        assert seen[-1].name is None and seen[-1].scopes == ALL_SCOPES  # the admin/legacy owner
    assert (await client.get("/health", headers={"Authorization": f"Bearer {KEY}"})).status in (200, 503)
    assert seen[-1].scopes == ALL_SCOPES  # public routes know the caller too
    count = len(seen)
    assert (await client.get("/api/v1/info", headers={"Authorization": "Bearer wrong"})).status == 401
    assert len(seen) == count  # refused before any view
