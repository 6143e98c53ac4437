"""The background batch writer: bounded queue (drops counted), batches, the final flush, and
the event bounds."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from servicekit.audit import BatchWriter, Event

from tokengate.audit import ChainReport, verify_chains


async def _count(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM audit_events"))
    finally:
        await conn.close()


def test_a_full_queue_drops_and_counts_and_close_flushes_the_rest(audit_db: str) -> None:
    dropped: list[int] = []
    written: list[int] = []

    async def go() -> int:
        pool = await asyncpg.create_pool(audit_db, min_size=1, max_size=2)
        writer = BatchWriter(
            pool,
            "gateway/test/1",
            queue_size=5,
            batch_size=2,
            flush_interval=30.0,  # only the final flush writes
            on_drop=dropped.append,
            on_written=written.append,
        )
        writer.start()
        accepted = [writer.submit(Event.make("login_failed", "failure")) for _ in range(8)]
        assert accepted == [True] * 5 + [False] * 3
        await writer.close()
        await pool.close()
        return writer.dropped

    assert asyncio.run(go()) == 3
    assert sum(dropped) == 3 and written == [2, 2, 1]
    assert asyncio.run(_count(audit_db)) == 5


class Flaky:
    """The real pool, or a database that cannot be reached."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.down = False

    def acquire(self) -> Any:
        if self.down:
            raise OSError("database unreachable")
        return self.pool.acquire()


def test_flushes_within_the_interval_and_survives_a_database_outage(audit_db: str) -> None:
    async def go() -> list[ChainReport]:
        pool = await asyncpg.create_pool(audit_db, min_size=1, max_size=2)
        flaky = Flaky(pool)
        writer = BatchWriter(flaky, "gateway/test/2", flush_interval=0.05)
        writer.start()
        writer.submit(Event.make("logout", "success"))
        await asyncio.sleep(0.5)
        assert await _count(audit_db) == 1
        # the database refuses (a dropped partition stands for any outage): kept, retried
        flaky.down = True
        writer.submit(Event.make("logout", "success"))
        await asyncio.sleep(0.2)
        assert writer.pending == 1
        flaky.down = False
        await asyncio.sleep(0.3)
        assert writer.pending == 0
        await writer.close()
        conn = await pool.acquire()
        try:
            reports = list(await verify_chains(conn))
        finally:
            await pool.release(conn)
            await pool.close()
        return reports

    reports = asyncio.run(go())
    assert [(r.events, r.problem) for r in reports] == [(2, None)]
    assert asyncio.run(_count(audit_db)) == 2


def test_event_fields_are_bounded_and_secrets_keys_dropped() -> None:
    event = Event.make(
        "login_failed",
        "failure",
        user_agent="x" * 5000 + "\x00\x1b[2J",
        ip="1" * 300,
        subject="not-a-uuid",
        trace_id="zz",
        details={
            "password": "hunter2",
            "refresh_token": "eyJ...",
            "reason": "r" * 500,
            **{f"k{i}": i for i in range(20)},
        },
    )
    assert event.user_agent is not None and len(event.user_agent) == 256
    assert event.ip is not None and len(event.ip) == 64
    assert event.subject is None and event.trace_id is None
    assert "password" not in event.details and "refresh_token" not in event.details
    assert len(event.details) == 8
    with pytest.raises(ValueError, match="snake_case"):
        Event.make("Login Failed", "failure")
    with pytest.raises(ValueError, match="outcome"):
        Event.make("login_failed", "maybe")


def test_a_lost_tail_after_a_failover_is_a_restart_not_tampering(audit_db: str) -> None:
    """What a failover to a standby that missed the last commits looks like: the chain's newest
    rows and the head updates of the same transactions are gone together."""

    async def go() -> tuple[int, list[ChainReport]]:
        pool = await asyncpg.create_pool(audit_db, min_size=1, max_size=2)
        writer = BatchWriter(pool, "gateway/test/3", flush_interval=30.0)
        for _ in range(3):
            writer.submit(Event.make("logout", "success"))
            await writer.flush()
        async with pool.acquire() as conn:
            await conn.execute("SET session_replication_role = replica")
            head = await conn.fetchrow("SELECT seq, hash FROM audit_events WHERE seq = 1")
            await conn.execute("DELETE FROM audit_events WHERE seq > 1")
            await conn.execute("UPDATE audit_heads SET last_seq = 1, last_hash = $1", head["hash"])
            await conn.execute("SET session_replication_role = origin")
        writer.submit(Event.make("logout", "success"))
        await writer.flush()
        async with pool.acquire() as conn:
            reports = list(await verify_chains(conn))
        await pool.close()
        return writer.restarts, reports

    restarts, reports = asyncio.run(go())
    assert restarts == 1
    assert [(r.events, r.problem) for r in reports] == [(2, None)]
