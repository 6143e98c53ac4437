"""The refresh-family ledger against the real PostgreSQL: every ``rotate`` outcome."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import asyncpg

from gateway.auth.tokens import RefreshClaims
from gateway.sessions.ledger import Ledger, Outcome


def ledger(pool: asyncpg.Pool, grace: int = 10) -> Ledger:
    return Ledger(pool, refresh_ttl=3600, family_lifetime=86400, grace_seconds=grace)


async def new_family(led: Ledger, now: int, **kwargs: Any) -> tuple[str, str, RefreshClaims]:
    user = str(uuid.uuid4())
    issued = await led.create_family(
        user_id=user, roles=["user"], user_agent="pytest", ip="203.0.113.7", now=now, **kwargs
    )
    return user, issued.sid, issued.as_claims()


async def test_first_use_rotates(pool: asyncpg.Pool) -> None:
    led = ledger(pool)
    now = int(time.time())
    user, sid, jti = await new_family(led, now)
    result = await led.rotate(jti, now=now + 1)
    assert result.outcome is Outcome.ROTATED
    assert result.successor is not None
    assert result.successor.jti != jti.jti
    assert result.successor.sec != jti.sec
    assert result.successor.gen == 2
    assert (result.successor.sid, result.successor.sub) == (sid, user)
    assert result.roles == ("user",)
    # the successor is a normal token: it rotates in turn
    assert (await led.rotate(result.successor.as_claims(), now=now + 2)).outcome is Outcome.ROTATED


async def test_retry_within_grace_returns_the_same_successor(pool: asyncpg.Pool) -> None:
    led = ledger(pool, grace=10)
    now = int(time.time())
    _, _, jti = await new_family(led, now)
    first = await led.rotate(jti, now=now)
    again = await led.rotate(jti, now=now + 10)
    assert again.outcome is Outcome.RETRY
    assert again.successor == first.successor


async def test_reuse_after_grace_revokes_the_family(pool: asyncpg.Pool) -> None:
    led = ledger(pool, grace=10)
    now = int(time.time())
    _, sid, jti = await new_family(led, now)
    first = await led.rotate(jti, now=now)
    assert first.successor is not None
    reused = await led.rotate(jti, now=now + 11)
    assert reused.outcome is Outcome.REUSED_REVOKED
    assert reused.sid == sid
    # the newest token of the family is dead too
    newest = await led.rotate(first.successor.as_claims(), now=now + 12)
    assert newest.outcome is Outcome.FAMILY_REVOKED


async def test_grace_zero_disables_retry(pool: asyncpg.Pool) -> None:
    led = ledger(pool, grace=0)
    now = int(time.time())
    _, _, jti = await new_family(led, now)
    assert (await led.rotate(jti, now=now)).outcome is Outcome.ROTATED
    assert (await led.rotate(jti, now=now)).outcome is Outcome.REUSED_REVOKED


async def test_revoked_family(pool: asyncpg.Pool) -> None:
    led = ledger(pool)
    now = int(time.time())
    _, sid, jti = await new_family(led, now)
    assert await led.revoke_family(sid, reason="logout", now=now)
    assert (await led.rotate(jti, now=now)).outcome is Outcome.FAMILY_REVOKED


async def test_expired_token(pool: asyncpg.Pool) -> None:
    led = ledger(pool)
    now = int(time.time())
    _, _, jti = await new_family(led, now)
    assert (await led.rotate(jti, now=now + 3600)).outcome is Outcome.EXPIRED


async def test_absolute_family_lifetime(pool: asyncpg.Pool) -> None:
    led = ledger(pool)
    now = int(time.time())
    _, _, jti = await new_family(led, now, family_lifetime=100)
    result = await led.rotate(jti, now=now + 50)
    assert result.successor is not None
    # a successor never outlives its family
    assert result.successor.exp == now + 100
    assert (
        await led.rotate(result.successor.as_claims(), now=now + 100)
    ).outcome is Outcome.EXPIRED


async def test_unknown_jti(pool: asyncpg.Pool) -> None:
    stranger = RefreshClaims(
        sub=str(uuid.uuid4()),
        sid=str(uuid.uuid4()),
        jti="no-such-jti",
        iat=0,
        exp=1,
        gen=1,
        sec="x",
    )
    assert (await ledger(pool).rotate(stranger, now=int(time.time()))).outcome is Outcome.UNKNOWN


async def test_concurrent_rotations_converge_on_one_successor(pool: asyncpg.Pool) -> None:
    led = ledger(pool)
    now = int(time.time())
    _, _, jti = await new_family(led, now)
    results = await asyncio.gather(*(led.rotate(jti, now=now) for _ in range(50)))
    outcomes = sorted(r.outcome for r in results)
    assert outcomes.count(Outcome.ROTATED) == 1
    assert set(outcomes) == {Outcome.ROTATED, Outcome.RETRY}
    assert len({r.successor for r in results}) == 1
    # exactly one rotation happened: the family moved one generation
    assert (
        await pool.fetchval("SELECT generation FROM refresh_session WHERE family_id = $1", jti.sid)
        == 2
    )


async def test_sessions_list_and_revoke(pool: asyncpg.Pool) -> None:
    led = ledger(pool)
    now = int(time.time())
    user, sid_a, _ = await new_family(led, now)
    sid_b = (
        await led.create_family(user_id=user, roles=["user"], user_agent=None, ip=None, now=now)
    ).sid
    listed = await led.list_sessions(user, now=now)
    assert {s.id for s in listed} == {sid_a, sid_b}
    assert next(s for s in listed if s.id == sid_a).user_agent == "pytest"
    # someone else's session cannot be revoked through the user path
    assert not await led.revoke_user_family(str(uuid.uuid4()), sid_a, reason="x", now=now)
    assert await led.revoke_user_family(user, sid_a, reason="x", now=now)
    assert {s.id for s in await led.list_sessions(user, now=now)} == {sid_b}
    assert await led.revoke_all_for_user(user, reason="all", now=now) == [sid_b]
    assert await led.list_sessions(user, now=now) == []


async def test_no_token_material_is_stored(pool: asyncpg.Pool) -> None:
    """The row holds one-way digests: neither a token nor its secret part appears in it.

    (Before issue 14 this test only checked column names; the family row now has digest columns
    by design, so it checks what they hold instead.)
    """
    led = ledger(pool)
    now = int(time.time())
    _, sid, first = await new_family(led, now)
    rotated = await led.rotate(first, now=now)
    assert rotated.successor is not None
    row = await pool.fetchrow("SELECT * FROM refresh_session WHERE family_id = $1", sid)
    assert row is not None
    stored = repr(dict(row))
    for secret in (first.sec, rotated.successor.sec):
        assert secret is not None
        assert secret not in stored
        assert secret.encode() not in b"".join(v for v in row.values() if isinstance(v, bytes))
    assert len(row["current_digest"]) == len(row["previous_digest"]) == 32
    names = set(row.keys())
    assert not any("token" in n or "secret" in n for n in names)
