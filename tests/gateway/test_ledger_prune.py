"""Retention (issue 14): ended families are deleted after REFRESH_LEDGER_RETENTION, live ones never.

These tests use a database of their own so that "exactly these families were deleted" is a
statement about every row, not only about the ones a test made.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from bench.legacy_ledger import LegacyLedger
from gateway.sessions.ledger import Ledger, Outcome
from tests.gateway.conftest import FakeBackend, Harness, as_role
from tokengate.cli import main

DAY = 86400
RETENTION = 7 * DAY


@pytest.fixture(scope="module")
def prune_dsn(new_database: Callable[[], str]) -> str:
    from tokengate.migrate import migrate

    dsn = new_database()
    asyncio.run(migrate(dsn))
    return as_role(dsn, "tokengate_gateway")


@pytest.fixture
async def prune_pool(prune_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(prune_dsn, min_size=1, max_size=10)
    assert pool is not None
    try:
        await pool.execute("DELETE FROM refresh_session")  # old-format rows cascade
        yield pool
    finally:
        await pool.close()


def ledger(pool: asyncpg.Pool) -> Ledger:
    return Ledger(pool, refresh_ttl=3600, family_lifetime=30 * DAY, grace_seconds=10)


async def family(led: Ledger, created: int, *, lifetime: int = 30 * DAY) -> str:
    issued = await led.create_family(
        user_id=str(uuid.uuid4()),
        roles=["user"],
        user_agent=None,
        ip=None,
        now=created,
        family_lifetime=lifetime,
    )
    return issued.sid


async def fill_ended(pool: asyncpg.Pool, count: int, now: int) -> None:
    """``count`` families revoked long before the retention cut-off, written in one statement."""
    await pool.execute(
        "INSERT INTO refresh_session (family_id, user_id, created_at, last_used_at,"
        " absolute_expires_at, revoked_at, revoked_reason, generation, current_digest)"
        " SELECT gen_random_uuid(), gen_random_uuid(), $2, $2, $3, $2, 'logout', 1, '\\x00'"
        " FROM generate_series(1, $1)",
        count,
        _ts(now - RETENTION - 2 * DAY),
        _ts(now + DAY),
    )


def _ts(epoch: int) -> object:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC)


async def ids(pool: asyncpg.Pool) -> set[str]:
    return {str(r["family_id"]) for r in await pool.fetch("SELECT family_id FROM refresh_session")}


async def test_prune_deletes_exactly_the_ended_families_past_retention(
    prune_pool: asyncpg.Pool,
) -> None:
    led = ledger(prune_pool)
    old = LegacyLedger(prune_pool, refresh_ttl=3600, family_lifetime=30 * DAY, grace_seconds=10)
    now = int(time.time())
    past = now - RETENTION - DAY  # one day beyond the cut-off

    live = await family(led, now)
    idle_but_live = await family(led, now - 20 * DAY)  # within its 30-day lifetime
    revoked_recently = await family(led, now)
    await led.revoke_family(revoked_recently, reason="logout", now=now - DAY)
    expired_recently = await family(led, now - 31 * DAY)  # ended a day ago: kept
    revoked_long_ago = await family(led, past - DAY)
    await led.revoke_family(revoked_long_ago, reason="reuse", now=past)
    expired_long_ago = await family(led, past - 30 * DAY)  # its lifetime ended at `past`
    legacy_ended = (
        await old.create_family(
            user_id=str(uuid.uuid4()), roles=[], user_agent=None, ip=None, now=past - 30 * DAY
        )
    ).sid
    legacy_live = (
        await old.create_family(
            user_id=str(uuid.uuid4()), roles=[], user_agent=None, ip=None, now=now
        )
    ).sid

    report = await led.prune(retention=RETENTION, now=now, batch_size=2)
    assert report.deleted == 3
    assert report.batches == 2 and not report.contended
    assert await ids(prune_pool) == {
        live,
        idle_but_live,
        revoked_recently,
        expired_recently,
        legacy_live,
    }
    # the old-format token rows of the deleted family went with it, the live family's stayed
    legacy_rows = await prune_pool.fetch("SELECT family_id FROM refresh_token_family")
    assert {str(r["family_id"]) for r in legacy_rows} == {legacy_live}
    # a second pass finds nothing; the live families still rotate
    assert (await led.prune(retention=RETENTION, now=now)).deleted == 0
    gone = {revoked_long_ago, expired_long_ago, legacy_ended}
    assert not gone & await ids(prune_pool)


async def test_two_gateways_pruning_at_once_do_not_conflict(
    prune_pool: asyncpg.Pool, prune_dsn: str
) -> None:
    now = int(time.time())
    led = ledger(prune_pool)
    live = [
        await led.create_family(
            user_id=str(uuid.uuid4()), roles=[], user_agent=None, ip=None, now=now
        )
        for _ in range(20)
    ]
    await fill_ended(prune_pool, 6000, now)
    other_pool = await asyncpg.create_pool(prune_dsn, min_size=1, max_size=2)
    assert other_pool is not None
    try:
        other = ledger(other_pool)

        async def rotate_all() -> list[Outcome]:
            return [(await led.rotate(i.as_claims(), now=now)).outcome for i in live]

        one, two, rotated = await asyncio.gather(
            led.prune(retention=RETENTION, now=now, batch_size=200),
            other.prune(retention=RETENTION, now=now, batch_size=200),
            rotate_all(),
        )
    finally:
        await other_pool.close()
    assert one.deleted + two.deleted == 6000
    assert rotated == [Outcome.ROTATED] * 20  # rotations went on while the prune ran
    assert await ids(prune_pool) == {i.sid for i in live}


async def test_the_gateway_prunes_on_its_schedule(
    gateway: Harness, env: dict[str, str], backend: FakeBackend, prune_pool: asyncpg.Pool,
    prune_dsn: str,
) -> None:  # fmt: skip
    now = int(time.time())
    await fill_ended(prune_pool, 50, now)
    keep = await family(ledger(prune_pool), now)
    async with gateway(
        env,
        DATABASE_URL=prune_dsn,
        REFRESH_LEDGER_PRUNE_INTERVAL="1",
        REFRESH_LEDGER_RETENTION=str(RETENTION),
    ) as client:
        deadline = time.monotonic() + 10
        while client.app.state.pruner.passes == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert client.app.state.pruner.passes >= 1
    assert await ids(prune_pool) == {keep}


async def test_tokengate_ledger_prune(
    prune_pool: asyncpg.Pool,
    prune_dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    now = int(time.time())
    await fill_ended(prune_pool, 30, now)
    keep = await family(ledger(prune_pool), now)
    monkeypatch.setenv("DATABASE_URL", prune_dsn)
    monkeypatch.setenv("REFRESH_LEDGER_RETENTION", str(RETENTION))
    # a retention shorter than an access token's life would forget live revocations
    assert await asyncio.to_thread(main, ["ledger", "prune", "--retention", "10"]) == 2
    assert "ACCESS_TOKEN_TTL" in capsys.readouterr().err
    assert await asyncio.to_thread(main, ["ledger", "prune", "--batch-size", "7"]) == 0
    assert "pruned 30 ended families in 5 batch(es)" in capsys.readouterr().out
    assert await ids(prune_pool) == {keep}
