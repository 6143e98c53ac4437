"""Login: the credential check through the backend, the token pair, input validation."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.gateway.conftest import PASSWORD, FakeBackend, Harness, login, refresh_cookie


async def test_login_returns_access_token_and_refresh_cookie(
    gateway: Harness, env: dict[str, str], backend: FakeBackend, caplog: pytest.LogCaptureFixture
) -> None:
    email = backend.add_user()
    async with gateway(env) as client:
        response = await login(client, email)
        assert response.status_code == 200
        body = response.json()
        assert body["token_type"] == "Bearer"
        assert body["expires_in"] == 600
        assert body["user"] == {"id": backend.user_id(email), "email": email, "roles": ["user"]}
        claims = client.app.state.tokens.verify_access(body["access_token"])
        assert claims.sub == backend.user_id(email)
        token = refresh_cookie(response)
        assert token is not None
        assert token not in response.text
        assert response.headers["cache-control"] == "no-store"
    # the log-scrubbing check (conftest) really sees the gateway's structured events
    assert "login_succeeded" in [r.getMessage() for r in caplog.records]


async def test_refresh_cookie_attributes(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    email = backend.add_user()
    async with gateway(env) as client:
        response = await login(client, email)
    [header] = [
        h for h in response.headers.get_list("set-cookie") if h.startswith("__Host-tg_refresh=")
    ]
    attributes = {part.strip().split("=")[0].lower() for part in header.split(";")}
    assert {"httponly", "secure", "path", "samesite", "max-age"} <= attributes
    # __Host- (RFC 6265bis §4.1.3.2): Secure, Path=/ and no Domain, or browsers drop it
    assert "domain" not in attributes
    assert "; Path=/;" in header + ";"
    assert "SameSite=strict" in header or "SameSite=Strict" in header


@pytest.mark.parametrize(
    ("url", "secure"),
    [
        ("http://localhost:8000/api/v1/auth/login", False),
        ("http://127.0.0.1:8000/api/v1/auth/login", False),
        ("http://gateway.example/api/v1/auth/login", True),
    ],
)
async def test_cookie_secure_is_dropped_only_for_localhost_in_development(
    gateway: Harness, env: dict[str, str], backend: FakeBackend, url: str, secure: bool
) -> None:
    email = backend.add_user()
    async with gateway(env, COOKIE_SECURE="false") as client:
        response = await client.post(url, json={"email": email, "password": PASSWORD})
    assert response.status_code == 200
    assert ("secure" in response.headers["set-cookie"].lower()) is secure


@pytest.mark.parametrize(
    "credentials",
    [
        {"email": "nobody@example.test", "password": PASSWORD},
        {"email": "KNOWN", "password": "wrong password"},
    ],
    ids=["unknown-user", "wrong-password"],
)
async def test_bad_credentials_get_one_generic_401(
    gateway: Harness, env: dict[str, str], backend: FakeBackend, credentials: dict[str, str]
) -> None:
    email = backend.add_user()
    if credentials["email"] == "KNOWN":
        credentials = {**credentials, "email": email}
    async with gateway(env) as client:
        response = await client.post("/api/v1/auth/login", json=credentials)
    assert response.status_code == 401
    assert response.json() == {
        "error": {"code": "invalid_credentials", "message": "invalid email or password"}
    }
    assert "set-cookie" not in response.headers


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"{not json", 400),
        (b"\xff\xfe", 400),
        (b"[]", 422),
        (b'{"email": 1, "password": "x"}', 422),
        (b'{"email": "a@b.test", "password": ["x"]}', 422),
        (b'{"email": "a@b.test"}', 422),
        (b'{"email": "not-an-email", "password": "x"}', 422),
        (b'{"email": "a@b.test", "password": "' + b"x" * 5000 + b'"}', 413),
    ],
)
async def test_login_body_validation(
    gateway: Harness, env: dict[str, str], content: bytes, status: int
) -> None:
    async with gateway(env) as client:
        response = await client.post(
            "/api/v1/auth/login", content=content, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == status
    assert set(response.json()["error"]) == {"code", "message"}


async def test_oversized_streamed_body_is_413(gateway: Harness, env: dict[str, str]) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 1024

    async with gateway(env) as client:
        response = await client.post(
            "/api/v1/auth/login", content=chunks(), headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 413


async def test_login_with_backend_down_is_503(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    email = backend.add_user()
    async with gateway(env, backend_up=False) as client:
        response = await login(client, email)
        ready = await client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["retry-after"].isdigit()
    assert response.json()["error"]["code"] == "service_unavailable"
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert checks["backend"].startswith("unreachable")
    assert checks["postgres"] is True and checks["redis"] is True


async def test_healthz_and_readyz(gateway: Harness, env: dict[str, str]) -> None:
    async with gateway(env) as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"backend": True, "postgres": True, "redis": True}


async def test_unknown_auth_route_is_json_404(gateway: Harness, env: dict[str, str]) -> None:
    async with gateway(env) as client:
        response = await client.get("/api/v1/auth/nope")
    assert response.status_code in (404, 405)
    assert "error" in response.json()


async def test_login_method_not_allowed(gateway: Harness, env: dict[str, str]) -> None:
    async with gateway(env) as client:
        response = await client.get("/api/v1/auth/login")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
