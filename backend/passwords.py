"""Password hashing with argon2id: parameters in one place, verification off the event loop.

Parameters: argon2id, ``time_cost=3``, ``memory_cost=65536`` KiB (64 MiB), ``parallelism=1``,
16-byte salt, 32-byte hash — RFC 9106's memory and passes with one lane, above OWASP's argon2id
minimums. They can be changed with ``ARGON2_TIME_COST``, ``ARGON2_MEMORY_KIB`` and
``ARGON2_PARALLELISM``; existing hashes are upgraded on the next successful login
(``check_needs_rehash``).

Why one lane, and why at most ``ARGON2_MAX_CONCURRENT`` verifications at once (default: half the
CPUs, at least one): with four lanes every login spreads over every core, and a burst of logins
starved the proxied traffic sharing the machine (bench/README.md). One lane costs less CPU in
total for the same memory hardness, and the cap keeps logins on a bounded share of the cores;
excess logins wait their turn instead of competing.

Every check costs one full argon2 verification, including for an unknown email (verified against
a dummy hash made with the same parameters) and for a disabled account, so the response time does
not tell a caller which case it hit. A stored hash made with other (older, cheaper) parameters is
verified and then padded with a verification of the dummy hash, so an account that predates a
parameter change is not told apart by its cheaper check either. (A stored hash *more* expensive
than the current parameters cannot be padded down; lowering the parameters is the operator's
choice and makes those accounts slower until their next login.)
"""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from collections.abc import Mapping
from dataclasses import dataclass

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from servicekit import config

from backend import metrics


@dataclass(frozen=True)
class Argon2Params:
    time_cost: int = 3
    memory_kib: int = 65536
    parallelism: int = 1


def default_max_concurrent() -> int:
    return max(1, (os.cpu_count() or 2) // 2)


def params_from_env(environ: Mapping[str, str]) -> Argon2Params:
    """``ARGON2_TIME_COST``, ``ARGON2_MEMORY_KIB``, ``ARGON2_PARALLELISM``; defaults above."""
    defaults = Argon2Params()
    p = config.Problems()
    params = Argon2Params(
        time_cost=p.take(
            lambda: config.get_int(environ, "ARGON2_TIME_COST", defaults.time_cost, minimum=1), 1
        ),
        memory_kib=p.take(
            lambda: config.get_int(environ, "ARGON2_MEMORY_KIB", defaults.memory_kib, minimum=8),
            8,
        ),
        parallelism=p.take(
            lambda: config.get_int(environ, "ARGON2_PARALLELISM", defaults.parallelism, minimum=1),
            1,
        ),
    )
    p.check()
    return params


class Passwords:
    """Hash and verify passwords; ``verify`` and ``hash`` run argon2 in a worker thread."""

    def __init__(self, params: Argon2Params | None = None, max_concurrent: int | None = None):
        self.params = params or Argon2Params()
        # A thread semaphore, not an asyncio one: it is taken inside the worker thread, so it
        # works whichever event loop calls in and never blocks the loop itself.
        self._slots = threading.BoundedSemaphore(max_concurrent or default_max_concurrent())
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
        with self._slots:
            return self._hasher.hash(password)

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self.hash_sync, password)

    def _verify_sync(self, password_hash: str | None, password: str) -> bool:
        # waiting: until this thread gets one of the ARGON2_MAX_CONCURRENT slots
        metrics.PASSWORDS_WAITING.inc()
        with self._slots:
            metrics.PASSWORDS_WAITING.dec()
            with metrics.PASSWORDS_RUNNING.track_inprogress(), metrics.PASSWORD_SECONDS.time():
                ok = self._check(password_hash or self._dummy_hash, password)
                if password_hash is not None and self.needs_rehash(password_hash):
                    # A hash made with older, cheaper parameters (or one that does not parse)
                    # verifies in a fraction of the current cost: 13-24 ms against ~145 ms
                    # told an attacker which accounts predate a parameter change (issue 22,
                    # item 8). One more run at the current parameters, whatever the outcome,
                    # makes it cost at least what an unknown email costs.
                    self._check(self._dummy_hash, password)
                return ok

    def _check(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
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
