"""The OpenAPI document describes exactly the routes the two services have.

A route added to either service without a description fails here, and so does a described
operation that no longer exists. The backend's ``/v1/...`` routes are compared as the proxy
publishes them (``/api/v1/...``). Excluded, each for a stated reason:

- the gateway's catch-all proxy route stands for the backend's routes, which are checked;
- the gateway's ``/demo`` mount (and its ``/demo`` -> ``/demo/`` redirect) serves static HTML for
  people, not an API;
- backend routes outside ``/v1/`` (``/internal/...``, its own health probes): the proxy maps a
  public ``/api/v1/X`` only to ``/v1/X`` (``gateway.proxy.paths``), so no client can ever reach
  them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from internal_auth import generate_private_key, load_public_keys
from starlette.routing import BaseRoute, Mount, Route

import backend.notes
import backend.validation
from backend.app import create_app as create_backend
from backend.settings import Settings as BackendSettings
from gateway import openapi
from gateway.app import create_app as create_gateway
from gateway.auth import routes as auth_routes
from gateway.proxy.paths import BACKEND_PREFIX, PUBLIC_PREFIX, backend_path
from gateway.settings import Settings as GatewaySettings

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
KEY = generate_private_key()


def _gateway() -> Any:
    settings = GatewaySettings.from_env(
        {
            "DATABASE_URL": "postgresql://unused",
            "REDIS_URL": "redis://unused",
            "BACKEND_URL": "http://unused",
            "JWT_ACCESS_SECRET": "a" * 40,
            "JWT_REFRESH_SECRET": "r" * 40,
            "INTERNAL_JWT_PRIVATE_KEY": KEY.private_pem(),
        }
    )
    return create_gateway(settings)


def _backend() -> Any:
    return create_backend(
        BackendSettings(
            database_url="postgresql://unused", public_keys=load_public_keys(KEY.public_pem())
        )
    )


def _operations(routes: list[BaseRoute]) -> set[tuple[str, str]]:
    out = set()
    for route in routes:
        if isinstance(route, Route) and route.methods:
            out |= {(m.lower(), route.path) for m in route.methods if m != "HEAD"}
    return out


def _documented() -> set[tuple[str, str]]:
    return {
        (method, path)
        for path, item in openapi.document()["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


def _gateway_operations() -> set[tuple[str, str]]:
    routes = _gateway().routes
    catch_all = [r for r in routes if isinstance(r, Route) and r.path == "/api/v1/{path:path}"]
    demo = [r for r in routes if isinstance(r, Mount | Route) and r.path == "/demo"]
    assert catch_all and len(demo) == 2, "the exclusions below name routes that no longer exist"
    kept = [r for r in routes if r not in catch_all and r not in demo]
    assert all(isinstance(r, Route) for r in kept), "a new mount needs describing or excluding"
    return _operations(kept)


def _backend_operations() -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(backend operations as published under /api/v1/, backend-only operations)."""
    published, private = set(), set()
    for method, path in _operations(_backend().routes):
        if path.startswith(BACKEND_PREFIX):
            published.add((method, PUBLIC_PREFIX + path[len(BACKEND_PREFIX) :]))
        else:
            private.add((method, path))
    return published, private


def test_every_route_of_both_services_is_described_and_nothing_else() -> None:
    published, _ = _backend_operations()
    actual = _gateway_operations() | published
    documented = _documented()
    assert actual - documented == set(), "routes the OpenAPI document does not describe"
    assert documented - actual == set(), "described operations that no route serves"


def test_backend_routes_left_out_are_unreachable_through_the_proxy() -> None:
    _, private = _backend_operations()
    assert private, "expected the backend's internal routes"
    for _, path in private:
        # The mapper only ever yields BACKEND_PREFIX + rest, and it refuses every trick that
        # would leave it (dot segments, encoded slashes): tests/gateway/test_proxy_paths.py.
        assert not path.startswith(BACKEND_PREFIX)
        probe = PUBLIC_PREFIX + "x"
        assert backend_path(probe.encode(), probe).path.startswith(BACKEND_PREFIX)


def test_the_document_is_openapi_3_1_with_the_security_schemes() -> None:
    doc = openapi.document()
    assert doc["openapi"].startswith("3.1.")
    assert {"bearer", "dpop", "refreshCookie"} <= set(doc["components"]["securitySchemes"])
    json.dumps(doc)  # serialisable as served


def test_the_documents_limits_are_the_backends() -> None:
    assert openapi.MAX_TITLE == backend.notes.MAX_TITLE
    assert openapi.MAX_NOTE_BODY == backend.notes.MAX_BODY
    doc = openapi.document()
    limit = doc["paths"]["/api/v1/notes"]["get"]["parameters"][0]["schema"]
    assert limit["maximum"] == openapi.MAX_LIMIT
    assert isinstance(backend.validation.MAX_JSON_BYTES, int)
    change = doc["components"]["schemas"]["PasswordChange"]["properties"]["new_password"]
    assert change["minLength"] == auth_routes.MIN_NEW_PASSWORD


@pytest.mark.parametrize("ref_holder", ["paths", "components"])
def test_every_reference_resolves(ref_holder: str) -> None:
    doc = openapi.document()

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if "$ref" in node else []
            return found + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(doc[ref_holder]):
        target: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        assert target
