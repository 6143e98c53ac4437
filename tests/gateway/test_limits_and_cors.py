"""Rate limits (real Redis), client IP trust, CORS, and behaviour with Redis unreachable."""

from __future__ import annotations

import asyncio

import pytest
from starlette.requests import Request

from gateway.auth.ratelimit import RateLimits
from gateway.errors import RateLimited
from gateway.settings import Settings
from tests.gateway.conftest import (
    ORIGIN,
    PASSWORD,
    FakeBackend,
    Harness,
    login,
    refresh_cookie,
    refresh_with,
)

REDIS_DOWN = "redis://127.0.0.1:1/0"


async def test_login_limited_per_ip(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    async with gateway(env, LOGIN_RATE_LIMIT_IP="3/minute") as client:
        for _ in range(3):
            ok = await login(client, backend.add_user())
            assert ok.status_code == 200
            assert "x-ratelimit-remaining" in ok.headers
        limited = await login(client, backend.add_user())
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert limited.headers["x-ratelimit-limit"] == "3"
    assert limited.headers["x-ratelimit-remaining"] == "0"
    assert int(limited.headers["x-ratelimit-reset"]) > 0


async def test_login_limited_per_account_even_with_wrong_passwords(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    email = backend.add_user()
    async with gateway(env, LOGIN_RATE_LIMIT_ACCOUNT="2/minute") as client:
        for _ in range(2):
            assert (await login(client, email, "wrong")).status_code == 401
        # case and surrounding spaces do not make a new account bucket
        limited = await login(client, f" {email.upper()} ", PASSWORD)
        other = await login(client, backend.add_user())
    assert limited.status_code == 429
    assert "retry-after" in limited.headers
    assert other.status_code == 200


async def test_the_account_limit_counts_failures_not_successes(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    """Issue 24, item 11: logins that succeed (three tabs, a script) use up nothing; failures
    do, and at the limit the right password is refused too (anything else is an oracle)."""
    email = backend.add_user()
    async with gateway(env, LOGIN_RATE_LIMIT_ACCOUNT="3/minute") as client:
        for _ in range(6):  # twice the limit, all right
            assert (await login(client, email)).status_code == 200
        assert (await login(client, email, "typo")).status_code == 401
        # a success after a failure does not reset the count (docs/SECURITY.md, "Login limits")
        assert (await login(client, email)).status_code == 200
        for _ in range(2):
            assert (await login(client, email, "wrong")).status_code == 401
        limited = await login(client, email)  # three failures: the right password waits too
        other = await login(client, backend.add_user())
    assert limited.status_code == 429
    assert limited.json() == {"error": {"code": "rate_limited", "message": "too many requests"}}
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert other.status_code == 200


async def test_a_burst_of_guesses_cannot_slip_past_the_account_limit(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    """Attempts are counted before the password check, so guesses in flight at once count."""
    email = backend.add_user()
    async with gateway(env, LOGIN_RATE_LIMIT_ACCOUNT="3/minute") as client:
        answers = await asyncio.gather(*(login(client, email, f"guess {i}") for i in range(12)))
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [401] * 3 + [429] * 9


async def test_the_per_ip_limit_still_counts_every_attempt(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    email = backend.add_user()
    async with gateway(env, LOGIN_RATE_LIMIT_IP="3/minute") as client:
        statuses = [(await login(client, email)).status_code for _ in range(4)]
    assert statuses == [200, 200, 200, 429]


async def test_a_refund_after_its_window_grants_no_extra_guess(
    env: dict[str, str], redis_prefix: str
) -> None:
    """A success answered after its window ended must not leave a negative counter."""
    settings = Settings.from_env(
        {
            **env,
            "REDIS_KEY_PREFIX": f"{redis_prefix}refund:",
            "LOGIN_RATE_LIMIT_ACCOUNT": "2/minute",
        }
    )
    limits = RateLimits(settings)
    item = limits.login_account
    assert item is not None
    await limits.refund(item, "login-account", "gone")  # no window: nothing is created
    for _ in range(2):
        await limits.check(item, "login-account", "gone")
    with pytest.raises(RateLimited):
        await limits.check(item, "login-account", "gone")


def test_the_limits_accept_redis_over_tls(env: dict[str, str]) -> None:
    """docs/SECURITY.md's checklist says ``rediss://`` works: the limits' storage takes it."""
    limits = RateLimits(Settings.from_env({**env, "REDIS_URL": "rediss://127.0.0.1:1/0"}))
    assert limits.login_account is not None


async def test_refresh_limited_per_ip(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    async with gateway(env, REFRESH_RATE_LIMIT="2/minute") as client:
        token = refresh_cookie(await login(client, backend.add_user()))
        assert token is not None
        for _ in range(2):
            response = await refresh_with(client, token)
            assert response.status_code == 200
            token = refresh_cookie(response) or token
        limited = await refresh_with(client, token)
    assert limited.status_code == 429
    assert "retry-after" in limited.headers


async def test_forwarded_for_is_ignored_by_default(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    async with gateway(env, LOGIN_RATE_LIMIT_IP="2/minute") as client:
        statuses = [
            (
                await client.post(
                    "/api/v1/auth/login",
                    json={"email": backend.add_user(), "password": PASSWORD},
                    headers={"X-Forwarded-For": f"198.51.100.{i}"},
                )
            ).status_code
            for i in range(3)
        ]
    assert statuses == [200, 200, 429]


@pytest.mark.parametrize(
    ("forwarded", "stored"),
    [
        ("192.0.2.55, 203.0.113.9", "192.0.2.55"),
        # The right-most untrusted hop is not an address: the trusted peer itself is recorded,
        # never the client's string (it also keys the login limiter).
        ("<script>, 203.0.113.9", "203.0.113.7"),
    ],
)
async def test_trusted_proxy_supplies_the_session_ip(
    gateway: Harness, env: dict[str, str], backend: FakeBackend, forwarded: str, stored: str
) -> None:
    async with gateway(env, TRUSTED_PROXIES="203.0.113.0/24") as client:
        response = await client.post(
            "/api/v1/auth/login",
            json={"email": backend.add_user(), "password": PASSWORD},
            headers={"X-Forwarded-For": forwarded},
        )
        access = response.json()["access_token"]
        sessions = await client.get(
            "/api/v1/auth/sessions", headers={"Authorization": f"Bearer {access}"}
        )
    assert sessions.json()["sessions"][0]["ip"] == stored


def _request(peer: str, forwarded: list[str]) -> Request:
    headers = [(b"x-forwarded-for", value.encode()) for value in forwarded]
    return Request({"type": "http", "headers": headers, "client": (peer, 1234)})


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("198.51.100.1", ["1.2.3.4"], "", "198.51.100.1"),
        ("198.51.100.1", ["1.2.3.4"], "10.0.0.0/8", "198.51.100.1"),
        ("10.0.0.2", ["1.2.3.4"], "10.0.0.0/8", "1.2.3.4"),
        ("10.0.0.2", ["6.6.6.6, 1.2.3.4, 10.0.0.9"], "10.0.0.0/8", "1.2.3.4"),
        ("10.0.0.2", [], "10.0.0.0/8", "10.0.0.2"),
        # The login limiter used to key on any string a trusted proxy passed along; a hop that is
        # not an address is now the peer, as in the forwarded header (one rule, servicekit).
        ("10.0.0.2", ["garbage"], "10.0.0.0/8", "10.0.0.2"),
        # A client's own X-Forwarded-For field must not shadow the one its proxy appended.
        ("10.0.0.2", ["6.6.6.6", "1.2.3.4"], "10.0.0.0/8", "1.2.3.4"),
    ],
)
def test_rate_limit_client_ip(
    env: dict[str, str], peer: str, forwarded: list[str], trusted: str, expected: str
) -> None:
    settings = Settings.from_env({**env, "TRUSTED_PROXIES": trusted})
    assert RateLimits(settings).client_ip(_request(peer, forwarded)) == expected


async def test_cors_preflight_allowed_origin(gateway: Harness, env: dict[str, str]) -> None:
    async with gateway(env) as client:
        response = await client.options(
            "/api/v1/auth/refresh",
            headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
        )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    assert response.headers["access-control-allow-credentials"] == "true"


async def test_cors_preflight_denied_origin(gateway: Harness, env: dict[str, str]) -> None:
    async with gateway(env) as client:
        response = await client.options(
            "/api/v1/auth/refresh",
            headers={
                "Origin": "https://evil.example",
                "Access-Control-Request-Method": "POST",
            },
        )
        simple = await client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert response.status_code == 400
    assert "access-control-allow-origin" not in response.headers
    assert "access-control-allow-origin" not in simple.headers


async def test_login_fails_closed_when_redis_is_down(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    async with gateway(env, REDIS_URL=REDIS_DOWN) as client:
        response = await login(client, backend.add_user())
        ready = await client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["retry-after"].isdigit()
    assert response.json()["error"]["code"] == "service_unavailable"
    assert backend.calls == 0  # no password was checked without a working limiter
    assert ready.status_code == 503
    assert ready.json()["checks"]["redis"] == "unreachable"


async def test_sessions_keep_working_and_revocation_applies_locally_when_redis_is_down(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    async with gateway(env) as healthy:
        response = await login(healthy, backend.add_user())
    access = response.json()["access_token"]
    token = refresh_cookie(response)
    assert token is not None
    auth = {"Authorization": f"Bearer {access}"}
    async with gateway(env, REDIS_URL=REDIS_DOWN) as client:
        # requests that already hold an access token keep working (no Redis on that path)
        assert (await client.get("/api/v1/auth/sessions", headers=auth)).status_code == 200
        # refresh is rate limited per IP, so it fails closed like login (the cookie is kept)
        refreshed = await refresh_with(client, token)
        assert refreshed.status_code == 503
        assert "set-cookie" not in refreshed.headers
        # revocation still takes effect on this instance at once (queued for Redis)
        assert (await client.post("/api/v1/auth/logout-all", headers=auth)).status_code == 204
        assert (await client.get("/api/v1/auth/sessions", headers=auth)).status_code == 401


async def test_redis_keys_live_under_the_configured_prefix(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    prefix = env["REDIS_KEY_PREFIX"]
    async with gateway(env) as client:
        response = await login(client, backend.add_user())
        access = response.json()["access_token"]
        await client.post("/api/v1/auth/logout-all", headers={"Authorization": f"Bearer {access}"})
        redis = client.app.state.redis
        # An explicit SCAN loop: redis-py's asyncio scan_iter sometimes never returned here
        # (seen with redis-py 7.4 on a keyspace of a few dozen keys); plain SCAN never did.
        cursor, found = 0, []
        while True:
            cursor, batch = await asyncio.wait_for(
                redis.scan(cursor, match=f"{prefix}*", count=1000), 5
            )
            found += batch
            if cursor == 0:
                break
    keys = sorted(k.decode() for k in found)
    assert f"{prefix}revoked:sids" in keys
    assert sum(k.startswith(f"{prefix}ratelimit:") and "/login-" in k for k in keys) == 2
    # nothing this app wrote lives outside the prefix
    assert all(k.startswith(prefix) for k in keys)
