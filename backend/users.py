"""Users, the credential check and the account lifecycle. Every query is parameterised.

Emails are matched and kept unique on their one normal form (:mod:`servicekit.emails`, column
``email_normal``). Every change that must end sessions moves the user's epochs forward in the
same ``UPDATE`` that makes the change (``db/003_accounts.sql`` says what each epoch ends), so the
account and its sessions can never be left half changed.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from servicekit.audit import append
from servicekit.emails import looks_like_email, normalise_email

from backend import audit
from backend.errors import Conflict, InvalidCredentials, ValidationFailed
from backend.passwords import Passwords

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # argon2 handles any length; this only bounds the work per request
ROLES = frozenset({"user", "admin"})

_SELECT_BY_ID = (
    "SELECT id, email, roles, created_at, disabled_at, session_epoch, token_epoch"
    " FROM users WHERE id = $1"
)
_SELECT_BY_EMAIL = (
    "SELECT id, email, roles, created_at, disabled_at, session_epoch, token_epoch"
    " FROM users WHERE email_normal = $1"
)
# Epochs move to the first whole second after the change: with "valid iff iat >= epoch" a token
# minted before the change (iat <= floor(now)) is dead, and one minted after it is not (the
# gateway waits out the rest of that second before minting). clock_timestamp(), not now(): now()
# is the start of the transaction, which may be earlier. greatest(): epochs never move back.
_DISABLE = """
UPDATE users SET disabled_at = now(),
    session_epoch = greatest(session_epoch, ceil(extract(epoch FROM clock_timestamp()))::bigint),
    token_epoch = greatest(token_epoch, ceil(extract(epoch FROM clock_timestamp()))::bigint)
WHERE email_normal = $1 AND disabled_at IS NULL
RETURNING id, email, roles, created_at, disabled_at, session_epoch, token_epoch
"""
_ENABLE = """
UPDATE users SET disabled_at = NULL
WHERE email_normal = $1 AND disabled_at IS NOT NULL
RETURNING id, email, roles, created_at, disabled_at, session_epoch, token_epoch
"""
_SET_ROLES = """
UPDATE users SET roles = $2,
    token_epoch = greatest(token_epoch, ceil(extract(epoch FROM clock_timestamp()))::bigint)
WHERE email_normal = $1
RETURNING id, email, roles, created_at, disabled_at, session_epoch, token_epoch
"""
# Every hash write that depends on a hash read earlier is conditional on that hash still being
# there (issue 22, item 7): between the read and the write sits a whole argon2 run, and another
# change may commit meanwhile. Under READ COMMITTED a conditional UPDATE that waited for a
# concurrent one re-reads the row once that commits (PostgreSQL's EvalPlanQual), so of two
# changes from the same hash exactly one matches. The operator's set-password reads no hash: it
# replaces whatever is there, by email, in one statement.
_SET_PASSWORD = """
UPDATE users SET password_hash = $2,
    session_epoch = greatest(session_epoch, ceil(extract(epoch FROM clock_timestamp()))::bigint),
    token_epoch = greatest(token_epoch, ceil(extract(epoch FROM clock_timestamp()))::bigint)
WHERE email_normal = $1
RETURNING id, email, roles, created_at, disabled_at, session_epoch, token_epoch
"""
_CHANGE_PASSWORD = """
UPDATE users SET password_hash = $3,
    session_epoch = greatest(session_epoch, ceil(extract(epoch FROM clock_timestamp()))::bigint),
    token_epoch = greatest(token_epoch, ceil(extract(epoch FROM clock_timestamp()))::bigint)
WHERE id = $1 AND password_hash = $2 AND disabled_at IS NULL
RETURNING id, email, roles, created_at, disabled_at, session_epoch, token_epoch
"""
_REHASH = "UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2"
_END_SESSIONS = """
UPDATE users SET
    session_epoch = greatest(session_epoch, ceil(extract(epoch FROM clock_timestamp()))::bigint),
    token_epoch = greatest(token_epoch, ceil(extract(epoch FROM clock_timestamp()))::bigint)
WHERE email_normal = $1
RETURNING id, email, roles, created_at, disabled_at, session_epoch, token_epoch
"""


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    email: str
    roles: tuple[str, ...]
    created_at: datetime
    disabled_at: datetime | None
    session_epoch: int = 0
    token_epoch: int = 0

    def public(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "email": self.email,
            "roles": list(self.roles),
            "created_at": self.created_at.isoformat(),
        }

    def lifecycle(self) -> dict[str, Any]:
        """What the gateway needs before it lets a session go on (``/internal/lifecycle/``)."""
        return {
            "id": str(self.id),
            "email": self.email,
            "status": "disabled" if self.disabled_at is not None else "active",
            "roles": list(self.roles),
            "session_epoch": self.session_epoch,
            "token_epoch": self.token_epoch,
        }


def _user(row: asyncpg.Record) -> User:
    return User(
        id=row["id"],
        email=row["email"],
        roles=tuple(row["roles"]),
        created_at=row["created_at"],
        disabled_at=row["disabled_at"],
        session_epoch=int(row["session_epoch"]),
        token_epoch=int(row["token_epoch"]),
    )


def _normal_email(email: str) -> str:
    normal = normalise_email(email)
    if not looks_like_email(normal):
        raise ValidationFailed("email: not a valid address")
    return normal


def check_roles(roles: tuple[str, ...]) -> None:
    if not roles or not set(roles) <= ROLES:
        raise ValidationFailed(f"roles: must be among {sorted(ROLES)}")


class UserStore:
    def __init__(self, pool: asyncpg.Pool, *, audit_writer: str | None = None) -> None:
        self._pool = pool
        #: the audit chain account changes are written to (``backend/<host>/<worker>``); None:
        #: no event (tests of the store alone)
        self._audit_writer = audit_writer

    async def create(self, email: str, password_hash: str, roles: tuple[str, ...]) -> User:
        email = _normal_email(email)
        check_roles(roles)
        try:
            row = await self._pool.fetchrow(
                "INSERT INTO users (id, email, email_normal, password_hash, roles)"
                " VALUES ($1, $2, $2, $3, $4)"
                " RETURNING id, email, roles, created_at, disabled_at, session_epoch, token_epoch",
                uuid.uuid4(),
                email,
                password_hash,
                list(roles),
            )
        except asyncpg.UniqueViolationError:
            raise Conflict("a user with this email already exists") from None
        return _user(row)

    async def by_id(self, user_id: uuid.UUID) -> User | None:
        row = await self._pool.fetchrow(_SELECT_BY_ID, user_id)
        return _user(row) if row else None

    async def by_email(self, email: str) -> User | None:
        row = await self._pool.fetchrow(_SELECT_BY_EMAIL, normalise_email(email))
        return _user(row) if row else None

    async def credentials(self, email: str) -> tuple[User, str] | None:
        row = await self._pool.fetchrow(
            _SELECT_BY_EMAIL.replace(" FROM", ", password_hash FROM"),
            normalise_email(email),
        )
        return (_user(row), row["password_hash"]) if row else None

    async def hash_of(self, user_id: uuid.UUID) -> tuple[User, str] | None:
        row = await self._pool.fetchrow(
            _SELECT_BY_ID.replace(" FROM", ", password_hash FROM"), user_id
        )
        return (_user(row), row["password_hash"]) if row else None

    async def page(self, *, limit: int, offset: int) -> tuple[list[User], int]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, email, roles, created_at, disabled_at, session_epoch, token_epoch"
                " FROM users ORDER BY created_at, id LIMIT $1 OFFSET $2",
                limit,
                offset,
            )
            total = await conn.fetchval("SELECT count(*) FROM users")
        return [_user(r) for r in rows], int(total)

    async def rehash(self, user_id: uuid.UUID, *, read: str, new_hash: str) -> bool:
        """Replace ``read`` (an old-parameter hash of the same password) by ``new_hash``; no
        session ends. False when the hash is no longer ``read``: someone set another password
        since, and a rehash of the old one must not bring it back."""
        status = await self._pool.execute(_REHASH, user_id, read, new_hash)
        return bool(status == "UPDATE 1")

    async def _update(
        self, query: str, *args: object, audit_as: tuple[str, str] | None = None
    ) -> User | None:
        """Run one account change; with ``audit_as`` (event type, actor) its audit event is
        written in the same transaction, so a change without its event never commits."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(query, *args)
            if row is not None and audit_as is not None and self._audit_writer is not None:
                type_, actor = audit_as
                subject = str(row["id"])
                item = audit.event(type_, "success", subject=subject, actor=actor or subject)
                await append(conn, self._audit_writer, [item])
        return _user(row) if row else None

    async def disable(self, email: str) -> User | None:
        """Disable and end every session; ``None`` if there is no enabled user with this email."""
        return await self._update(
            _DISABLE, normalise_email(email), audit_as=("account_disabled", audit.OPERATOR)
        )

    async def enable(self, email: str) -> User | None:
        """Let a disabled user log in again. The epochs stay: old sessions stay dead."""
        return await self._update(
            _ENABLE, normalise_email(email), audit_as=("account_enabled", audit.OPERATOR)
        )

    async def set_roles(self, email: str, roles: tuple[str, ...]) -> User | None:
        """New roles; live access tokens (which carry the old ones) stop working, families stay
        so the next refresh picks the new roles up."""
        check_roles(roles)
        return await self._update(
            _SET_ROLES,
            normalise_email(email),
            list(roles),
            audit_as=("roles_changed", audit.OPERATOR),
        )

    async def set_password(self, email: str, password_hash: str) -> User | None:
        """The operator's new password, whatever the old one was; it ends every session of the
        user in the same statement. ``None`` if there is no user with this email."""
        return await self._update(
            _SET_PASSWORD,
            normalise_email(email),
            password_hash,
            audit_as=("password_changed", audit.OPERATOR),
        )

    async def change_password(self, user_id: uuid.UUID, *, read: str, new_hash: str) -> User | None:
        """A user's own change, from the hash ``read`` whose password they proved: ends every
        session in the same statement. ``None`` when the hash is no longer ``read`` (another
        change committed first) or the account was disabled meanwhile."""
        # actor "": the subject itself
        return await self._update(
            _CHANGE_PASSWORD, user_id, read, new_hash, audit_as=("password_changed", "")
        )

    async def end_sessions(self, email: str) -> User | None:
        """An operator's "log this user out everywhere"."""
        return await self._update(
            _END_SESSIONS, normalise_email(email), audit_as=("sessions_ended", audit.OPERATOR)
        )

    async def epochs_since(
        self, since: int, *, limit: int, after: tuple[int, uuid.UUID] | None = None
    ) -> list[User]:
        """Users whose token epoch is at or after ``since`` (a gateway rebuilding its view), one
        page of at most ``limit`` in (token epoch, id) order, starting after the cursor
        ``after``: keyset paging, so a page costs the same however deep it is, and a user whose
        epoch moves meanwhile moves forward, past the cursor, and is read on a later page."""
        epoch, user_id = after if after is not None else (-1, uuid.UUID(int=0))
        rows = await self._pool.fetch(
            "SELECT id, email, roles, created_at, disabled_at, session_epoch, token_epoch"
            " FROM users WHERE token_epoch >= $1 AND token_epoch > 0"
            " AND (token_epoch, id) > ($2, $3)"
            " ORDER BY token_epoch, id LIMIT $4",
            since,
            epoch,
            user_id,
            limit,
        )
        return [_user(r) for r in rows]


def check_password_policy(password: str) -> None:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise ValidationFailed(
            f"password: must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters"
        )


async def check_credentials(
    users: UserStore, passwords: Passwords, email: str, password: str
) -> User:
    """Return the user whose credentials these are, or raise :class:`InvalidCredentials`.

    Unknown email, wrong password and disabled account cost one argon2 verification each and
    raise the same error, so neither the body nor the timing tells them apart.
    """
    found = await users.credentials(email) if looks_like_email(normalise_email(email)) else None
    user, stored_hash = found if found else (None, None)
    ok = await passwords.verify(stored_hash, password[:MAX_PASSWORD_LENGTH])
    if user is None or not ok:
        audit.credential_check("failure", user_id=str(user.id) if user else None)
        raise InvalidCredentials(headers=audit.refused_headers(user and user.id, "password"))
    if user.disabled_at is not None:
        audit.credential_check("disabled", user_id=str(user.id))
        raise InvalidCredentials(headers=audit.refused_headers(user.id, "disabled"))
    if stored_hash is None:  # only a disabled or unknown user has none; both refused above
        raise InvalidCredentials()
    if passwords.needs_rehash(stored_hash):
        new_hash = await passwords.hash(password)
        upgraded = await users.rehash(user.id, read=stored_hash, new_hash=new_hash)
        if not upgraded:
            # The password changed (an operator's set-password, the user's own change) between
            # the read and now: the one just verified is no longer this account's, so the
            # login fails closed instead of opening a session the change was meant to end.
            audit.credential_check("superseded", user_id=str(user.id))
            raise InvalidCredentials(headers=audit.refused_headers(user.id, "superseded"))
    audit.credential_check("success", user_id=str(user.id))
    return user


class WrongPassword(Exception):
    """The current password given for a password change is not the user's."""


async def change_password(
    users: UserStore, passwords: Passwords, user_id: uuid.UUID, current: str, new: str
) -> User:
    """A user changing their own password: the current one must verify (one argon2 run even
    for an unknown or disabled user, as at login), the new one must meet the policy."""
    found = await users.hash_of(user_id)
    user, stored_hash = found if found else (None, None)
    ok = await passwords.verify(stored_hash, current[:MAX_PASSWORD_LENGTH])
    if user is None or stored_hash is None or not ok or user.disabled_at is not None:
        audit.password_change_refused(user_id=str(user_id))
        raise WrongPassword()
    check_password_policy(new)
    updated = await users.change_password(
        user.id, read=stored_hash, new_hash=await passwords.hash(new)
    )
    if updated is None:
        # Lost the race: another change from the same current password committed first (or
        # the account was disabled meanwhile). The password given is no longer the current
        # one, so the answer is the one a wrong current password gets (docs/SECURITY.md).
        audit.password_change_refused(user_id=str(user_id))
        raise WrongPassword()
    audit.account_changed("password_changed", user_id=str(user.id), actor="user")
    return updated
