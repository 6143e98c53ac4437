"""The refresh-family ledger in PostgreSQL: one row per family, not one per refresh token.

One login creates a family, a row of ``refresh_session`` whose id is the tokens' ``sid``. The row
holds what the family's tokens are checked against (``db/004_refresh_family_rows.sql``):

- ``generation``: how many times the family has rotated; every refresh token carries its own
  generation in ``gen``;
- ``current_digest``: SHA-256 of the random secret part (``sec``) of the family's newest token,
  and ``previous_digest`` that of the token it replaced (answered again within the grace window);
- ``rotation_nonce``: random bytes drawn at the last rotation. The successor's secret part is
  ``HMAC-SHA256(key=the presented secret part, msg=nonce)``, so a retried rotation can rebuild the
  very same successor from the token it presents, while the row alone (a database dump) cannot;
- ``current_jti``, ``current_issued_at``, ``current_expires_at``: the rest of the newest token's
  claims, so that rebuilding it re-signs the identical token (HS256 is deterministic).

Storage is O(families), whatever the number of rotations. Families that ended (revoked, or past
their absolute lifetime) are deleted after ``REFRESH_LEDGER_RETENTION`` by :meth:`Ledger.prune`.

A presented token whose signature verifies is judged against its family's row (RFC 9700
§4.14.2): generation and secret part current -> rotate; previous and inside the grace window ->
the same successor again; a generation above the current one -> a forgery, refused (only someone
holding the signing secret can make one, and they still do not know a secret part); anything
else is an earlier token of the family presented again -> the whole family is revoked, whether
it is the parent of the current token or ten generations back.

Tokens of the old format (no ``gen``/``sec``, one row each in ``refresh_token_family``) keep
working: their ``jti`` is their secret part and they are generation 0. The family moves to the new
form at its next rotation; no new row is written to the old table.

Lock order, everywhere: the family row first (several families in ascending ``family_id``
order), then any old-format token row of that family. Rotation once locked the token and then the
family while logout did the reverse, and the two deadlocked (issue 10, finding 6). A deadlock or
serialization failure that still happens (an older gateway during a rolling upgrade, an operator's
hand-written transaction) is retried inside the ledger: the caller never sees it.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import hashlib
import hmac
import logging
import random
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import asyncpg
from servicekit.db import Database
from servicekit.logs import log_event

from gateway.auth.tokens import RefreshClaims, new_jti
from gateway.errors import ServiceUnavailable

logger = logging.getLogger("gateway.ledger")

T = TypeVar("T")

#: Attempts of one ledger transaction before giving up with a 503 (each retry waits a little
#: longer, with jitter, so two transactions that collided do not collide again in step).
MAX_ATTEMPTS = 5
_RETRYABLE = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)

#: Rows one prune transaction deletes: small enough that a rotation which needs one of them
#: (it cannot: pruned families are over) or the vacuum behind it never waits long.
PRUNE_BATCH = 1000

#: ``pg_try_advisory_xact_lock`` key: one pruner at a time across every gateway and the CLI
#: (the bytes of "tgprune" as a bigint; any constant no other code uses would do).
PRUNE_LOCK_KEY = int.from_bytes(b"tgprune", "big")

_DIGEST_PREFIX = b"tokengate-refresh-secret\x00"


class LedgerBusy(ServiceUnavailable):
    """The ledger kept hitting deadlocks or serialization failures; the client may retry."""


class Outcome(enum.StrEnum):
    ROTATED = "rotated"
    RETRY = "retry"
    REUSED_REVOKED = "reused-revoked"
    FAMILY_REVOKED = "family-revoked"
    #: the family was created before the user's session epoch (account disabled, password
    #: changed, sessions ended): revoked now, for good
    SESSIONS_ENDED = "sessions-ended"
    EXPIRED = "expired"
    #: signed, but never issued by the ledger: a generation above the family's, or claims that
    #: contradict the family (another user, a new-format token of an old-format family)
    FORGED = "forged"
    UNKNOWN = "unknown"
    # DPoP: the family is bound to another key (or to none); nothing was changed (RFC 9449 §5)
    KEY_MISMATCH = "key-mismatch"


@dataclass(frozen=True)
class IssuedRefresh:
    """What is needed to sign a refresh token: the token itself is never stored.

    ``gen`` and ``sec`` are ``None`` only for an old-format token re-issued to an old-format
    family within its grace window.
    """

    sub: str
    sid: str
    jti: str
    iat: int
    exp: int
    gen: int | None = None
    sec: str | None = field(default=None, repr=False)

    def as_claims(self) -> RefreshClaims:
        """The refresh token's claims: what :meth:`gateway.auth.tokens.TokenService.encode_refresh`
        signs, and what :meth:`Ledger.rotate` takes when the client presents it back."""
        return RefreshClaims(
            sub=self.sub,
            sid=self.sid,
            jti=self.jti,
            iat=self.iat,
            exp=self.exp,
            gen=self.gen,
            sec=self.sec,
        )


@dataclass(frozen=True)
class RotateResult:
    outcome: Outcome
    sid: str | None = None
    user_id: str | None = None
    roles: tuple[str, ...] = ()
    successor: IssuedRefresh | None = None
    jkt: str | None = None


@dataclass(frozen=True)
class SessionInfo:
    id: str
    created_at: datetime
    last_used_at: datetime
    expires_at: datetime
    user_agent: str | None
    ip: str | None
    jkt: str | None = None


@dataclass(frozen=True)
class Family:
    sid: str
    user_id: str
    jkt: str | None


@dataclass(frozen=True)
class PruneReport:
    deleted: int
    batches: int
    #: another gateway (or operator) held the prune lock, so this pass stopped early
    contended: bool
    seconds: float


def _ts(epoch: int) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _epoch(value: datetime) -> int:
    return int(value.timestamp())


def new_secret() -> str:
    """A family's first secret part: 256 random bits, base64url."""
    return secrets.token_urlsafe(32)


def secret_digest(secret: str) -> bytes:
    """What the ledger stores of a secret part: a one-way, domain-separated SHA-256.

    The secret is 256 (or, for old-format tokens, 128) random bits, so a fast hash is enough:
    there is nothing to brute-force.
    """
    return hashlib.sha256(_DIGEST_PREFIX + secret.encode("utf-8")).digest()


def successor_secret(secret: str, nonce: bytes) -> str:
    """The next secret part, derived from the presented one and the rotation's random nonce."""
    mac = hmac.new(secret.encode("utf-8"), nonce, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


_INSERT_FAMILY = """
INSERT INTO refresh_session (
    family_id, user_id, roles, created_at, last_used_at, absolute_expires_at, user_agent, ip,
    generation, current_jti, current_issued_at, current_expires_at, current_digest, dpop_jkt
) VALUES ($1, $2, $3, $4, $4, $5, $6, $7, 1, $8, $4, $9, $10, $11)
"""

# The common case in one statement and one round trip. The WHERE clause is the whole check of a
# current token; a concurrent rotation of the same family makes PostgreSQL re-evaluate it on the
# row it committed (READ COMMITTED), where the generation no longer matches: no row, and the
# caller takes the locked path, which answers it as a retry.
_ROTATE_CURRENT = """
UPDATE refresh_session SET
    generation = generation + 1,
    previous_digest = current_digest,
    current_digest = $4,
    rotation_nonce = $5,
    rotated_at = $6,
    last_used_at = $6,
    current_jti = $7,
    current_issued_at = $6,
    current_expires_at = LEAST($8, absolute_expires_at)
WHERE family_id = $1 AND user_id = $2 AND generation = $3 AND current_digest = $9
  AND revoked_at IS NULL AND absolute_expires_at > $6 AND current_expires_at > $6
  AND dpop_jkt IS NOT DISTINCT FROM $10 AND created_at >= $11
RETURNING roles, current_expires_at, dpop_jkt
"""

_LOCK_FAMILY = """
SELECT user_id, roles, generation, current_jti, current_issued_at, current_expires_at,
       current_digest, previous_digest, rotated_at, rotation_nonce, revoked_at,
       absolute_expires_at, dpop_jkt, created_at
FROM refresh_session WHERE family_id = $1
FOR UPDATE
"""

# Old-format token rows, always locked after their family row.
_LOCK_LEGACY_TOKEN = """
SELECT used_at, child_jti, expires_at, revoked_at FROM refresh_token_family
WHERE jti = $1 AND family_id = $2
FOR UPDATE
"""

_LEGACY_CHILD = """
SELECT jti, issued_at, expires_at, revoked_at FROM refresh_token_family WHERE jti = $1
"""

# Moving an old-format family to the new form: the presented token is marked used (so an old
# gateway still running during the upgrade treats a replay of it as reuse too), the family row
# becomes generation 1 with that token as its previous one.
_MIGRATE_LEGACY = """
WITH used AS (
    UPDATE refresh_token_family SET used_at = $2 WHERE jti = $10 AND family_id = $1
)
UPDATE refresh_session SET
    generation = 1,
    previous_digest = $3,
    current_digest = $4,
    rotation_nonce = $5,
    rotated_at = $2,
    last_used_at = $2,
    current_jti = $6,
    current_issued_at = $2,
    current_expires_at = $7
WHERE family_id = $1 AND user_id = $8 AND generation IS NULL AND revoked_at IS NULL
  AND absolute_expires_at > $2 AND $9::timestamptz > $2
RETURNING roles
"""

# Several families in one deterministic order, so two multi-family revocations (logout-all, an
# operator's revoke) cannot lock the same rows in opposite orders either.
_LOCK_FAMILIES = """
SELECT family_id FROM refresh_session WHERE family_id = ANY($1::uuid[])
ORDER BY family_id FOR UPDATE
"""

# Old-format token rows need no update: every reader checks the family's revoked_at.
_REVOKE_FAMILIES = """
UPDATE refresh_session SET revoked_at = $2, revoked_reason = $3
WHERE family_id = ANY($1::uuid[]) AND revoked_at IS NULL
RETURNING family_id, user_id, generation
"""

# One batch of ended families. SKIP LOCKED: a family some transaction holds is simply left for
# the next pass, so pruning never waits for a rotation and a rotation never waits for a batch
# longer than the batch takes.
_PRUNE_BATCH = """
WITH ended AS (
    SELECT family_id FROM refresh_session
    WHERE revoked_at < $1 OR absolute_expires_at < $1
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
DELETE FROM refresh_session s USING ended WHERE s.family_id = ended.family_id
"""


class Ledger:
    """The refresh-family ledger: every rotation and revocation is one PostgreSQL transaction.

    Invariants it keeps:

    - a family has at most one live token: the one whose generation and secret digest the row
      holds (its predecessor answers only as a retry, inside the grace window, with the same
      successor);
    - a token never stored in any form: the row holds one-way digests of secret parts, and the
      successor's secret part cannot be rebuilt without the token that preceded it;
    - every writer locks the family row before anything else of that family, and several families
      in ``family_id`` order: no deadlock between rotation, logout, logout-all and operators;
    - storage follows live families: ended families are deleted after the retention period.
    """

    def __init__(
        self,
        pool: asyncpg.Pool | Database,
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
        jkt: str | None = None,
    ) -> IssuedRefresh:
        """Start a family (a login) and return its first token, generation 1.

        ``jkt``: the RFC 7638 thumbprint of the DPoP key the family is bound to, if any.
        """
        sid = str(uuid.uuid4())
        absolute = now + (self.family_lifetime if family_lifetime is None else family_lifetime)
        token = IssuedRefresh(
            sub=user_id,
            sid=sid,
            jti=new_jti(),
            iat=now,
            exp=min(now + self.refresh_ttl, absolute),
            gen=1,
            sec=new_secret(),
        )
        if token.sec is None:  # _successor always sets it; checked for the types
            raise RuntimeError("new refresh token without its secret part")
        await self._pool.execute(
            _INSERT_FAMILY,
            sid,
            user_id,
            list(roles),
            _ts(now),
            _ts(absolute),
            (user_agent or "")[:512] or None,
            ip,
            token.jti,
            _ts(token.exp),
            secret_digest(token.sec),
            jkt,
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
                await asyncio.sleep(random.uniform(0, 0.01 * 2**tries))  # noqa: S311
        raise AssertionError("unreachable")

    async def rotate(
        self,
        presented: RefreshClaims,
        *,
        now: int,
        jkt: str | None = None,
        sessions_valid_from: int = 0,
    ) -> RotateResult:
        """Exchange a verified refresh token for its successor, atomically.

        Invariant: of all the rotations of one token that run at once, exactly one records a
        successor; the others (within the grace window) return that same successor, and any
        token of the family that is neither current nor that just-replaced one revokes the
        family. ``presented`` must have passed :meth:`TokenService.verify_refresh`.

        ``jkt``: the thumbprint of the key that signed the request's DPoP proof (``None``
        without one); it must be the family's binding, or nothing happens (``KEY_MISMATCH``).

        ``sessions_valid_from``: the user's session epoch as the backend gave it for this
        refresh (issue 9). A family created before it never rotates again: the fast path's
        ``WHERE`` refuses it and the locked path revokes it (``SESSIONS_ENDED``) in the same
        transaction, so no rotation of it can commit after the account changed.
        """
        if presented.gen is not None and presented.sec is not None:
            fast = await self._rotate_current(presented, now, jkt, sessions_valid_from)
            if fast is not None:
                return fast

        async def attempt(conn: asyncpg.Connection) -> RotateResult:
            return await self._rotate_locked(conn, presented, now, jkt, sessions_valid_from)

        result = await self._retrying(attempt)
        if result.outcome in (Outcome.REUSED_REVOKED, Outcome.FORGED):
            log_event(
                logger,
                "refresh_token_rejected",
                logging.WARNING,
                outcome=str(result.outcome),
                sid=presented.sid,
                sub=presented.sub,
                presented_gen=presented.gen if presented.gen is not None else 0,
            )
        return result

    async def _rotate_current(
        self, presented: RefreshClaims, now: int, jkt: str | None, sessions_valid_from: int
    ) -> RotateResult | None:
        if presented.gen is None or presented.sec is None:  # callers route old formats away
            raise RuntimeError("current-format rotation of a token without gen/sec")
        try:
            uuid.UUID(presented.sid)
            uuid.UUID(presented.sub)
        except ValueError:
            return RotateResult(Outcome.UNKNOWN)
        nonce = secrets.token_bytes(16)
        successor_sec = successor_secret(presented.sec, nonce)
        jti = new_jti()
        row = await self._pool.fetchrow(
            _ROTATE_CURRENT,
            presented.sid,
            presented.sub,
            presented.gen,
            secret_digest(successor_sec),
            nonce,
            _ts(now),
            jti,
            _ts(now + self.refresh_ttl),
            secret_digest(presented.sec),
            jkt,
            _ts(sessions_valid_from),
        )
        if row is None:
            return None
        successor = IssuedRefresh(
            sub=presented.sub,
            sid=presented.sid,
            jti=jti,
            iat=now,
            exp=_epoch(row["current_expires_at"]),
            gen=presented.gen + 1,
            sec=successor_sec,
        )
        return RotateResult(
            Outcome.ROTATED,
            sid=presented.sid,
            user_id=presented.sub,
            roles=tuple(row["roles"]),
            successor=successor,
            jkt=row["dpop_jkt"],
        )

    async def _rotate_locked(
        self,
        conn: asyncpg.Connection,
        presented: RefreshClaims,
        now: int,
        jkt: str | None,
        sessions_valid_from: int,
    ) -> RotateResult:
        try:
            uuid.UUID(presented.sid)
        except ValueError:
            return RotateResult(Outcome.UNKNOWN)
        row = await conn.fetchrow(_LOCK_FAMILY, presented.sid)
        if row is None:
            return RotateResult(Outcome.UNKNOWN)
        sid, user_id = presented.sid, str(row["user_id"])
        bound = row["dpop_jkt"]
        base: dict[str, Any] = {
            "sid": sid,
            "user_id": user_id,
            "roles": tuple(row["roles"]),
            "jkt": bound,
        }
        if user_id != presented.sub:
            return RotateResult(Outcome.FORGED, **base)
        legacy_family = row["generation"] is None
        if legacy_family and presented.gen is not None:
            return RotateResult(Outcome.FORGED, **base)
        if row["revoked_at"] is not None:
            return RotateResult(Outcome.FAMILY_REVOKED, **base)
        # DPoP, before any reuse check: a thief holding the token but not the key changes
        # nothing, neither a rotation nor a revocation that would log the victim out.
        if bound != jkt:
            return RotateResult(Outcome.KEY_MISMATCH, **base)
        if _epoch(row["created_at"]) < sessions_valid_from:
            await self._revoke_locked(conn, [sid], reason="sessions-ended", now=now)
            return RotateResult(Outcome.SESSIONS_ENDED, **base)
        if legacy_family:
            return await self._rotate_legacy(conn, presented, now, row, base)

        generation: int = row["generation"]
        # an old-format token is generation 0 and its jti is its secret part
        gen = 0 if presented.gen is None else presented.gen
        secret = presented.jti if presented.sec is None else presented.sec
        digest = secret_digest(secret)
        if gen > generation:
            # A generation the ledger never recorded: minted with the signing secret, or (far
            # likelier) a rotation the old primary committed and lost in a failover (issue 29).
            # Either way a plain 401 that changes nothing: revoking here would log an honest
            # user out everywhere for a database's loss.
            return RotateResult(Outcome.FORGED, **base)
        if gen == generation and hmac.compare_digest(digest, row["current_digest"]):
            absolute = _epoch(row["absolute_expires_at"])
            if _epoch(row["current_expires_at"]) <= now or absolute <= now:
                return RotateResult(Outcome.EXPIRED, **base)
            return await self._advance(conn, base, secret, gen, now, absolute)
        if (
            gen == generation - 1
            and row["previous_digest"] is not None
            and hmac.compare_digest(digest, row["previous_digest"])
            and self.grace_seconds > 0
            and now - _epoch(row["rotated_at"]) <= self.grace_seconds
        ):
            current = successor_secret(secret, row["rotation_nonce"])
            # fails closed: a successor that does not hash to the row's is never handed out
            if hmac.compare_digest(secret_digest(current), row["current_digest"]):
                successor = IssuedRefresh(
                    sub=user_id,
                    sid=sid,
                    jti=row["current_jti"],
                    iat=_epoch(row["current_issued_at"]),
                    exp=_epoch(row["current_expires_at"]),
                    gen=generation,
                    sec=current,
                )
                return RotateResult(Outcome.RETRY, successor=successor, **base)
        await self._revoke_locked(conn, [sid], reason="reuse", now=now)
        return RotateResult(Outcome.REUSED_REVOKED, **base)

    def _successor(
        self, base: dict[str, Any], secret: str, gen: int, now: int, absolute: int
    ) -> tuple[bytes, IssuedRefresh]:
        """A fresh rotation nonce and the successor of the token whose secret part is given."""
        nonce = secrets.token_bytes(16)
        successor = IssuedRefresh(
            sub=base["user_id"],
            sid=base["sid"],
            jti=new_jti(),
            iat=now,
            exp=min(now + self.refresh_ttl, absolute),
            gen=gen,
            sec=successor_secret(secret, nonce),
        )
        return nonce, successor

    async def _advance(
        self,
        conn: asyncpg.Connection,
        base: dict[str, Any],
        secret: str,
        gen: int,
        now: int,
        absolute: int,
    ) -> RotateResult:
        """Rotate a current token on the locked path (the fast path lost a race it can win)."""
        nonce, successor = self._successor(base, secret, gen + 1, now, absolute)
        if successor.sec is None:  # _successor always sets it; checked for the types
            raise RuntimeError("successor without its secret part")
        await conn.execute(
            "UPDATE refresh_session SET generation = $2, previous_digest = current_digest,"
            " current_digest = $3, rotation_nonce = $4, rotated_at = $5, last_used_at = $5,"
            " current_jti = $6, current_issued_at = $5, current_expires_at = $7"
            " WHERE family_id = $1",
            base["sid"],
            successor.gen,
            secret_digest(successor.sec),
            nonce,
            _ts(now),
            successor.jti,
            _ts(successor.exp),
        )
        return RotateResult(Outcome.ROTATED, successor=successor, **base)

    async def _rotate_legacy(
        self,
        conn: asyncpg.Connection,
        presented: RefreshClaims,
        now: int,
        family: asyncpg.Record,
        base: dict[str, Any],
    ) -> RotateResult:
        """An old-format token of an old-format family: the old rules, then the move to rows."""
        token = await conn.fetchrow(_LOCK_LEGACY_TOKEN, presented.jti, presented.sid)
        if token is None:
            return RotateResult(Outcome.UNKNOWN, **base)
        if token["revoked_at"] is not None:
            return RotateResult(Outcome.FAMILY_REVOKED, **base)
        if token["used_at"] is not None:
            used_for = now - _epoch(token["used_at"])
            if self.grace_seconds > 0 and used_for <= self.grace_seconds and token["child_jti"]:
                # rotated by an old gateway a moment ago: hand out the same old-format child
                child = await conn.fetchrow(_LEGACY_CHILD, token["child_jti"])
                if child is not None and child["revoked_at"] is None:
                    successor = IssuedRefresh(
                        sub=base["user_id"],
                        sid=base["sid"],
                        jti=child["jti"],
                        iat=_epoch(child["issued_at"]),
                        exp=_epoch(child["expires_at"]),
                    )
                    return RotateResult(Outcome.RETRY, successor=successor, **base)
            await self._revoke_locked(conn, [base["sid"]], reason="reuse", now=now)
            return RotateResult(Outcome.REUSED_REVOKED, **base)
        absolute = _epoch(family["absolute_expires_at"])
        token_exp = _epoch(token["expires_at"])
        if token_exp <= now or absolute <= now:
            return RotateResult(Outcome.EXPIRED, **base)
        # an old-format token's jti is its secret part
        nonce, successor = self._successor(base, presented.jti, 1, now, absolute)
        if successor.sec is None:  # _successor always sets it; checked for the types
            raise RuntimeError("successor without its secret part")
        migrated = await conn.fetchrow(
            _MIGRATE_LEGACY,
            base["sid"],
            _ts(now),
            secret_digest(presented.jti),
            secret_digest(successor.sec),
            nonce,
            successor.jti,
            _ts(successor.exp),
            base["user_id"],
            _ts(token_exp),
            presented.jti,
        )
        if migrated is None:  # cannot happen under the family lock; fail closed if it does
            return RotateResult(Outcome.UNKNOWN, **base)
        log_event(logger, "refresh_family_migrated", sid=base["sid"])
        return RotateResult(Outcome.ROTATED, successor=successor, **base)

    async def _revoke_locked(
        self, conn: asyncpg.Connection, sids: Sequence[str], *, reason: str, now: int
    ) -> list[str]:
        """Revoke families whose rows this transaction may lock; logs the audit line of each.

        The log line is what stays of a family once it is pruned: who, which family, why, when,
        and how far it had rotated.
        """
        await conn.fetch(_LOCK_FAMILIES, list(sids))
        rows = await conn.fetch(_REVOKE_FAMILIES, list(sids), _ts(now), reason)
        for r in rows:
            log_event(
                logger,
                "refresh_family_revoked",
                sid=str(r["family_id"]),
                sub=str(r["user_id"]),
                reason=reason,
                revoked_at=now,
                generation=r["generation"],
            )
        return [str(r["family_id"]) for r in rows]

    async def family_of(self, presented: RefreshClaims) -> Family | None:
        """The family a verified refresh token names, with its DPoP binding; ``None`` when there
        is none or it is not the token's subject's (old or new format alike: the signature
        vouches for ``sid``)."""
        try:
            uuid.UUID(presented.sid)
        except ValueError:
            return None
        row = await self._pool.fetchrow(
            "SELECT user_id, dpop_jkt FROM refresh_session WHERE family_id = $1", presented.sid
        )
        if row is None or str(row["user_id"]) != presented.sub:
            return None
        return Family(sid=presented.sid, user_id=presented.sub, jkt=row["dpop_jkt"])

    async def revoke_families(self, sids: Sequence[str], *, reason: str, now: int) -> list[str]:
        """Revoke families; returns the ids that were live until now."""

        async def attempt(conn: asyncpg.Connection) -> list[str]:
            return await self._revoke_locked(conn, sids, reason=reason, now=now)

        return await self._retrying(attempt)

    async def family_exists(self, sid: str) -> bool:
        """Whether the ledger has a row for ``sid``, live or ended (and not yet pruned)."""
        return bool(
            await self._pool.fetchval("SELECT 1 FROM refresh_session WHERE family_id = $1", sid)
        )

    async def revoke_family(self, sid: str, *, reason: str, now: int) -> bool:
        return bool(await self.revoke_families([sid], reason=reason, now=now))

    async def revoke_user_family(self, user_id: str, sid: str, *, reason: str, now: int) -> bool:
        """Revoke one family only if it belongs to ``user_id`` (a user revoking their own).

        Returns whether the family exists and is the user's (revoked now or before).
        """
        try:
            uuid.UUID(sid)
        except ValueError:
            return False
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
        whose access tokens may still be alive, a handful of rows (``refresh_session_revoked_idx``;
        the retention period is never shorter than that lifetime, so pruning cannot hide one).
        """
        rows = await self._pool.fetch(
            "SELECT family_id, revoked_at FROM refresh_session WHERE revoked_at > $1",
            datetime.fromtimestamp(since, UTC),
        )
        return [(str(r["family_id"]), r["revoked_at"].timestamp()) for r in rows]

    async def list_sessions(
        self, user_id: str, *, now: int, sessions_valid_from: int = 0
    ) -> list[SessionInfo]:
        """The user's live families, newest first. ``sessions_valid_from`` is the user's session
        epoch: families created before it are over (an operator ended them, the password or the
        account changed) even while their rows still wait for their next refresh to be revoked,
        so they are not listed (the same comparison :meth:`rotate` makes)."""
        rows = await self._pool.fetch(
            "SELECT family_id, created_at, last_used_at, absolute_expires_at, user_agent, ip,"
            " dpop_jkt FROM refresh_session WHERE user_id = $1 AND revoked_at IS NULL"
            " AND absolute_expires_at > $2 AND created_at >= $3 ORDER BY created_at DESC",
            user_id,
            _ts(now),
            _ts(sessions_valid_from),
        )
        return [
            SessionInfo(
                id=str(r["family_id"]),
                created_at=r["created_at"],
                last_used_at=r["last_used_at"],
                expires_at=r["absolute_expires_at"],
                user_agent=r["user_agent"],
                ip=r["ip"],
                jkt=r["dpop_jkt"],
            )
            for r in rows
        ]

    async def prune(
        self, *, retention: int, now: int, batch_size: int = PRUNE_BATCH
    ) -> PruneReport:
        """Delete families that ended (revoked, or past their absolute lifetime) over
        ``retention`` seconds ago, in batches of ``batch_size``, one transaction each.

        Invariant: a live family is never deleted (it is neither revoked nor past its absolute
        lifetime), and at most one pruner runs at a time: each batch first takes a
        transaction-scoped advisory lock, and a pruner that finds it taken stops, leaving the
        work to the one that holds it. Old-format token rows of a deleted family go with it
        (``ON DELETE CASCADE``).
        """
        cutoff = _ts(now - retention)
        started = time.perf_counter()
        deleted = batches = 0
        contended = False
        while True:
            async with self._pool.acquire() as conn, conn.transaction():
                if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", PRUNE_LOCK_KEY):
                    contended = True
                    break
                status = await conn.execute(_PRUNE_BATCH, cutoff, batch_size)
            count = int(status.rsplit(" ", 1)[-1])
            deleted += count
            batches += 1
            if count < batch_size:
                break
        report = PruneReport(
            deleted=deleted,
            batches=batches,
            contended=contended,
            seconds=time.perf_counter() - started,
        )
        log_event(
            logger,
            "ledger_pruned",
            deleted=deleted,
            batches=batches,
            contended=contended,
            retention=retention,
            seconds=round(report.seconds, 3),
        )
        return report
