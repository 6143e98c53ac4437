"""Single use: each internal token is accepted once per verifying process.

A token is bound to one method and path and lives at most 60 s, but within that time a captured
token could be sent again and again: a captured ``auth_validate`` token would be a password
oracle that no gateway limit sees. :class:`ReplayCache` remembers the ``jti`` of every token the
:class:`~internal_auth.Verifier` accepted until the token could no longer verify anyway
(``exp`` + leeway), and refuses a second use (RFC 7519 §4.1.7: ``jti`` "can be used to prevent
the JWT from being replayed").

Bounded and fail-closed: at ``max_entries`` live entries a new token is refused
(:attr:`Reason.REPLAY_CACHE_FULL`) rather than a live entry evicted, since evicting one would
re-open exactly the replay it was stored to stop. Expired entries are dropped first, in expiry
order, so the cache holds at most ``rate x (token lifetime + leeway)`` entries.

Scope: one cache per process. Behind several backend processes, a captured token can be used
once per process within its lifetime (still bound to its method and path); a shared store
would be needed to make that once overall.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable

from .errors import InternalAuthError, Reason

__all__ = ["DEFAULT_MAX_ENTRIES", "ReplayCache"]

#: Room for about 7,000 verified tokens a second at the default 30 s lifetime and 5 s leeway
#: (several times what one backend process serves); about 45 MiB when full (bench/README.md).
DEFAULT_MAX_ENTRIES = 250_000


class ReplayCache:
    """The ``jti`` values already used, each kept until its ``expires_at`` (a Unix time)."""

    __slots__ = ("_clock", "_expiry", "_lock", "_seen", "max_entries")

    def __init__(
        self, max_entries: int = DEFAULT_MAX_ENTRIES, *, clock: Callable[[], float] = time.time
    ) -> None:
        if not isinstance(max_entries, int) or isinstance(max_entries, bool) or max_entries < 1:
            raise ValueError("max_entries must be a positive integer")
        self.max_entries = max_entries
        self._clock = clock
        self._seen: dict[str, float] = {}
        self._expiry: list[tuple[float, str]] = []
        # The verifier may be called from worker threads (sync FastAPI dependencies).
        self._lock = threading.Lock()

    def use(self, jti: str, expires_at: float, *, iss: str | None = None) -> None:
        """Record the first use of ``jti``; raise :class:`InternalAuthError` on any other."""
        with self._lock:
            now = self._clock()
            self._drop_expired(now)
            if jti in self._seen:
                raise InternalAuthError(Reason.REPLAYED, "token already used", iss=iss)
            if len(self._seen) >= self.max_entries:
                raise InternalAuthError(
                    Reason.REPLAY_CACHE_FULL, "too many live tokens to remember", iss=iss
                )
            self._seen[jti] = expires_at
            heapq.heappush(self._expiry, (expires_at, jti))

    def _drop_expired(self, now: float) -> None:
        expiry, seen = self._expiry, self._seen
        while expiry and expiry[0][0] <= now:
            _, jti = heapq.heappop(expiry)
            seen.pop(jti, None)

    def __len__(self) -> int:
        return len(self._seen)

    def __repr__(self) -> str:
        return f"ReplayCache(entries={len(self._seen)}, max_entries={self.max_entries})"
