"""Refresh, logout and sessions through the HTTP app: rotation, reuse detection, revocation."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from gateway.errors import SessionRevoked
from tests.gateway.conftest import (
    ORIGIN,
    FakeBackend,
    Harness,
    login,
    refresh_cookie,
    refresh_with,
)


async def _login(client: httpx.AsyncClient, backend: FakeBackend) -> tuple[str, str]:
    response = await login(client, backend.add_user())
    assert response.status_code == 200
    token = refresh_cookie(response)
    assert token is not None
    return response.json()["access_token"], token


def _assert_cleared(response: httpx.Response) -> None:
    header = response.headers["set-cookie"]
    assert header.startswith("__Host-tg_refresh=")
    assert (
        "Max-Age=0" in header
        or "expires=Thu, 01 Jan 1970" in header.lower()
        or ('__Host-tg_refresh="";' in header)
    )


async def test_refresh_rotates_and_sets_new_cookie(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    async with gateway(env) as client:
        _, token = await _login(client, backend)
        response = await refresh_with(client, token)
        assert response.status_code == 200
        successor = refresh_cookie(response)
        assert successor is not None and successor != token
        access = response.json()["access_token"]
        claims = client.app.state.tokens.verify_access(access)
        assert claims.roles == ("user",)
        assert (await refresh_with(client, successor)).status_code == 200


async def test_retry_within_grace_returns_same_successor(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    async with gateway(env) as client:
        _, token = await _login(client, backend)
        first = await refresh_with(client, token)
        second = await refresh_with(client, token)
    assert first.status_code == second.status_code == 200
    assert refresh_cookie(first) == refresh_cookie(second)


async def test_fifty_concurrent_refreshes_of_one_token(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    async with gateway(env) as client:
        _, token = await _login(client, backend)
        client.cookies.clear()
        responses = await asyncio.gather(
            *(
                client.post(
                    "/api/v1/auth/refresh", headers={"Cookie": f"__Host-tg_refresh={token}"}
                )
                for _ in range(50)
            )
        )
        statuses = [r.status_code for r in responses]
        assert all(s < 500 for s in statuses), statuses
        ok = [r for r in responses if r.status_code == 200]
        # inside the grace window every loser of the row lock is a retry, so all succeed
        assert len(ok) == 50, statuses
        successors = {refresh_cookie(r) for r in ok}
        assert len(successors) == 1
        pool = client.app.state.pool
        sid = client.app.state.tokens.verify_refresh(token).sid
        # exactly one rotation was recorded: the family moved from generation 1 to 2
        generation = await pool.fetchval(
            "SELECT generation FROM refresh_session WHERE family_id = $1", sid
        )
        assert generation == 2


async def test_reuse_after_grace_kills_family_on_every_instance(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    async with (
        gateway(env, REFRESH_GRACE_SECONDS="0") as one,
        gateway(env, REFRESH_GRACE_SECONDS="0") as two,
    ):
        _, token = await _login(one, backend)
        rotated = await refresh_with(one, token)
        assert rotated.status_code == 200
        newest = refresh_cookie(rotated)
        live_access = rotated.json()["access_token"]
        assert newest is not None
        # both instances accept the live access token before the replay
        for client in (one, two):
            claims = client.app.state.tokens.verify_access(live_access)
            assert claims.sid not in client.app.state.revoked

        replay = await refresh_with(one, token)
        assert replay.status_code == 401
        _assert_cleared(replay)

        assert (await refresh_with(one, newest)).status_code == 401
        assert (await refresh_with(two, newest)).status_code == 401
        deadline = time.monotonic() + 1.0
        revoked_two = two.app.state.revoked
        while claims.sid not in revoked_two and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for client in (one, two):
            assert claims.sid in client.app.state.revoked
            response = await client.get(
                "/api/v1/auth/sessions", headers={"Authorization": f"Bearer {live_access}"}
            )
            assert response.status_code == 401
            assert response.json()["error"]["code"] == SessionRevoked.code


async def test_revocations_are_loaded_at_start_up(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    async with gateway(env) as one:
        access, _ = await _login(one, backend)
        sid = one.app.state.tokens.verify_access(access).sid
        assert (
            await one.post("/api/v1/auth/logout-all", headers={"Authorization": f"Bearer {access}"})
        ).status_code == 204
    async with gateway(env) as late:
        assert sid in late.app.state.revoked


@pytest.mark.parametrize("cookie", [None, "garbage", "eyJhbGciOiJub25lIn0.eyJ9.x"])
async def test_refresh_without_a_valid_cookie_is_401_and_clears(
    gateway: Harness, env: dict[str, str], cookie: str | None
) -> None:
    async with gateway(env) as client:
        headers = {"Cookie": f"__Host-tg_refresh={cookie}"} if cookie else {}
        response = await client.post("/api/v1/auth/refresh", headers=headers)
    assert response.status_code == 401
    _assert_cleared(response)


async def test_access_token_is_not_a_refresh_token(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    async with gateway(env) as client:
        access, token = await _login(client, backend)
        assert (await refresh_with(client, access)).status_code == 401
        response = await client.get(
            "/api/v1/auth/sessions", headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 401


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"Origin": ORIGIN}, 200),
        ({"Origin": "https://evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Referer": f"{ORIGIN}/some/page"}, 200),
        ({"Referer": "https://evil.example/page"}, 403),
        ({}, 403),
    ],
    ids=["allowed-origin", "foreign-origin", "null-origin", "referer-ok", "referer-bad", "none"],
)
async def test_refresh_origin_check(
    gateway: Harness,
    env: dict[str, str],
    backend: FakeBackend,
    headers: dict[str, str],
    status: int,
) -> None:
    async with gateway(env) as client:
        _, token = await _login(client, backend)
        client.headers.pop("Origin")
        client.cookies.clear()
        response = await client.post(
            "/api/v1/auth/refresh", headers={**headers, "Cookie": f"__Host-tg_refresh={token}"}
        )
        assert response.status_code == status
        logout = await client.post(
            "/api/v1/auth/logout", headers={**headers, "Cookie": f"__Host-tg_refresh={token}"}
        )
        assert logout.status_code == (204 if status == 200 else 403)


async def test_a_plain_bearer_client_is_told_what_to_do(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    """Issue 24, item 10: JSON credentials without Origin or proof still log in (scripts and the
    attack tests rely on it), and its refresh or logout without Origin is refused with an answer
    that says what works instead of calling the client "cross-site"; no body ever carries an
    unbound refresh token."""
    async with gateway(env) as client:
        client.headers.pop("Origin")
        email = backend.add_user()
        logged_in = await login(client, email)
        assert logged_in.status_code == 200
        body = logged_in.json()
        assert body["token_type"] == "Bearer" and body["access_token"]
        assert "refresh_token" not in body
        token = refresh_cookie(logged_in)
        assert token is not None
        cookie = {"Cookie": f"__Host-tg_refresh={token}"}
        client.cookies.clear()
        for path in ("/api/v1/auth/refresh", "/api/v1/auth/logout"):
            refused = await client.post(path, headers=cookie)
            assert refused.status_code == 403
            error = refused.json()["error"]
            assert error["code"] == "forbidden"
            assert "Origin" in error["message"] and "DPoP" in error["message"]
            assert "cross-site" not in error["message"]
            foreign = await client.post(path, headers={**cookie, "Origin": "https://evil.example"})
            assert foreign.json()["error"]["message"] == "cross-site request refused"
            # the cookie's token in a body, without a proof: refused, and says why
            in_body = await client.post(path, json={"refresh_token": token})
            assert in_body.status_code == 400
            assert "DPoP" in in_body.json()["error"]["message"]
        # the session is untouched by all of this
        ok = await client.post("/api/v1/auth/refresh", headers={**cookie, "Origin": ORIGIN})
        assert ok.status_code == 200 and "refresh_token" not in ok.json()


async def test_logout_revokes_family_and_its_access_tokens(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    async with gateway(env) as client:
        access, token = await _login(client, backend)
        client.cookies.clear()
        response = await client.post(
            "/api/v1/auth/logout", headers={"Cookie": f"__Host-tg_refresh={token}"}
        )
        assert response.status_code == 204
        _assert_cleared(response)
        assert (await refresh_with(client, token)).status_code == 401
        sessions = await client.get(
            "/api/v1/auth/sessions", headers={"Authorization": f"Bearer {access}"}
        )
        assert sessions.status_code == 401
        # logging out twice, or with no cookie at all, is still a clean 204
        client.cookies.clear()
        assert (await client.post("/api/v1/auth/logout")).status_code == 204


async def test_sessions_list_and_delete_one(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    email = backend.add_user()
    async with gateway(env) as client:
        first = await login(client, email)
        second = await login(client, email)
        access = second.json()["access_token"]
        auth = {"Authorization": f"Bearer {access}"}
        listed = (await client.get("/api/v1/auth/sessions", headers=auth)).json()["sessions"]
        assert len(listed) == 2
        assert sum(s["current"] for s in listed) == 1
        assert {s["ip"] for s in listed} == {"203.0.113.7"}
        other = next(s["id"] for s in listed if not s["current"])
        assert (
            await client.delete(f"/api/v1/auth/sessions/{other}", headers=auth)
        ).status_code == 204
        assert (
            await client.delete(f"/api/v1/auth/sessions/{other}", headers=auth)
        ).status_code == 204
        first_token = refresh_cookie(first)
        assert first_token is not None
        assert (await refresh_with(client, first_token)).status_code == 401
        missing = await client.delete("/api/v1/auth/sessions/not-a-uuid", headers=auth)
        assert missing.status_code == 404


async def test_cannot_delete_someone_elses_session(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    async with gateway(env) as client:
        access_a, _ = await _login(client, backend)
        access_b, _ = await _login(client, backend)
        sid_b = client.app.state.tokens.verify_access(access_b).sid
        response = await client.delete(
            f"/api/v1/auth/sessions/{sid_b}", headers={"Authorization": f"Bearer {access_a}"}
        )
        assert response.status_code == 404
        assert sid_b not in client.app.state.revoked


async def test_logout_all(gateway: Harness, env: dict[str, str], backend: FakeBackend) -> None:
    email = backend.add_user()
    async with gateway(env) as client:
        tokens = [refresh_cookie(await login(client, email)) for _ in range(3)]
        access = (await login(client, email)).json()["access_token"]
        auth = {"Authorization": f"Bearer {access}"}
        assert (await client.post("/api/v1/auth/logout-all", headers=auth)).status_code == 204
        for token in tokens:
            assert token is not None
            assert (await refresh_with(client, token)).status_code == 401
        assert (await client.get("/api/v1/auth/sessions", headers=auth)).status_code == 401


async def test_sessions_require_a_bearer_token(gateway: Harness, env: dict[str, str]) -> None:
    async with gateway(env) as client:
        response = await client.get("/api/v1/auth/sessions")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert "DPoP algs=" in response.headers["www-authenticate"]


async def test_postgres_down_gives_503_not_500(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    async with gateway(env) as client:
        access, token = await _login(client, backend)
        await client.app.state.pool.close()
        responses = [
            await login(client, backend.add_user()),
            await refresh_with(client, token),
            await client.get(
                "/api/v1/auth/sessions", headers={"Authorization": f"Bearer {access}"}
            ),
            await client.get("/readyz"),
        ]
    for response in responses:
        assert response.status_code == 503
        assert "retry-after" in response.headers
    assert responses[-1].json()["checks"]["postgres"] == "unreachable"


async def test_revocation_set_reload_and_expiry(gateway: Harness, env: dict[str, str]) -> None:
    async with gateway(env) as client:
        revoked = client.app.state.revoked
        redis = client.app.state.redis
        # written by another instance while this one missed the pub/sub message
        await redis.zadd(revoked.key, {"sid-from-elsewhere": time.time() + 60, "old": 1.0})
        assert "sid-from-elsewhere" not in revoked
        await revoked.reload()
        assert "sid-from-elsewhere" in revoked
        assert "old" not in revoked
        # every key and channel lives under the configured prefix
        assert revoked.key.startswith(env["REDIS_KEY_PREFIX"])
        assert revoked.channel.startswith(env["REDIS_KEY_PREFIX"])


async def test_expired_access_token_and_absolute_family_expiry_over_http(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    # Three seconds, not one: tokens are dated in whole seconds from the account check, so a
    # one-second token could already be dead when a slow (loaded, coverage-traced) login returns.
    async with gateway(env, ACCESS_TOKEN_TTL="3", REFRESH_FAMILY_LIFETIME="3") as client:
        access, token = await _login(client, backend)
        auth = {"Authorization": f"Bearer {access}"}
        assert (await client.get("/api/v1/auth/sessions", headers=auth)).status_code == 200
        await asyncio.sleep(4.1)
        expired = await client.get("/api/v1/auth/sessions", headers=auth)
        assert expired.status_code == 401
        assert expired.json()["error"]["code"] == "invalid_token"
        refreshed = await refresh_with(client, token)
        assert refreshed.status_code == 401
        _assert_cleared(refreshed)
