"""Rolling upgrade to the one-row-per-family ledger (issue 14): old-format tokens, old gateways.

``bench/legacy_ledger.py`` is the ledger as deployed before the change; here it plays the old
gateway that still runs while the new one rolls out, on the same (migrated) database.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import asyncpg

from bench.legacy_ledger import LegacyLedger
from bench.legacy_ledger import Outcome as OldOutcome
from gateway.auth.tokens import RefreshClaims
from gateway.sessions.ledger import IssuedRefresh, Ledger, Outcome
from tests.gateway.conftest import FakeBackend, Harness, login, refresh_cookie, refresh_with


def ledgers(pool: asyncpg.Pool, grace: int = 10) -> tuple[LegacyLedger, Ledger]:
    args = {"refresh_ttl": 3600, "family_lifetime": 86400, "grace_seconds": grace}
    return LegacyLedger(pool, **args), Ledger(pool, **args)


async def old_login(old: LegacyLedger, now: int, user: str | None = None) -> RefreshClaims:
    """A family created by an old gateway: its token has no ``gen``/``sec``."""
    issued = await old.create_family(
        user_id=user or str(uuid.uuid4()), roles=["user"], user_agent="old", ip=None, now=now
    )
    return RefreshClaims(sub=issued.sub, sid=issued.sid, jti=issued.jti, iat=now, exp=issued.exp)


async def test_an_old_format_token_refreshes_once_and_continues_in_the_new_form(
    pool: asyncpg.Pool,
) -> None:
    old, new = ledgers(pool)
    now = int(time.time())
    legacy = await old_login(old, now)
    moved = await new.rotate(legacy, now=now)
    assert moved.outcome is Outcome.ROTATED and moved.successor is not None
    assert moved.successor.gen == 1 and moved.successor.sec is not None
    row = await pool.fetchrow(
        "SELECT generation, previous_digest FROM refresh_session WHERE family_id = $1", legacy.sid
    )
    assert row is not None and row["generation"] == 1 and row["previous_digest"] is not None
    # the new form carries on, and nothing more is written to the old table
    nxt = await new.rotate(moved.successor.as_claims(), now=now)
    assert nxt.outcome is Outcome.ROTATED and nxt.successor is not None and nxt.successor.gen == 2
    assert (
        await pool.fetchval(
            "SELECT count(*) FROM refresh_token_family WHERE family_id = $1", legacy.sid
        )
        == 1
    )
    # the old token is an earlier token of the family now: presented again, it revokes it
    assert (await new.rotate(legacy, now=now + 11)).outcome is Outcome.REUSED_REVOKED
    assert (await new.rotate(nxt.successor.as_claims(), now=now + 11)).outcome is (
        Outcome.FAMILY_REVOKED
    )


async def test_old_format_retry_within_grace_gets_the_same_new_successor(
    pool: asyncpg.Pool,
) -> None:
    old, new = ledgers(pool)
    now = int(time.time())
    legacy = await old_login(old, now)
    results = await asyncio.gather(*(new.rotate(legacy, now=now) for _ in range(20)))
    outcomes = [r.outcome for r in results]
    assert outcomes.count(Outcome.ROTATED) == 1
    assert set(outcomes) == {Outcome.ROTATED, Outcome.RETRY}
    assert len({r.successor for r in results}) == 1


async def test_a_family_an_old_gateway_rotated_moves_on_its_next_rotation(
    pool: asyncpg.Pool,
) -> None:
    old, new = ledgers(pool)
    now = int(time.time())
    legacy = await old_login(old, now)
    by_old = await old.rotate(legacy.jti, now=now)
    assert by_old.outcome is OldOutcome.ROTATED and by_old.successor is not None
    # the same parent again, now at a new gateway, inside the grace window: the old child
    retried = await new.rotate(legacy, now=now + 1)
    assert retried.outcome is Outcome.RETRY and retried.successor is not None
    assert retried.successor.jti == by_old.successor.jti and retried.successor.gen is None
    child = RefreshClaims(
        sub=legacy.sub,
        sid=legacy.sid,
        jti=by_old.successor.jti,
        iat=by_old.successor.iat,
        exp=by_old.successor.exp,
    )
    moved = await new.rotate(child, now=now + 1)
    assert moved.outcome is Outcome.ROTATED and moved.successor is not None
    assert moved.successor.gen == 1
    # the grandparent, old format, ten seconds later: reuse
    assert (await new.rotate(legacy, now=now + 12)).outcome is Outcome.REUSED_REVOKED


async def test_what_an_old_gateway_does_during_the_rollout(pool: asyncpg.Pool) -> None:
    """The documented mixed-version behaviour, checked: docs/SECURITY.md, rolling upgrade."""
    old, new = ledgers(pool)
    now = int(time.time())
    user = str(uuid.uuid4())
    fresh: IssuedRefresh = await new.create_family(
        user_id=user, roles=["user"], user_agent="new", ip=None, now=now
    )
    # a new-format token at an old gateway is unknown there: 401, one new login; no damage
    assert (await old.rotate(fresh.jti, now=now)).outcome is OldOutcome.UNKNOWN
    assert (await new.rotate(fresh.as_claims(), now=now)).outcome is Outcome.ROTATED
    # sessions listing and revocation act on the family row, which both versions share
    assert {s.id for s in await old.list_sessions(user, now=now)} == {fresh.sid}
    assert await old.revoke_family(fresh.sid, reason="logout", now=now)
    assert (await new.rotate(fresh.as_claims(), now=now)).outcome is Outcome.FAMILY_REVOKED
    # a family the new gateway moved: the old gateway treats its old token as used (reuse)
    legacy = await old_login(old, now, user)
    assert (await new.rotate(legacy, now=now)).outcome is Outcome.ROTATED
    assert (await old.rotate(legacy.jti, now=now + 11)).outcome is OldOutcome.REUSED_REVOKED
    assert (await new.rotate(legacy, now=now + 11)).outcome is Outcome.FAMILY_REVOKED


async def test_mixed_population_over_http(
    gateway: Harness, env: dict[str, str], backend: FakeBackend
) -> None:
    """Old-format and new-format cookies side by side, refreshed at once through the routes."""
    async with gateway(env) as client:
        tokens = client.app.state.tokens
        old, _ = ledgers(client.app.state.pool)
        now = int(time.time())
        old_cookies = []
        for _ in range(10):
            # a user the backend knows: every refresh asks it for the account's status (issue 9)
            claims = await old_login(old, now, backend.user_id(backend.add_user()))
            old_cookies.append(tokens.encode_refresh(claims))
        new_cookies = [refresh_cookie(await login(client, backend.add_user())) for _ in range(10)]
        cookies = [*old_cookies, *(c for c in new_cookies if c is not None)]
        assert len(cookies) == 20
        client.cookies.clear()
        first = await asyncio.gather(
            *(
                client.post("/api/v1/auth/refresh", headers={"Cookie": f"__Host-tg_refresh={c}"})
                for c in cookies
            )
        )
        assert [r.status_code for r in first] == [200] * 20
        successors = [refresh_cookie(r) for r in first]
        for successor in successors:
            assert successor is not None
            assert tokens.verify_refresh(successor).gen is not None  # all in the new form now
            assert (await refresh_with(client, successor)).status_code == 200
        # an old cookie replayed once its successor has rotated too: reuse, the family dies
        assert (await refresh_with(client, old_cookies[0])).status_code == 401
        sid = tokens.verify_refresh(old_cookies[0]).sid
        assert sid in client.app.state.revoked
