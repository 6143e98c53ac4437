"""The ledger before issue 14 (one row per refresh token ever issued), kept for comparison.

``bench/ledger_bench.py`` measures its size against the current ledger's, and the mixed-version
tests run it as "the old gateway" of a rolling upgrade (``docs/SECURITY.md``). It is the code as it
was deployed just before the redesign, deadlock fix included; nothing in the product imports it.

Its original description follows.

The refresh-family ledger in PostgreSQL (tables in ``db/002_refresh_token_family.sql``).

One login creates a family (``refresh_session``; its id is the tokens' ``sid``) and its first
refresh token row. :meth:`Ledger.rotate` is one transaction that locks the presented token's family
row (``SELECT ... FOR UPDATE``), so concurrent rotations of one token queue on that lock: the first
records a successor, the others find it and, inside the grace window, get that same successor back.
A used token presented after the grace window is a replay (OAuth 2.0 Security BCP, RFC 9700
§4.14.2): the whole family is revoked.

Lock order, everywhere: the family row (``refresh_session``) first, several families in ascending
``family_id`` order, and only then their token rows. Rotation once locked the token and then the
family while logout did the reverse, and the two deadlocked (issue 10, finding 6). A deadlock or
serialization failure that still happens (an older gateway during a rolling upgrade, an operator's
hand-written transaction) is retried inside the ledger: the caller never sees it.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
from servicekit.logs import log_event

from gateway.auth.tokens import new_jti
from gateway.errors import ServiceUnavailable

logger = logging.getLogger("gateway.ledger")

T = TypeVar("T")

#: Attempts of one ledger transaction before giving up with a 503 (each retry waits a little
#: longer, with jitter, so two transactions that collided do not collide again in step).
MAX_ATTEMPTS = 5
_RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)


class LedgerBusy(ServiceUnavailable):
    """The ledger kept hitting deadlocks or serialization failures; the client may retry."""


class Outcome(enum.StrEnum):
    ROTATED = "rotated"
    RETRY = "retry"
    REUSED_REVOKED = "reused-revoked"
    FAMILY_REVOKED = "family-revoked"
    EXPIRED = "expired"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class IssuedRefresh:
    """What is needed to sign a refresh token: the token itself is never stored."""

    sub: str
    sid: str
    jti: str
    iat: int
    exp: int


@dataclass(frozen=True)
class RotateResult:
    outcome: Outcome
    sid: str | None = None
    user_id: str | None = None
    roles: tuple[str, ...] = ()
    successor: IssuedRefresh | None = None


@dataclass(frozen=True)
class SessionInfo:
    id: str
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    user_agent: str | None
    ip: str | None


def _ts(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _epoch(value: datetime) -> int:
    return int(value.timestamp())


_FAMILY_OF = "SELECT family_id FROM refresh_token_family WHERE jti = $1"

# The family row first (the lock every writer of this family takes first), then the token row.
_LOCK_FAMILY = """
SELECT revoked_at, absolute_expires_at, roles FROM refresh_session WHERE family_id = $1
FOR UPDATE
"""

_LOCK_TOKEN = """
SELECT family_id, user_id, used_at, child_jti, expires_at, revoked_at
FROM refresh_token_family WHERE jti = $1
FOR UPDATE
"""

# Several families in one deterministic order, so two multi-family revocations (logout-all, an
# operator's revoke) cannot lock the same rows in opposite orders either.
_LOCK_FAMILIES = """
SELECT family_id FROM refresh_session WHERE family_id = ANY($1::uuid[])
ORDER BY family_id FOR UPDATE
"""

_CHILD = """
SELECT jti, issued_at, expires_at, revoked_at FROM refresh_token_family WHERE jti = $1
"""

_INSERT_TOKEN = """
INSERT INTO refresh_token_family (jti, family_id, user_id, parent_jti, issued_at, expires_at)
VALUES ($1, $2, $3, $4, $5, $6)
"""

# One round trip for the whole write side of a rotation: the child row, the parent marked used
# (pointing at its child for retries), the session's last use.
_ROTATE = """
WITH child AS (
    INSERT INTO refresh_token_family (jti, family_id, user_id, parent_jti, issued_at, expires_at)
    VALUES ($3, $4, $5, $1, $2, $6)
), used AS (
    UPDATE refresh_token_family SET used_at = $2, child_jti = $3 WHERE jti = $1
)
UPDATE refresh_session SET last_used_at = $2 WHERE family_id = $4
"""

_REVOKE_FAMILIES = """
WITH s AS (
    UPDATE refresh_session SET revoked_at = $2, revoked_reason = $3
    WHERE family_id = ANY($1::uuid[]) AND revoked_at IS NULL
    RETURNING family_id
), t AS (
    UPDATE refresh_token_family SET revoked_at = $2, revoked_reason = $3
    WHERE family_id = ANY($1::uuid[]) AND revoked_at IS NULL
)
SELECT family_id FROM s
"""


class LegacyLedger:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        refresh_ttl: int,
        family_lifetime: int,
        grace_seconds: int,
    ) -> None:
        self._pool = pool
        self.refresh_ttl = refresh_ttl
        self.family_lifetime = family_lifetime
        self.grace_seconds = grace_seconds

    async def create_family(
        self,
        *,
        user_id: str,
        roles: Sequence[str],
        user_agent: str | None,
        ip: str | None,
        now: int,
        family_lifetime: int | None = None,
    ) -> IssuedRefresh:
        sid = str(uuid.uuid4())
        absolute = now + (self.family_lifetime if family_lifetime is None else family_lifetime)
        token = IssuedRefresh(
            sub=user_id, sid=sid, jti=new_jti(), iat=now, exp=min(now + self.refresh_ttl, absolute)
        )
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO refresh_session (family_id, user_id, roles, created_at, last_used_at,"
                " absolute_expires_at, user_agent, ip) VALUES ($1, $2, $3, $4, $4, $5, $6, $7)",
                sid,
                user_id,
                list(roles),
                _ts(now),
                _ts(absolute),
                (user_agent or "")[:512] or None,
                ip,
            )
            await conn.execute(
                _INSERT_TOKEN, token.jti, sid, user_id, None, _ts(now), _ts(token.exp)
            )
        return token

    async def _retrying(self, attempt: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        """Run ``attempt`` in a transaction, again on a deadlock or serialization failure.

        PostgreSQL rolls the whole transaction back in both cases, so running it again from the
        start is safe; nothing the attempt returns escapes before its commit.
        """
        for tries in range(1, MAX_ATTEMPTS + 1):
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    return await attempt(conn)
            except _RETRYABLE as exc:
                log_event(
                    logger,
                    "ledger_retry",
                    logging.WARNING,
                    error=type(exc).__name__,
                    attempt=tries,
                )
                if tries == MAX_ATTEMPTS:
                    raise LedgerBusy() from None
                # jitter only, not a secret
                await asyncio.sleep(random.uniform(0, 0.01 * 2**tries))
        raise AssertionError("unreachable")

    async def rotate(self, jti: str, *, now: int) -> RotateResult:
        async def attempt(conn: asyncpg.Connection) -> RotateResult:
            return await self._rotate(conn, jti, now)

        return await self._retrying(attempt)

    async def _rotate(self, conn: asyncpg.Connection, jti: str, now: int) -> RotateResult:
        family_id = await conn.fetchval(_FAMILY_OF, jti)
        if family_id is None:
            return RotateResult(Outcome.UNKNOWN)
        family = await conn.fetchrow(_LOCK_FAMILY, family_id)
        row = await conn.fetchrow(_LOCK_TOKEN, jti)
        if family is None or row is None:
            return RotateResult(Outcome.UNKNOWN)
        sid = str(row["family_id"])
        user_id = str(row["user_id"])
        roles = tuple(family["roles"])
        base: dict[str, Any] = {"sid": sid, "user_id": user_id, "roles": roles}
        if family["revoked_at"] is not None or row["revoked_at"] is not None:
            return RotateResult(Outcome.FAMILY_REVOKED, **base)
        if row["used_at"] is not None:
            used_for = now - _epoch(row["used_at"])
            if self.grace_seconds > 0 and used_for <= self.grace_seconds:
                child = await conn.fetchrow(_CHILD, row["child_jti"])
                if child is not None and child["revoked_at"] is None:
                    successor = IssuedRefresh(
                        sub=user_id,
                        sid=sid,
                        jti=child["jti"],
                        iat=_epoch(child["issued_at"]),
                        exp=_epoch(child["expires_at"]),
                    )
                    return RotateResult(Outcome.RETRY, successor=successor, **base)
            await conn.fetch(_REVOKE_FAMILIES, [sid], _ts(now), "reuse")
            return RotateResult(Outcome.REUSED_REVOKED, **base)
        absolute = _epoch(family["absolute_expires_at"])
        if _epoch(row["expires_at"]) <= now or absolute <= now:
            return RotateResult(Outcome.EXPIRED, **base)
        successor = IssuedRefresh(
            sub=user_id,
            sid=sid,
            jti=new_jti(),
            iat=now,
            exp=min(now + self.refresh_ttl, absolute),
        )
        await conn.execute(_ROTATE, jti, _ts(now), successor.jti, sid, user_id, _ts(successor.exp))
        return RotateResult(Outcome.ROTATED, successor=successor, **base)

    async def family_of(self, jti: str) -> tuple[str, str] | None:
        """``(sid, user_id)`` of the family a refresh ``jti`` belongs to."""
        row = await self._pool.fetchrow(
            "SELECT family_id, user_id FROM refresh_token_family WHERE jti = $1", jti
        )
        return None if row is None else (str(row["family_id"]), str(row["user_id"]))

    async def revoke_families(self, sids: Sequence[str], *, reason: str, now: int) -> list[str]:
        """Revoke families; returns the ids that were live until now."""

        async def attempt(conn: asyncpg.Connection) -> list[str]:
            await conn.fetch(_LOCK_FAMILIES, list(sids))
            rows = await conn.fetch(_REVOKE_FAMILIES, list(sids), _ts(now), reason)
            return [str(r["family_id"]) for r in rows]

        return await self._retrying(attempt)

    async def revoke_family(self, sid: str, *, reason: str, now: int) -> bool:
        return bool(await self.revoke_families([sid], reason=reason, now=now))

    async def revoke_user_family(self, user_id: str, sid: str, *, reason: str, now: int) -> bool:
        """Revoke one family only if it belongs to ``user_id`` (a user revoking their own)."""
        owner = await self._pool.fetchval(
            "SELECT user_id FROM refresh_session WHERE family_id = $1", sid
        )
        if owner is None or str(owner) != user_id:
            return False
        await self.revoke_families([sid], reason=reason, now=now)
        return True

    async def revoke_all_for_user(self, user_id: str, *, reason: str, now: int) -> list[str]:
        sids = await self._pool.fetch(
            "SELECT family_id FROM refresh_session WHERE user_id = $1 AND revoked_at IS NULL",
            user_id,
        )
        if not sids:
            return []
        return await self.revoke_families(
            [str(r["family_id"]) for r in sids], reason=reason, now=now
        )

    async def revoked_since(self, since: float) -> list[tuple[str, float]]:
        """``(sid, revoked_at)`` of every family revoked after ``since`` (epoch seconds).

        The gateways rebuild their revoked set from this when Redis may have lost it (start-up,
        reconnect): called with one access-token lifetime ago, it returns only the families
        whose access tokens may still be alive, a handful of rows.
        """
        rows = await self._pool.fetch(
            "SELECT family_id, revoked_at FROM refresh_session WHERE revoked_at > $1",
            datetime.fromtimestamp(since, UTC),
        )
        return [(str(r["family_id"]), r["revoked_at"].timestamp()) for r in rows]

    async def list_sessions(self, user_id: str, *, now: int) -> list[SessionInfo]:
        rows = await self._pool.fetch(
            "SELECT family_id, created_at, last_used_at, absolute_expires_at, user_agent, ip"
            " FROM refresh_session WHERE user_id = $1 AND revoked_at IS NULL"
            " AND absolute_expires_at > $2 ORDER BY created_at DESC",
            user_id,
            _ts(now),
        )
        return [
            SessionInfo(
                id=str(r["family_id"]),
                created_at=r["created_at"],
                last_used_at=r["last_used_at"],
                expires_at=r["absolute_expires_at"],
                user_agent=r["user_agent"],
                ip=r["ip"],
            )
            for r in rows
        ]
