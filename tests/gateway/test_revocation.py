"""RevokedSessions on its own: Redis unreachable, then back (empty), and the ledger rebuild."""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.sessions.ledger import Ledger
from gateway.sessions.revocation import RevokedSessions
from tests.gateway.conftest import FakeBackend, Harness, login, refresh_cookie
from tests.support.redis_keys import forget_prefix


async def test_revocation_while_redis_is_down_is_local_then_pushed_on_reconnect(
    redis_url: str, redis_prefix: str
) -> None:
    prefix = f"{redis_prefix}revq:"
    down = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1.0)
    up = aioredis.from_url(redis_url)
    revoked = RevokedSessions(down, prefix=prefix, ttl=60)
    try:
        started = time.monotonic()
        await revoked.revoke(["sid-while-down"])
        assert time.monotonic() - started < 3
        assert "sid-while-down" in revoked  # effective on this instance at once
        assert revoked.pending == 1

        # Redis "comes back": the listener's (re)connect pushes what was queued
        revoked._client = up
        await revoked.start()
        assert revoked.connected
        assert revoked.pending == 0
        assert await up.zscore(revoked.key, "sid-while-down") is not None

        # and a peer instance sees it when it loads the set
        peer = RevokedSessions(up, prefix=prefix, ttl=60)
        await peer.start()
        try:
            assert "sid-while-down" in peer
            await revoked.revoke(["sid-live"])
            deadline = time.monotonic() + 1.0
            while "sid-live" not in peer and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert "sid-live" in peer
        finally:
            await peer.stop()
    finally:
        await revoked.stop()
        await down.aclose()
        await up.aclose()


async def test_membership_ignores_non_strings_and_expired_entries(
    redis_url: str, redis_prefix: str
) -> None:
    client = aioredis.from_url(redis_url)
    revoked = RevokedSessions(client, prefix=f"{redis_prefix}revx:", ttl=60)
    try:
        await client.zadd(revoked.key, {"expired": time.time() - 1})
        await revoked.reload()
        assert "expired" not in revoked
        assert 42 not in revoked
        assert len(revoked) == 0
    finally:
        await client.aclose()


async def test_ledger_lists_only_families_revoked_within_the_window(gateway_dsn: str) -> None:
    pool = await asyncpg.create_pool(gateway_dsn, min_size=1, max_size=2)
    try:
        ledger = Ledger(pool, refresh_ttl=3600, family_lifetime=86400, grace_seconds=10)
        now = int(time.time())
        families = [
            await ledger.create_family(
                user_id=str(uuid.uuid4()), roles=["user"], user_agent=None, ip=None, now=now
            )
            for _ in range(3)
        ]
        old, recent, live = (f.sid for f in families)
        await ledger.revoke_family(old, reason="logout", now=now - 700)
        await ledger.revoke_family(recent, reason="logout", now=now - 5)
        rows = dict(await ledger.revoked_since(now - 600))
        assert recent in rows and abs(rows[recent] - (now - 5)) < 1
        assert old not in rows and live not in rows
    finally:
        await pool.close()


async def test_an_instance_rebuilds_from_the_ledger_and_refills_an_empty_redis(
    gateway_dsn: str, redis_url: str, redis_prefix: str
) -> None:
    """Redis came back empty: the set is rebuilt from PostgreSQL and pushed back, so an instance
    that starts afterwards learns it even from Redis alone."""
    prefix = f"{redis_prefix}revrebuild:"
    pool = await asyncpg.create_pool(gateway_dsn, min_size=1, max_size=2)
    down = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    up = aioredis.from_url(redis_url)
    ledger = Ledger(pool, refresh_ttl=3600, family_lifetime=86400, grace_seconds=10)
    now = int(time.time())
    family = await ledger.create_family(
        user_id=str(uuid.uuid4()), roles=["user"], user_agent=None, ip=None, now=now
    )
    await ledger.revoke_family(family.sid, reason="logout", now=now)
    one = RevokedSessions(down, prefix=prefix, ttl=60, revoked_since=ledger.revoked_since)
    peer = RevokedSessions(up, prefix=prefix, ttl=60)  # no ledger: knows only what Redis says
    try:
        # start-up with Redis unreachable: the ledger alone denies the family
        await one.start(wait=0.3)
        assert not one.connected
        assert family.sid in one
        assert await up.zscore(one.key, family.sid) is None  # Redis is "empty"

        one._client = up  # Redis is back (empty): the reconnect re-pushes what one knows
        deadline = time.monotonic() + 5
        while not one.connected and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert one.connected
        score = await up.zscore(one.key, family.sid)
        assert score is not None and abs(score - (now + 60)) < 2

        await peer.start()
        assert family.sid in peer
    finally:
        await one.stop()
        await peer.stop()
        await down.aclose()
        await up.aclose()
        await pool.close()


async def test_a_failed_rebuild_is_logged_and_does_not_stop_the_listener(
    redis_url: str, redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    attempts = 0

    async def unavailable(since: float) -> list[tuple[str, float]]:
        nonlocal attempts
        attempts += 1
        raise ConnectionRefusedError()

    client = aioredis.from_url(redis_url)
    revoked = RevokedSessions(
        client, prefix=f"{redis_prefix}revfail:", ttl=60, revoked_since=unavailable
    )
    try:
        await revoked.start()
        assert revoked.connected
        assert attempts == 2  # at start-up and after subscribing; retried later by the listener
        assert "revocation_rebuild_failed" in [r.getMessage() for r in caplog.records]
        await revoked.revoke(["sid-1"])
        assert "sid-1" in revoked
    finally:
        await revoked.stop()
        await client.aclose()


async def test_a_gateway_started_after_redis_lost_everything_still_denies_a_logged_out_session(
    gateway: Harness, env: dict[str, str], backend: FakeBackend, redis_url: str
) -> None:
    async with gateway(env) as one:
        response = await login(one, backend.add_user())
        access, token = response.json()["access_token"], refresh_cookie(response)
        bearer = {"Authorization": f"Bearer {access}"}
        assert (await one.get("/api/v1/auth/sessions", headers=bearer)).status_code == 200
        logout = await one.post(
            "/api/v1/auth/logout", headers={"Cookie": f"__Host-tg_refresh={token}"}
        )
        assert logout.status_code == 204
    # Redis forgets everything under this prefix (a restart without persistence)
    await forget_prefix(redis_url, env["REDIS_KEY_PREFIX"])
    async with gateway(env) as late:
        denied = await late.get("/api/v1/auth/sessions", headers=bearer)
        assert denied.status_code == 401
        assert denied.json()["error"]["code"] == "session_revoked"
    # and one that starts while Redis is unreachable too
    async with gateway(env, REDIS_URL="redis://127.0.0.1:1/0") as isolated:
        assert (await isolated.get("/api/v1/auth/sessions", headers=bearer)).status_code == 401
