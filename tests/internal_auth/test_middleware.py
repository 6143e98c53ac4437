"""The ASGI guard over a tiny Starlette app, driven in process through httpx.ASGITransport."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from internal_auth import (
    HEADER,
    PROBE_PATH,
    InternalAuthError,
    InternalAuthMiddleware,
    Minter,
    PrivateKey,
    Reason,
    TokenScope,
    Verifier,
    generate_private_key,
    get_principal,
)
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.internal_auth_tokens import AUDIENCE, ISSUER, NOW

UNAUTHORIZED = {"error": {"code": "internal_token_refused", "message": "Authentication required."}}
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


# --- the readiness probe, answered by the middleware itself ------------------------------


def _minter(
    key: PrivateKey, *, issuer: str = ISSUER, audience: str = AUDIENCE, now: int = NOW
) -> Minter:
    return Minter(key, issuer=issuer, audience=audience, clock=lambda: float(now))


def probe_token(minter: Minter, scope: TokenScope = TokenScope.PROBE, htm: str = "GET") -> str:
    return minter.mint(sub="tokengate-gateway", scope=scope, htm=htm, htu=PROBE_PATH)


async def test_the_probe_is_answered_without_any_route(
    client: httpx.AsyncClient, minter: Minter
) -> None:
    response = await client.get(PROBE_PATH, headers={HEADER: probe_token(minter)})
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


@pytest.mark.parametrize(
    ("mint", "reason"),
    [
        # a key the service does not hold: the mismatch a new deployment meets first
        (
            lambda key: Minter(generate_private_key(), issuer=ISSUER, audience=AUDIENCE),
            "unknown_kid",
        ),
        (lambda key: Minter(key, issuer="someone-else", audience=AUDIENCE), "wrong_issuer"),
        (lambda key: Minter(key, issuer=ISSUER, audience="another-service"), "wrong_audience"),
        (lambda key: Minter(key, issuer=ISSUER, audience=AUDIENCE, clock=lambda: 0.0), "expired"),
    ],
)
async def test_a_refused_probe_names_the_reason(
    client: httpx.AsyncClient,
    key: PrivateKey,
    mint: Callable[[PrivateKey], Minter],
    reason: str,
) -> None:
    response = await client.get(PROBE_PATH, headers={HEADER: probe_token(mint(key))})
    assert response.status_code == 401
    assert response.json()["error"] == {
        "code": "internal_token_refused",
        "message": "Authentication required.",
        "reason": reason,
    }


async def test_the_probe_token_opens_nothing_else_and_nothing_else_opens_the_probe(
    client: httpx.AsyncClient, minter: Minter
) -> None:
    token = minter.mint(sub="tokengate-gateway", scope=TokenScope.PROBE, htm="GET", htu="/v1/me")
    assert (await client.get("/v1/me", headers={HEADER: token})).status_code == 403
    user = probe_token(minter, scope=TokenScope.USER_REQUEST)
    refused = await client.get(PROBE_PATH, headers={HEADER: user})
    assert refused.status_code == 403 and refused.json()["error"]["reason"] == "wrong_scope"
    missing = await client.get(PROBE_PATH)
    assert missing.status_code == 401 and missing.json()["error"]["reason"] == "missing"
    posted = await client.post(PROBE_PATH, headers={HEADER: probe_token(minter, htm="POST")})
    assert posted.status_code == 401 and posted.json()["error"]["reason"] == "unbound_request"


async def test_ordinary_refusals_still_do_not_say_which_check_failed(
    client: httpx.AsyncClient, key: PrivateKey
) -> None:
    stranger = _minter(generate_private_key())
    response = await client.get("/v1/me", headers={HEADER: user_token(stranger)})
    assert (response.status_code, response.json()) == (401, UNAUTHORIZED)
