"""Password hashing with argon2id: parameters in one place, verification off the event loop.

Parameters (defaults are argon2-cffi's RFC 9106 "low memory" profile, which also meets OWASP's
argon2id guidance): ``time_cost=3``, ``memory_cost=65536`` KiB (64 MiB), ``parallelism=4``,
16-byte salt, 32-byte hash. They can be changed with ``ARGON2_TIME_COST``,
``ARGON2_MEMORY_KIB`` and ``ARGON2_PARALLELISM``; existing hashes are upgraded on the next
successful login (``check_needs_rehash``).

Every check costs one full argon2 verification, including for an unknown email (verified against
a dummy hash made with the same parameters) and for a disabled account, so the response time does
not tell a caller which case it hit.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


@dataclass(frozen=True)
class Argon2Params:
    time_cost: int = 3
    memory_kib: int = 65536
    parallelism: int = 4


class Passwords:
    """Hash and verify passwords; ``verify`` and ``hash`` run argon2 in a worker thread."""

    def __init__(self, params: Argon2Params | None = None) -> None:
        self.params = params or Argon2Params()
        self._hasher = PasswordHasher(
            time_cost=self.params.time_cost,
            memory_cost=self.params.memory_kib,
            parallelism=self.params.parallelism,
            type=Type.ID,
        )
        # A hash of a random password nobody knows: verifying against it costs what a real
        # verification costs and can never succeed.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(32))

    def hash_sync(self, password: str) -> str:
        return self._hasher.hash(password)

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    def _verify_sync(self, password_hash: str | None, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash or self._dummy_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True only when ``password`` matches; ``None`` verifies against the dummy hash."""
        ok = await asyncio.to_thread(self._verify_sync, password_hash, password)
        return ok and password_hash is not None

    def needs_rehash(self, password_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True
