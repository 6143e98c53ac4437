"""Issue 14: one row per family. Reuse of any earlier token, forgeries, retries, convergence,
old-format tokens, and a storage that stays one row per family however often it rotates."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid

import asyncpg
import pytest

from gateway.auth.tokens import RefreshClaims
from gateway.sessions.ledger import IssuedRefresh, Ledger, Outcome, new_secret
from tests.gateway.conftest import FakeBackend, Harness, login, refresh_cookie, refresh_with


def ledger(pool: asyncpg.Pool, grace: int = 10) -> Ledger:
    return Ledger(pool, refresh_ttl=3600, family_lifetime=86400, grace_seconds=grace)


async def chain(led: Ledger, now: int, length: int) -> list[IssuedRefresh]:
    """A family and ``length`` successive rotations: tokens of generations 1 .. length + 1."""
    first = await led.create_family(
        user_id=str(uuid.uuid4()), roles=["user"], user_agent=None, ip=None, now=now
    )
    tokens = [first]
    for _ in range(length):
        result = await led.rotate(tokens[-1].as_claims(), now=now)
        assert result.outcome is Outcome.ROTATED and result.successor is not None
        tokens.append(result.successor)
    assert [t.gen for t in tokens] == list(range(1, length + 2))
    return tokens


async def assert_family_dead(led: Ledger, tokens: list[IssuedRefresh], now: int) -> None:
    for token in tokens:
        assert (await led.rotate(token.as_claims(), now=now)).outcome is Outcome.FAMILY_REVOKED
    sid = tokens[0].sid
    assert sid in {s for s, _ in await led.revoked_since(now - 60)}


@pytest.mark.parametrize("back", [2, 10], ids=["grandparent", "ten-generations-back"])
async def test_reuse_of_any_earlier_token_revokes_the_family(pool: asyncpg.Pool, back: int) -> None:
    led = ledger(pool)
    now = int(time.time())
    tokens = await chain(led, now, 12)
    reused = await led.rotate(tokens[-1 - back].as_claims(), now=now)
    assert reused.outcome is Outcome.REUSED_REVOKED
    assert reused.sid == tokens[0].sid
    # the newest token (the thief's or the victim's, whoever holds it) is dead too
    await assert_family_dead(led, [tokens[-1]], now + 1)


async def test_reuse_of_the_parent_after_grace_revokes(pool: asyncpg.Pool) -> None:
    led = ledger(pool, grace=10)
    now = int(time.time())
    tokens = await chain(led, now, 3)
    assert (await led.rotate(tokens[-2].as_claims(), now=now + 11)).outcome is (
        Outcome.REUSED_REVOKED
    )
    await assert_family_dead(led, [tokens[-1]], now + 12)


async def test_forged_higher_generation_is_refused_and_harms_nothing(pool: asyncpg.Pool) -> None:
    led = ledger(pool)
    now = int(time.time())
    tokens = await chain(led, now, 2)
    current = tokens[-1]
    assert current.gen is not None
    for forged in (
        dataclasses.replace(current.as_claims(), gen=current.gen + 1, sec=new_secret()),
        dataclasses.replace(current.as_claims(), gen=current.gen + 1000, sec=current.sec),
    ):
        assert (await led.rotate(forged, now=now)).outcome is Outcome.FORGED
    # the family is untouched: its real holder rotates as usual
    assert (await led.rotate(current.as_claims(), now=now)).outcome is Outcome.ROTATED


async def test_a_guessed_secret_part_never_rotates(pool: asyncpg.Pool) -> None:
    """Someone who can sign (a leaked JWT_REFRESH_SECRET) and knows sid, sub and the generation
    still needs the secret part only the ledger's digest matches: a guess is treated as reuse."""
    led = ledger(pool)
    now = int(time.time())
    tokens = await chain(led, now, 3)
    guess = dataclasses.replace(tokens[-1].as_claims(), sec=new_secret(), jti="guessed")
    assert (await led.rotate(guess, now=now)).outcome is Outcome.REUSED_REVOKED
    await assert_family_dead(led, tokens[-1:], now)


async def test_claims_that_contradict_the_family_are_forgeries(pool: asyncpg.Pool) -> None:
    led = ledger(pool)
    now = int(time.time())
    tokens = await chain(led, now, 1)
    other_user = dataclasses.replace(tokens[-1].as_claims(), sub=str(uuid.uuid4()))
    assert (await led.rotate(other_user, now=now)).outcome is Outcome.FORGED
    assert (await led.rotate(tokens[-1].as_claims(), now=now)).outcome is Outcome.ROTATED


async def test_retry_within_grace_gets_the_same_successor_at_any_generation(
    pool: asyncpg.Pool,
) -> None:
    led = ledger(pool, grace=10)
    now = int(time.time())
    tokens = await chain(led, now, 5)
    again = await led.rotate(tokens[-2].as_claims(), now=now + 10)
    assert again.outcome is Outcome.RETRY
    assert again.successor == tokens[-1]
    # and the successor handed out twice is still the one live token
    assert (await led.rotate(tokens[-1].as_claims(), now=now + 10)).outcome is Outcome.ROTATED


async def test_fifty_concurrent_rotations_converge_on_one_successor(pool: asyncpg.Pool) -> None:
    led = ledger(pool)
    now = int(time.time())
    tokens = await chain(led, now, 3)
    results = await asyncio.gather(
        *(led.rotate(tokens[-1].as_claims(), now=now) for _ in range(50))
    )
    outcomes = [r.outcome for r in results]
    assert outcomes.count(Outcome.ROTATED) == 1
    assert set(outcomes) == {Outcome.ROTATED, Outcome.RETRY}
    assert len({r.successor for r in results}) == 1
    row = await pool.fetchrow(
        "SELECT generation FROM refresh_session WHERE family_id = $1", tokens[0].sid
    )
    assert row is not None and row["generation"] == 5


async def test_storage_is_one_row_per_family_however_often_it_rotates(pool: asyncpg.Pool) -> None:
    led = ledger(pool)
    now = int(time.time())
    tokens = await chain(led, now, 40)
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM refresh_session WHERE family_id = $1", tokens[0].sid
        )
        == 1
    )
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM refresh_token_family WHERE family_id = $1", tokens[0].sid
        )
        == 0
    )


async def test_unknown_family_and_malformed_ids(pool: asyncpg.Pool) -> None:
    led = ledger(pool)
    now = int(time.time())
    for sid, sub in ((str(uuid.uuid4()), str(uuid.uuid4())), ("not-a-uuid", "nor-this")):
        claims = RefreshClaims(sub=sub, sid=sid, jti="j", iat=now, exp=now + 60, gen=1, sec="s")
        assert (await led.rotate(claims, now=now)).outcome is Outcome.UNKNOWN
        legacy = dataclasses.replace(claims, gen=None, sec=None)
        assert (await led.rotate(legacy, now=now)).outcome is Outcome.UNKNOWN
    assert not await led.revoke_user_family("nor-this", "not-a-uuid", reason="logout", now=now)


async def test_a_token_minted_with_the_signing_secret_is_refused_over_http(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    """The attack of a leaked JWT_REFRESH_SECRET, through the route: sign tokens for a victim's
    family (sid, sub and generation are known to the attacker) with made-up secret parts."""
    async with gateway(env) as client:
        tokens = client.app.state.tokens
        victim = refresh_cookie(await login(client, backend.add_user()))
        assert victim is not None
        claims = tokens.verify_refresh(victim)
        assert claims.gen == 1

        def mint(gen: int) -> str:
            return str(
                tokens.encode_refresh(
                    dataclasses.replace(claims, jti="minted", gen=gen, sec=new_secret())
                )
            )

        ahead = await refresh_with(client, mint(2))
        assert ahead.status_code == 401
        assert ahead.json()["error"]["code"] == "invalid_token"
        # a forgery ahead of the family harms nothing: the victim refreshes as usual
        moved = await refresh_with(client, victim)
        assert moved.status_code == 200
        current = refresh_cookie(moved)
        assert current is not None
        # a made-up secret at the current generation: never a rotation (and the family is
        # treated as compromised, as for any token that matches neither digest)
        assert (await refresh_with(client, mint(2))).status_code == 401
        assert (await refresh_with(client, current)).status_code == 401
        assert claims.sid in client.app.state.revoked
