"""RevokedSessions on its own: Redis unreachable, then back."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from gateway.revocation import RevokedSessions


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
