"""Users and the credential check. Every query is parameterised."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from backend import audit
from backend.emails import looks_like_email, normalise_email
from backend.errors import Conflict, InvalidCredentials, ValidationFailed
from backend.passwords import Passwords

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024  # argon2 handles any length; this only bounds the work per request
ROLES = frozenset({"user", "admin"})


@dataclass(frozen=True)
class User:
    id: uuid.UUID
    email: str
    roles: tuple[str, ...]
    created_at: datetime
    disabled_at: datetime | None

    def public(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "email": self.email,
            "roles": list(self.roles),
            "created_at": self.created_at.isoformat(),
        }


def _user(row: asyncpg.Record) -> User:
    return User(
        id=row["id"],
        email=row["email"],
        roles=tuple(row["roles"]),
        created_at=row["created_at"],
        disabled_at=row["disabled_at"],
    )


class UserStore:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def create(self, email: str, password_hash: str, roles: tuple[str, ...]) -> User:
        email = normalise_email(email)
        if not looks_like_email(email):
            raise ValidationFailed("email: not a valid address")
        if not set(roles) <= ROLES:
            raise ValidationFailed(f"roles: must be among {sorted(ROLES)}")
        try:
            row = await self._pool.fetchrow(
                "INSERT INTO users (id, email, password_hash, roles) VALUES ($1, $2, $3, $4)"
                " RETURNING id, email, roles, created_at, disabled_at",
                uuid.uuid4(),
                email,
                password_hash,
                list(roles),
            )
        except asyncpg.UniqueViolationError:
            raise Conflict("a user with this email already exists") from None
        return _user(row)

    async def by_id(self, user_id: uuid.UUID) -> User | None:
        row = await self._pool.fetchrow(
            "SELECT id, email, roles, created_at, disabled_at FROM users WHERE id = $1", user_id
        )
        return _user(row) if row else None

    async def credentials(self, email: str) -> tuple[User, str] | None:
        row = await self._pool.fetchrow(
            "SELECT id, email, roles, created_at, disabled_at, password_hash FROM users"
            " WHERE lower(email) = $1",
            normalise_email(email),
        )
        return (_user(row), row["password_hash"]) if row else None

    async def page(self, *, limit: int, offset: int) -> tuple[list[User], int]:
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                "SELECT id, email, roles, created_at, disabled_at FROM users"
                " ORDER BY created_at, id LIMIT $1 OFFSET $2",
                limit,
                offset,
            )
            total = await conn.fetchval("SELECT count(*) FROM users")
        return [_user(r) for r in rows], int(total)

    async def set_password_hash(self, user_id: uuid.UUID, password_hash: str) -> None:
        await self._pool.execute(
            "UPDATE users SET password_hash = $2 WHERE id = $1", user_id, password_hash
        )

    async def disable(self, email: str) -> bool:
        status = await self._pool.execute(
            "UPDATE users SET disabled_at = now() WHERE lower(email) = $1 AND disabled_at IS NULL",
            normalise_email(email),
        )
        return bool(status.endswith(" 1"))


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
        raise InvalidCredentials()
    if user.disabled_at is not None:
        audit.credential_check("disabled", user_id=str(user.id))
        raise InvalidCredentials()
    assert stored_hash is not None
    if passwords.needs_rehash(stored_hash):
        await users.set_password_hash(user.id, await passwords.hash(password))
    audit.credential_check("success", user_id=str(user.id))
    return user
