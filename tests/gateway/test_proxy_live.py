"""The proxy over real sockets: the gateway and a stand-in backend both served by uvicorn.

The stand-in backend verifies every internal token with the real ``internal_auth`` middleware
(scope, ``htm``/``htu`` binding), echoes what it received, and has routes that stream, stall and
leak headers. Streaming is proven, not assumed: the upload test will not send its second chunk
until the backend has received the first, and the download test's backend will not send its
second chunk until the client has read the first, so a proxy that buffered would deadlock and
fail the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from internal_auth import (
    InternalAuthMiddleware,
    KeySet,
    PrivateKey,
    TokenScope,
    Verifier,
    get_principal,
)
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from gateway.app import create_app
from gateway.settings import Settings
from tests.support.asgi_server import serve

MB = 1024 * 1024


class Upstream:
    """The stand-in backend and the signals the streaming tests wait on."""

    def __init__(self, key: PrivateKey) -> None:
        self.first_upload_chunk = asyncio.Event()
        self.first_download_chunk_read = asyncio.Event()
        verifier = Verifier(
            KeySet([key.public_key]), issuer="tokengate-gateway", audience="tokengate-backend"
        )
        self.app = Starlette(
            routes=[
                Route("/v1/upload", self.upload, methods=["POST", "PUT"]),
                Route("/v1/download", self.download),
                Route("/v1/slow", self.slow),
                Route("/v1/leaky", self.leaky),
                Route("/v1/{rest:path}", self.echo, methods=["GET", "POST", "DELETE", "HEAD"]),
            ],
            middleware=[
                Middleware(
                    InternalAuthMiddleware,
                    verifier=verifier,
                    rules=[("/v1/", TokenScope.USER_REQUEST)],
                )
            ],
        )

    async def echo(self, request: Request) -> Response:
        principal = get_principal(request)
        body = await request.body()
        return JSONResponse(
            {
                "method": request.method,
                "path": request.url.path,
                "query": request.url.query,
                "headers": [[k, v] for k, v in request.headers.items()],
                "body": body.decode("latin-1"),
                "sub": principal.sub,
                "sid": principal.sid,
                "roles": list(principal.roles),
            }
        )

    async def upload(self, request: Request) -> Response:
        digest = hashlib.sha256()
        size = chunks = 0
        async for chunk in request.stream():
            if chunk:
                self.first_upload_chunk.set()
                digest.update(chunk)
                size += len(chunk)
                chunks += 1
        return JSONResponse(
            {
                "size": size,
                "sha256": digest.hexdigest(),
                "chunks": chunks,
                "content_length": request.headers.get("content-length"),
            }
        )

    async def download(self, request: Request) -> Response:
        size = int(request.query_params["size"])

        async def body() -> AsyncIterator[bytes]:
            yield b"a" * (256 * 1024)
            # The client must see the first chunk before the rest exists.
            await asyncio.wait_for(self.first_download_chunk_read.wait(), 10)
            left = size - 256 * 1024
            while left > 0:
                step = min(left, 256 * 1024)
                yield b"b" * step
                left -= step

        return StreamingResponse(body(), media_type="application/octet-stream")

    async def slow(self, request: Request) -> Response:
        await asyncio.sleep(5)
        return JSONResponse({})

    async def leaky(self, request: Request) -> Response:
        return JSONResponse(
            {},
            headers={
                "X-Internal-Auth": request.headers["x-internal-auth"],
                "X-User-Id": "someone",
                "Set-Cookie": "backend=1; Path=/",
                "Connection": "X-Hop",
                "X-Hop": "1",
                "X-Kept": "yes",
            },
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Stack:
    def __init__(self, upstream: Upstream, app: Starlette, client: httpx.AsyncClient) -> None:
        self.upstream = upstream
        self.app = app
        self.client = client

    def token(
        self, sub: str | None = None, sid: str | None = None, roles: tuple[str, ...] = ("user",)
    ) -> str:
        token, _ = self.app.state.tokens.issue_access(
            sub=sub or str(uuid.uuid4()), sid=sid or str(uuid.uuid4()), roles=roles
        )
        return str(token)

    def auth(self, **kw: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(**kw)}"}


@contextlib.asynccontextmanager
async def stack(
    env: dict[str, str],
    key: PrivateKey,
    *,
    backend_port: int | None = None,
    up: bool = True,
    **overrides: str,
) -> AsyncIterator[Stack]:
    upstream = Upstream(key)
    port = backend_port or _free_port()
    settings = Settings.from_env({**env, "BACKEND_URL": f"http://127.0.0.1:{port}", **overrides})
    app = create_app(settings)
    gw_port = _free_port()
    async with contextlib.AsyncExitStack() as stack_:
        if up:
            await stack_.enter_async_context(serve(upstream.app, port))
        await stack_.enter_async_context(serve(app, gw_port))
        client = await stack_.enter_async_context(
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw_port}", timeout=20)
        )
        yield Stack(upstream, app, client)


@pytest.fixture
def key(internal_key: PrivateKey) -> PrivateKey:
    return internal_key


async def test_get_is_proxied_with_a_bound_internal_token(
    env: dict[str, str], key: PrivateKey
) -> None:
    sub, sid = str(uuid.uuid4()), str(uuid.uuid4())
    async with stack(env, key) as s:
        r = await s.client.get(
            "/api/v1/notes/a%20b?x=1&y=%2F",
            headers=s.auth(sub=sub, sid=sid, roles=("user", "admin")),
        )
    assert r.status_code == 200, r.text
    echo = r.json()
    assert echo["method"] == "GET"
    assert echo["path"] == "/v1/notes/a b"
    assert echo["query"] == "x=1&y=%2F"
    assert (echo["sub"], echo["sid"], echo["roles"]) == (sub, sid, ["user", "admin"])


async def test_spoofed_headers_never_reach_the_backend(
    env: dict[str, str], key: PrivateKey
) -> None:
    async with stack(env, key) as s:
        r = await s.client.post(
            "/api/v1/echo",
            content=b'{"a":1}',
            headers={
                **s.auth(),
                "Content-Type": "application/json",
                "X-Internal-Auth": "forged",
                "X-User-Id": "00000000-0000-0000-0000-000000000000",
                "X-Forwarded-For": "6.6.6.6",
                "Forwarded": "for=6.6.6.6",
                "Cookie": "tg_refresh=secret",
                "X-Request-Id": "client-rid-1",
            },
        )
    assert r.status_code == 200, r.text
    headers = r.json()["headers"]
    names = [k for k, _ in headers]
    values = dict(headers)
    assert names.count("x-internal-auth") == 1 and values["x-internal-auth"] != "forged"
    assert "x-user-id" not in values and "cookie" not in values and "authorization" not in values
    assert "forwarded" not in values
    assert values["x-forwarded-for"] == "127.0.0.1"
    assert values["x-forwarded-proto"] == "http"
    assert values["x-request-id"] == "client-rid-1"
    assert r.headers["x-request-id"] == "client-rid-1"
    assert r.json()["body"] == '{"a":1}'


async def test_response_headers_are_cleaned_and_secured(
    env: dict[str, str], key: PrivateKey
) -> None:
    async with stack(env, key) as s:
        r = await s.client.get("/api/v1/leaky", headers={**s.auth(), "X-Request-Id": "bad id!"})
    assert r.status_code == 200
    for name in ("x-internal-auth", "x-user-id", "set-cookie", "x-hop"):
        assert name not in r.headers
    assert r.headers["x-kept"] == "yes"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-request-id"] != "bad id!" and len(r.headers["x-request-id"]) == 32


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "unauthorized"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "unauthorized"),
        ({"Authorization": "Bearer not.a.token"}, "invalid_token"),
    ],
)
async def test_missing_or_bad_token_is_401(
    env: dict[str, str], key: PrivateKey, headers: dict[str, str], code: str
) -> None:
    async with stack(env, key) as s:
        r = await s.client.get("/api/v1/me", headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == code
    assert r.headers["www-authenticate"].startswith("Bearer")


async def test_revoked_session_is_401_on_the_next_call(
    env: dict[str, str], key: PrivateKey
) -> None:
    sid = str(uuid.uuid4())
    async with stack(env, key) as s:
        headers = s.auth(sid=sid)
        assert (await s.client.get("/api/v1/me", headers=headers)).status_code == 200
        await s.app.state.revoked.revoke([sid])
        r = await s.client.get("/api/v1/me", headers=headers)
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "session_revoked"


async def test_upload_streams_through_and_arrives_intact(
    env: dict[str, str], key: PrivateKey
) -> None:
    chunk = bytes(range(256)) * 256  # 64 KiB
    total = 10 * MB
    async with stack(env, key) as s:

        async def body() -> AsyncIterator[bytes]:
            # Up to PROXY_BUFFER_BYTES (256 KiB) the gateway buffers before it connects; past
            # that it streams: this would time out (and fail the test) if it held the rest back.
            first = 5
            for _ in range(first):
                yield chunk
            await asyncio.wait_for(s.upstream.first_upload_chunk.wait(), 10)
            for _ in range(total // len(chunk) - first):
                yield chunk

        r = await s.client.post("/api/v1/upload", content=body(), headers=s.auth())
    assert r.status_code == 200, r.text
    got = r.json()
    expected = hashlib.sha256(chunk * (total // len(chunk))).hexdigest()
    assert (got["size"], got["sha256"]) == (total, expected)
    assert got["chunks"] > 1


async def test_upload_with_content_length_keeps_it(env: dict[str, str], key: PrivateKey) -> None:
    payload = b"z" * (3 * MB)
    async with stack(env, key) as s:
        r = await s.client.put("/api/v1/upload", content=payload, headers=s.auth())
    assert r.status_code == 200, r.text
    assert r.json()["size"] == len(payload)
    assert r.json()["content_length"] == str(len(payload))


async def test_download_streams_back(env: dict[str, str], key: PrivateKey) -> None:
    size = 8 * MB
    async with stack(env, key) as s:
        received = 0
        async with s.client.stream("GET", f"/api/v1/download?size={size}", headers=s.auth()) as r:
            assert r.status_code == 200
            async for part in r.aiter_raw():
                received += len(part)
                s.upstream.first_download_chunk_read.set()
    assert received == size


async def test_declared_body_over_the_limit_is_413(env: dict[str, str], key: PrivateKey) -> None:
    async with stack(env, key, PROXY_MAX_BODY_BYTES=str(MB)) as s:
        r = await s.client.post("/api/v1/upload", content=b"x" * (MB + 1), headers=s.auth())
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "payload_too_large"
        # Exactly at the limit is fine.
        ok = await s.client.post("/api/v1/upload", content=b"x" * MB, headers=s.auth())
    assert ok.status_code == 200


async def test_chunked_body_over_the_limit_is_413(env: dict[str, str], key: PrivateKey) -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"y" * (256 * 1024)

    async with stack(env, key, PROXY_MAX_BODY_BYTES=str(MB)) as s:
        r = await s.client.post("/api/v1/upload", content=body(), headers=s.auth())
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "payload_too_large"
        # The gateway (and its pool) are fine afterwards.
        assert (await s.client.get("/api/v1/me", headers=s.auth())).status_code == 200


async def test_backend_timeout_is_504(env: dict[str, str], key: PrivateKey) -> None:
    async with stack(env, key, PROXY_READ_TIMEOUT="0.3") as s:
        r = await s.client.get("/api/v1/slow", headers=s.auth())
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "gateway_timeout"


async def test_backend_down_is_502_then_recovers(env: dict[str, str], key: PrivateKey) -> None:
    port = _free_port()
    async with stack(env, key, backend_port=port, up=False) as s:
        r = await s.client.get("/api/v1/me", headers=s.auth())
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "bad_gateway"
        async with serve(s.upstream.app, port):
            assert (await s.client.get("/api/v1/me", headers=s.auth())).status_code == 200
        assert (await s.client.get("/api/v1/me", headers=s.auth())).status_code == 502
        async with serve(s.upstream.app, port):
            assert (await s.client.get("/api/v1/me", headers=s.auth())).status_code == 200


async def test_raw_traversal_is_refused_before_the_backend(
    env: dict[str, str], key: PrivateKey
) -> None:
    async with stack(env, key) as s:
        port = s.client.base_url.port
        token = s.token()
        for target in (
            "/api/v1/../internal/auth/validate",
            "/api/v1/%2e%2e/internal/auth/validate",
        ):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
            status = (await reader.readline()).split()[1]
            writer.close()
            await writer.wait_closed()
            assert status in (b"400", b"404"), target


async def test_unknown_auth_route_is_not_proxied(env: dict[str, str], key: PrivateKey) -> None:
    async with stack(env, key) as s:
        r = await s.client.get("/api/v1/auth/whatever", headers=s.auth())
        wrong_method = await s.client.get("/api/v1/auth/login")
    assert r.status_code == 404
    assert wrong_method.status_code == 405


async def test_per_user_limit(env: dict[str, str], key: PrivateKey) -> None:
    sub = str(uuid.uuid4())
    async with stack(env, key, PROXY_RATE_LIMIT_USER="3/minute") as s:
        statuses = [
            (await s.client.get("/api/v1/me", headers=s.auth(sub=sub))).status_code
            for _ in range(4)
        ]
        other = await s.client.get("/api/v1/me", headers=s.auth())
        limited = await s.client.get("/api/v1/me", headers=s.auth(sub=sub))
    assert statuses == [200, 200, 200, 429]
    assert other.status_code == 200
    assert int(limited.headers["retry-after"]) >= 1


async def test_one_access_log_line_per_request(
    env: dict[str, str], key: PrivateKey, caplog: pytest.LogCaptureFixture
) -> None:
    sub = str(uuid.uuid4())
    async with stack(env, key) as s:
        caplog.clear()
        await s.client.get("/api/v1/me?secret=query", headers=s.auth(sub=sub))
        await s.client.get("/api/v1/me")
    lines = [r for r in caplog.records if r.name == "gateway.access"]
    assert len(lines) == 2
    ok, denied = (r.fields for r in lines)  # type: ignore[attr-defined]
    assert ok["method"] == "GET" and ok["path"] == "/api/v1/me" and ok["status"] == 200
    assert ok["user_id"] == sub and ok["duration_ms"] > 0
    assert denied["status"] == 401 and denied["user_id"] is None
