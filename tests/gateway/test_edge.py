"""The edge layer: one layer for request id, access log, security headers, CORS, error mapping."""

from __future__ import annotations

import itertools
import logging

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.app import cors_options
from gateway.auth.bearer import CHALLENGE
from gateway.edge import proxy_only_paths
from gateway.proxy.handler import PROXY_PATH, proxy_route
from gateway.settings import Settings
from tests.gateway.conftest import ORIGIN, FakeBackend, Harness, login

OTHER_ORIGIN = "https://evil.example.test"


def _reference_cors_app(env: dict[str, str]) -> Starlette:
    """A plain app behind Starlette's own CORSMiddleware, configured as the gateway's CORS."""

    async def anything(request: Request) -> Response:
        return PlainTextResponse("x")

    return Starlette(
        routes=[Route("/{p:path}", anything, methods=["GET", "POST", "DELETE", "OPTIONS"])],
        middleware=[Middleware(CORSMiddleware, **cors_options(Settings.from_env(env)))],
    )


def _cors_view(response: httpx.Response, preflight: bool) -> tuple[object, ...]:
    cors = sorted((k, v) for k, v in response.headers.items() if k.startswith("access-control-"))
    vary = response.headers.get("vary")
    return (response.status_code if preflight else None, tuple(cors), vary)


PATHS = ["/api/v1/me", "/api/v1/auth/refresh", "/healthz", "/nowhere"]
ORIGINS = [None, ORIGIN, OTHER_ORIGIN, "null"]
PREFLIGHTS = [
    None,
    ("POST", None),
    ("PUT", "authorization, content-type"),
    ("POST", "dpop"),
    ("TRACE", None),
    ("GET", "x-custom"),
]


async def test_cors_matches_starlettes_middleware(gateway: Harness, env: dict[str, str]) -> None:
    """Differential: every combination answers with the CORS headers Starlette's would."""
    reference = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=_reference_cors_app(env)), base_url="https://ref.test"
    )
    async with gateway(env) as client, reference:
        client.headers.pop("origin", None)
        for path, origin, preflight in itertools.product(PATHS, ORIGINS, PREFLIGHTS):
            headers = {} if origin is None else {"Origin": origin}
            if preflight is None:
                method = "GET"
            else:
                method = "OPTIONS"
                headers["Access-Control-Request-Method"] = preflight[0]
                if preflight[1] is not None:
                    headers["Access-Control-Request-Headers"] = preflight[1]
            ours = await client.request(method, path, headers=headers)
            theirs = await reference.request(method, path, headers=headers)
            is_preflight = preflight is not None and origin is not None
            assert _cors_view(ours, is_preflight) == _cors_view(theirs, is_preflight), (
                path,
                origin,
                preflight,
            )
            # The edge's own headers are on CORS answers too, preflights included.
            assert ours.headers["x-content-type-options"] == "nosniff"
            assert len(ours.headers["x-request-id"]) == 32


async def test_unexpected_error_in_a_route_is_json_with_edge_headers(
    gateway: Harness, env: dict[str, str], backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        def __getattr__(self, name: str) -> object:
            raise RuntimeError("boom")

    async with gateway(env) as client:
        client.app.state.ratelimits = Broken()
        response = await client.post(
            "/api/v1/auth/login",
            json={"email": backend.add_user(), "password": "x"},
            headers={"X-Request-Id": "edge-500"},
        )
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"error": {"code": "internal_error", "message": "internal error"}}
    assert response.headers["x-request-id"] == "edge-500"
    assert response.headers["x-content-type-options"] == "nosniff"
    errors = [r for r in caplog.records if r.getMessage() == "unhandled_error"]
    assert len(errors) == 1 and errors[0].fields["exc_type"] == "RuntimeError"  # type: ignore[attr-defined]
    assert "boom" not in caplog.text


async def test_unexpected_error_on_the_proxy_fast_path_is_json(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    async with gateway(env) as client:
        access = (await login(client, backend.add_user())).json()["access_token"]
        client.app.state.minter = None  # minting now fails with AttributeError
        response = await client.get(
            "/api/v1/me", headers={"Authorization": f"Bearer {access}", "X-Request-Id": "fp-500"}
        )
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "internal_error"
    assert response.headers["x-request-id"] == "fp-500"
    assert response.headers["cache-control"] == "no-store"


async def test_gateway_errors_on_both_paths_map_alike(
    gateway: Harness, env: dict[str, str]
) -> None:
    async with gateway(env) as client:
        proxied = await client.get("/api/v1/me")  # fast path: 401 from the proxy
        routed = await client.get("/api/v1/auth/sessions")  # Starlette path: 401 from a route
        unknown = await client.get("/nowhere")  # Starlette's own 404
        wrong_method = await client.get("/api/v1/auth/login")  # 405 for an auth path
    for response in (proxied, routed):
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["www-authenticate"] == CHALLENGE
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert wrong_method.headers["allow"] == "POST"


@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING])
async def test_access_log_only_when_enabled(
    gateway: Harness, env: dict[str, str], caplog: pytest.LogCaptureFixture, level: int
) -> None:
    async with gateway(env) as client:
        caplog.set_level(level, logger="gateway.access")
        caplog.clear()
        await client.get("/api/v1/me?q=secret")
        await client.get("/healthz")
    lines = [r for r in caplog.records if r.name == "gateway.access"]
    if level == logging.WARNING:
        assert lines == []
        return
    assert [r.fields["path"] for r in lines] == ["/api/v1/me", "/healthz"]  # type: ignore[attr-defined]
    assert [r.fields["status"] for r in lines] == [401, 200]  # type: ignore[attr-defined]


def _noop(request: Request) -> Response:
    return PlainTextResponse("")


@pytest.mark.parametrize(
    ("routes", "proxied", "routed"),
    [
        (
            [Route("/api/v1/auth/login", _noop), Route("/api/v1/auth/sessions/{sid}", _noop)],
            ["/api/v1/me", "/api/v1/notes/1", "/api/v1/authx"],
            ["/api/v1/auth/login", "/api/v1/auth/sessions/x", "/healthz", "/api/v1"],
        ),
        # A new gateway route under /api/v1/ is never proxied past.
        (
            [Route("/api/v1/openapi.json", _noop), Mount("/api/v1/docs", routes=[])],
            ["/api/v1/me"],
            ["/api/v1/openapi.json", "/api/v1/docs/x"],
        ),
        # A route that could claim any /api/v1/ path turns the fast path off.
        ([Route("/{anything:path}", _noop)], [], ["/api/v1/me"]),
        ([Mount("/api", app=StaticFiles(directory="."))], [], ["/api/v1/me"]),
    ],
)
def test_proxy_only_paths(routes: list[Route], proxied: list[str], routed: list[str]) -> None:
    catch_all = proxy_route()
    assert catch_all.path == PROXY_PATH
    proxy_only = proxy_only_paths([*routes, catch_all], catch_all)
    assert [p for p in proxied if proxy_only(p)] == proxied
    assert [p for p in routed if proxy_only(p)] == []
