"""The ASGI guard over a tiny Starlette app, driven in process through httpx.ASGITransport."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from internal_auth import (
    HEADER,
    InternalAuthError,
    InternalAuthMiddleware,
    Minter,
    Reason,
    TokenScope,
    Verifier,
    get_principal,
)
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

UNAUTHORIZED = {"error": {"code": "unauthorized", "message": "Authentication required."}}
FORBIDDEN = {"error": {"code": "forbidden", "message": "Not allowed."}}


async def me(request: Request) -> JSONResponse:
    principal = request.state.principal
    assert get_principal(request) is principal
    return JSONResponse({"sub": principal.sub, "roles": list(principal.roles)})


async def validate(request: Request) -> JSONResponse:
    return JSONResponse({"sub": get_principal(request).sub})


async def health(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def build_app(verifier: Verifier, rejections: list[tuple[Reason, str, str | None]]) -> Starlette:
    def on_reject(reason: Reason, scope: Any, iss: str | None) -> None:
        rejections.append((reason, scope["path"], iss))

    return Starlette(
        routes=[
            Route("/v1/me", me),
            Route("/v1/notes", me, methods=["GET", "POST"]),
            Route("/internal/auth/validate", validate, methods=["POST"]),
            Route("/healthz", health),
            Route("/unlisted", health),
        ],
        middleware=[
            Middleware(
                InternalAuthMiddleware,
                verifier=verifier,
                rules=[
                    ("/v1/", TokenScope.USER_REQUEST),
                    ("/internal/auth/", TokenScope.AUTH_VALIDATE),
                ],
                on_reject=on_reject,
            )
        ],
    )


@pytest.fixture
def rejections() -> list[tuple[Reason, str, str | None]]:
    return []


@pytest.fixture
async def client(
    verifier: Verifier, rejections: list[tuple[Reason, str, str | None]]
) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(verifier, rejections))
    async with httpx.AsyncClient(transport=transport, base_url="http://backend") as client:
        yield client


def user_token(minter: Minter, htm: str = "GET", htu: str = "/v1/me") -> str:
    return minter.mint(
        sub="user-1", scope=TokenScope.USER_REQUEST, htm=htm, htu=htu, roles=["user"]
    )


async def test_valid_token_reaches_the_endpoint_with_the_principal(
    client: httpx.AsyncClient, minter: Minter
) -> None:
    response = await client.get("/v1/me", headers={HEADER: user_token(minter)})
    assert response.status_code == 200
    assert response.json() == {"sub": "user-1", "roles": ["user"]}


async def test_query_string_is_not_part_of_the_binding(
    client: httpx.AsyncClient, minter: Minter
) -> None:
    response = await client.get("/v1/me?page=2", headers={HEADER: user_token(minter)})
    assert response.status_code == 200


async def test_auth_validate_scope_route(client: httpx.AsyncClient, minter: Minter) -> None:
    token = minter.mint(
        sub="tokengate-gateway",
        scope=TokenScope.AUTH_VALIDATE,
        htm="POST",
        htu="/internal/auth/validate",
    )
    response = await client.post("/internal/auth/validate", headers={HEADER: token})
    assert response.status_code == 200 and response.json() == {"sub": "tokengate-gateway"}


async def test_missing_token_is_401(
    client: httpx.AsyncClient, rejections: list[tuple[Reason, str, str | None]]
) -> None:
    response = await client.get("/v1/me")
    assert (response.status_code, response.json()) == (401, UNAUTHORIZED)
    assert rejections == [(Reason.MISSING, "/v1/me", None)]


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "eyJhbGciOiJub25lIn0.e30."])
async def test_invalid_token_is_401_with_the_same_generic_body(
    client: httpx.AsyncClient, token: str
) -> None:
    response = await client.get("/v1/me", headers={HEADER: token})
    assert (response.status_code, response.json()) == (401, UNAUTHORIZED)
    assert response.headers["cache-control"] == "no-store"


async def test_wrong_scope_is_403_and_the_reason_goes_to_on_reject(
    client: httpx.AsyncClient, minter: Minter, rejections: list[tuple[Reason, str, str | None]]
) -> None:
    token = minter.mint(sub="gw", scope=TokenScope.AUTH_VALIDATE, htm="GET", htu="/v1/me")
    response = await client.get("/v1/me", headers={HEADER: token})
    assert (response.status_code, response.json()) == (403, FORBIDDEN)
    assert rejections == [(Reason.WRONG_SCOPE, "/v1/me", "tokengate-gateway")]
    assert "scope" not in response.text


async def test_token_replayed_on_another_route_is_401(
    client: httpx.AsyncClient, minter: Minter, rejections: list[tuple[Reason, str, str | None]]
) -> None:
    response = await client.post("/v1/notes", headers={HEADER: user_token(minter)})
    assert (response.status_code, response.json()) == (401, UNAUTHORIZED)
    assert rejections[0][0] is Reason.UNBOUND_REQUEST


async def test_unlisted_path_is_401_even_with_a_valid_token(
    client: httpx.AsyncClient, minter: Minter, rejections: list[tuple[Reason, str, str | None]]
) -> None:
    token = user_token(minter, htu="/unlisted")
    response = await client.get("/unlisted", headers={HEADER: token})
    assert (response.status_code, response.json()) == (401, UNAUTHORIZED)
    assert rejections == [(Reason.NO_RULE, "/unlisted", None)]


async def test_public_paths_need_no_token(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200


async def test_two_tokens_are_refused(client: httpx.AsyncClient, minter: Minter) -> None:
    token = user_token(minter)
    response = await client.get("/v1/me", headers=[(HEADER, token), (HEADER, token)])
    assert response.status_code == 401


async def test_get_principal_without_the_middleware_fails_closed() -> None:
    async def endpoint(request: Request) -> JSONResponse:
        try:
            get_principal(request)
        except InternalAuthError as exc:
            return JSONResponse({"reason": exc.reason.value}, status_code=401)
        return JSONResponse({}, status_code=200)

    app = Starlette(routes=[Route("/v1/me", endpoint)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://b") as c:
        response = await c.get("/v1/me")
    assert (response.status_code, response.json()) == (401, {"reason": "missing"})


def test_rule_prefixes_must_be_paths(verifier: Verifier) -> None:
    with pytest.raises(ValueError):
        InternalAuthMiddleware(
            build_app(verifier, []), verifier=verifier, rules=[("v1/", TokenScope.USER_REQUEST)]
        )


async def test_websocket_connections_are_refused(
    verifier: Verifier, rejections: list[tuple[Reason, str, str | None]]
) -> None:
    # Driven as raw ASGI: httpx has no WebSocket support, and the app must never be reached.
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the app must not see an unauthenticated WebSocket")

    def on_reject(reason: Reason, scope: Any, iss: str | None) -> None:
        rejections.append((reason, scope["path"], iss))

    guard = InternalAuthMiddleware(
        app, verifier=verifier, rules=[("/v1/", TokenScope.USER_REQUEST)], on_reject=on_reject
    )
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "websocket", "path": "/v1/socket", "headers": []}
    await guard(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert rejections == [(Reason.NO_RULE, "/v1/socket", None)]
