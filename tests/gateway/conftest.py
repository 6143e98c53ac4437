"""Gateway test harness: real PostgreSQL and Redis, an in-process stand-in for the backend service.

The fake backend is a small HTTP app implementing the documented ``/internal/auth/validate`` and
``/internal/lifecycle/`` contracts (and verifying the gateway's internal token with the real
``internal_auth`` middleware); it is a test double for a *service*, while PostgreSQL and Redis are
the real servers. Tests of the account lifecycle itself use the real backend app instead
(``tests/gateway/test_accounts.py``).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
from internal_auth import (
    InternalAuthMiddleware,
    KeySet,
    PrivateKey,
    TokenScope,
    Verifier,
    generate_private_key,
    get_principal,
)
from servicekit.logs import JsonFormatter
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.app import create_app
from gateway.settings import Settings

ACCESS_SECRET = "access-secret-for-tests-0123456789abcdef"
REFRESH_SECRET = "refresh-secret-for-tests-0123456789abcdef"
PASSWORD = "correct horse battery staple"
ORIGIN = "https://app.example.test"
BASE_URL = "https://gateway.test"
JWT_RE = re.compile(r"eyJ[\w-]+\.eyJ[\w-]+\.[\w-]+")

_counter = itertools.count()


def as_role(dsn: str, role: str) -> str:
    """The same database, connecting as ``role`` (the test server trusts local connections)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{role}@{host}"))


@pytest.fixture(scope="session")
def gateway_dsn(migrated_dsn: str) -> str:
    """The migrated session database as the gateway's own role, so the grants are tested too."""
    return as_role(migrated_dsn, "tokengate_gateway")


@pytest.fixture
async def pool(gateway_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    """A pool on the session database as the gateway's role, for tests of the ledger itself."""
    pool = await asyncpg.create_pool(gateway_dsn, min_size=2, max_size=20)
    assert pool is not None
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture(scope="session")
def internal_key() -> PrivateKey:
    return generate_private_key()


class FakeBackend:
    """Users known to the stand-in backend: email -> (password, id, roles)."""

    def __init__(self, key: PrivateKey) -> None:
        self.users: dict[str, tuple[str, str, list[str]]] = {}
        self.calls = 0
        self.lifecycle_calls = 0
        verifier = Verifier(
            KeySet([key.public_key]), issuer="tokengate-gateway", audience="tokengate-backend"
        )
        self.app = Starlette(
            routes=[
                Route("/internal/auth/validate", self.validate, methods=["POST"]),
                Route("/internal/lifecycle/users/{user_id}", self.lifecycle, methods=["GET"]),
                Route("/internal/lifecycle/epochs", self.epochs, methods=["GET"]),
                Route("/healthz", self.healthz, methods=["GET"]),
            ],
            middleware=[
                Middleware(
                    InternalAuthMiddleware,
                    verifier=verifier,
                    rules=[
                        ("/internal/auth/", TokenScope.AUTH_VALIDATE),
                        ("/internal/lifecycle/", TokenScope.REFRESH_LIFECYCLE),
                    ],
                )
            ],
        )

    def add_user(self, email: str | None = None, roles: list[str] | None = None) -> str:
        email = email or f"user{next(_counter)}-{uuid.uuid4().hex[:6]}@example.test"
        self.users[email.lower()] = (PASSWORD, str(uuid.uuid4()), roles or ["user"])
        return email

    def user_id(self, email: str) -> str:
        return self.users[email.lower()][1]

    async def healthz(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def lifecycle(self, request: Request) -> Response:
        self.lifecycle_calls += 1
        for email, (_, user_id, roles) in self.users.items():
            if user_id == request.path_params["user_id"]:
                return JSONResponse(
                    {
                        "id": user_id,
                        "email": email,
                        "status": "active",
                        "roles": roles,
                        "session_epoch": 0,
                        "token_epoch": 0,
                    }
                )
        return JSONResponse({"error": {"code": "not_found", "message": "not found"}}, 404)

    async def epochs(self, request: Request) -> Response:
        return JSONResponse({"epochs": []})

    async def validate(self, request: Request) -> Response:
        principal = get_principal(request)
        assert principal.sub == "tokengate-gateway" and principal.sid is None
        self.calls += 1
        try:
            body = await request.json()
            email, password = body["email"], body["password"]
        except (ValueError, KeyError, TypeError):
            return JSONResponse({"error": {"code": "validation_error", "message": "bad"}}, 422)
        user = self.users.get(str(email).lower())
        if user is None or user[0] != password:
            return JSONResponse(
                {"error": {"code": "invalid_credentials", "message": "invalid"}}, 401
            )
        return JSONResponse({"id": user[1], "email": email, "roles": user[2]})


@pytest.fixture
def backend(internal_key: PrivateKey) -> FakeBackend:
    return FakeBackend(internal_key)


@pytest.fixture
def env(
    gateway_dsn: str, redis_url: str, redis_prefix: str, internal_key: PrivateKey
) -> dict[str, str]:
    """A valid gateway environment; each test has its own Redis sub-prefix (rate counters)."""
    return {
        "DATABASE_URL": gateway_dsn,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": f"{redis_prefix}gw{next(_counter)}:",
        "BACKEND_URL": "http://backend.internal",
        "JWT_ACCESS_SECRET": ACCESS_SECRET,
        "JWT_REFRESH_SECRET": REFRESH_SECRET,
        "INTERNAL_JWT_PRIVATE_KEY": internal_key.private_pem(),
        "CORS_ALLOWED_ORIGINS": ORIGIN,
        "LOGIN_RATE_LIMIT_IP": "1000/minute",
        "LOGIN_RATE_LIMIT_ACCOUNT": "1000/minute",
        "REFRESH_RATE_LIMIT": "1000/minute",
    }


Harness = Callable[..., Any]


class GatewayClient(httpx.AsyncClient):
    """An in-process client that also exposes the app (for ``app.state`` assertions)."""

    app: Starlette


@pytest.fixture
def gateway(backend: FakeBackend) -> Harness:
    """``async with gateway(env, **overrides) as client``: a started gateway and an HTTP client."""

    @asynccontextmanager
    async def start(
        environ: dict[str, str], *, backend_up: bool = True, **overrides: str
    ) -> AsyncIterator[GatewayClient]:
        settings = Settings.from_env({**environ, **overrides})
        transport = httpx.ASGITransport(app=backend.app) if backend_up else None
        if not backend_up:
            settings = Settings.from_env(
                {**environ, **overrides, "BACKEND_URL": "http://127.0.0.1:1"}
            )
        app = create_app(settings, backend_transport=transport)
        async with app.router.lifespan_context(app):
            async with GatewayClient(
                transport=httpx.ASGITransport(app=app, client=("203.0.113.7", 40000)),
                base_url=BASE_URL,
                headers={"Origin": ORIGIN},
            ) as client:
                client.app = app
                yield client

    return start


async def login(client: httpx.AsyncClient, email: str, password: str = PASSWORD) -> httpx.Response:
    return await client.post("/api/v1/auth/login", json={"email": email, "password": password})


def refresh_cookie(response: httpx.Response, name: str = "__Host-tg_refresh") -> str | None:
    """The refresh token a response set (``__Host-tg_refresh``: the harness serves HTTPS)."""
    for header in response.headers.get_list("set-cookie"):
        key, _, rest = header.partition("=")
        if key == name:
            value = rest.split(";", 1)[0]
            return value or None
    return None


async def refresh_with(client: httpx.AsyncClient, token: str) -> httpx.Response:
    client.cookies.clear()
    return await client.post(
        "/api/v1/auth/refresh", headers={"Cookie": f"__Host-tg_refresh={token}"}
    )


@pytest.fixture(autouse=True)
def no_secrets_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No log line written during a test (formatted as in production) holds a token or secret."""
    caplog.set_level(logging.DEBUG)
    yield
    formatter = JsonFormatter()
    # caplog.records would only hold this teardown phase; the test ran in setup and call.
    records = caplog.get_records("setup") + caplog.get_records("call")
    for record in records:
        line = formatter.format(record)
        assert not JWT_RE.search(line), f"token in log line: {record.getMessage()}"
        for secret in (PASSWORD, ACCESS_SECRET, REFRESH_SECRET, "PRIVATE KEY"):
            assert secret not in line, f"secret in log line: {record.getMessage()}"


@asynccontextmanager
async def raw_backend(
    serve: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    """A socket server on a free port for a backend that writes exact bytes; yields its URL."""
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()
