"""GET /openapi.json: OpenAPI 3.1 from the marshmallow schemas, covering every route."""

from __future__ import annotations

import re

import pytest


@pytest.fixture
def settings(settings):
    return settings.replace(preload=False)


def _router_routes(app) -> set[tuple[str, str]]:
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if path is None or route.method in ("HEAD", "*"):  # static files (prefix) and HEAD twins
            continue
        routes.add((route.method.lower(), path))
    return routes


async def test_every_route_is_documented_and_nothing_else(client):
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    spec = await resp.json()
    assert spec["openapi"] == "3.1.0"
    documented = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    assert documented == _router_routes(client.app)


async def test_request_schema_carries_the_server_limits(client, settings):
    spec = await (await client.get("/openapi.json")).json()
    request = spec["components"]["schemas"]["GenerateRequest"]
    assert request["required"] == ["prompt"] and request["additionalProperties"] is False
    width = request["properties"]["width"]
    assert (width["minimum"], width["maximum"], width["multipleOf"], width["default"]) == (64, settings.max_width, 8, 64)
    assert request["properties"]["steps"]["maximum"] == settings.max_steps
    assert request["properties"]["prompt"]["maxLength"] == settings.max_prompt_length
    pattern = re.compile(request["properties"]["prompt"]["pattern"])
    assert pattern.search("a cat") and not pattern.search("   ") and not pattern.search("bell\x07")


async def test_every_operation_documents_its_errors(client):
    spec = await (await client.get("/openapi.json")).json()
    generate = spec["paths"]["/api/v1/generate"]["post"]
    assert {"200", "400", "409", "413", "415", "422", "429", "500", "503"} <= set(generate["responses"])
    assert generate["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/GenerateRequest"}
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert op["responses"], (method, path)
            for status, response in op["responses"].items():
                if int(status) >= 400 and path != "/health":  # /health's 503 carries the health body
                    a1111 = path.startswith(("/sdapi/", "/controlnet/"))
                    family = "OpenAIError" if path.startswith("/v1/") else "A1111Error" if a1111 else "Error"
                    assert response["content"]["application/json"]["schema"] == {"$ref": f"#/components/schemas/{family}"}
    assert "security" not in generate and "securitySchemes" not in spec.get("components", {})


async def test_security_is_documented_when_a_key_is_set(make_client, settings):
    client = await make_client(settings.replace(api_key="k"))
    spec = await (await client.get("/openapi.json")).json()  # the spec itself is public
    assert spec["components"]["securitySchemes"] == {"bearer": {"type": "http", "scheme": "bearer"}}
    assert spec["paths"]["/api/v1/generate"]["post"]["security"] == [{"bearer": []}]
    assert "401" in spec["paths"]["/api/v1/generate"]["post"]["responses"]
    assert "security" not in spec["paths"]["/health"]["get"]


async def test_with_a_keys_file_the_key_and_the_scope_and_signed_urls_are_documented(make_client, settings, tmp_path):
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text("")
    client = await make_client(settings.replace(keys_file=keys_file))
    spec = await (await client.get("/openapi.json")).json()
    assert spec["paths"]["/api/v1/generate"]["post"]["security"] == [{"bearer": []}]
    assert {"401", "403"} <= set(spec["paths"]["/api/v1/jobs/{job_id}"]["get"]["responses"])
    outputs = spec["paths"]["/outputs/images/{filename}"]["get"]
    assert "403" in outputs["responses"] and "401" not in outputs["responses"] and "security" not in outputs
