"""Login and refresh rate limits: slowapi's limiter over Redis, shared by every gateway instance.

slowapi configures the ``limits`` storage and strategy (Redis URI, key prefix, fixed window); the
routes call :meth:`RateLimits.check` explicitly rather than through slowapi's decorators because
the per-account key needs the parsed body and the limits come from this app's settings, not from
a module-level limiter.

The client IP comes from :func:`servicekit.forwarded.client_ip`: the TCP peer unless that peer is
a configured trusted proxy; only then is ``X-Forwarded-For`` read, right to left, skipping trusted
hops, and only an IP address is believed. Trusting the header by default would let any client
pick its own IP and never be limited.

The per-account login limit counts **failures** (issue 24, item 11): every attempt is counted
up front, as the others are, and an attempt whose password was right gives its count back
(:meth:`RateLimits.refund`). Counting first keeps a burst of guesses from slipping past the limit
while earlier ones are in flight; giving back keeps logins and password changes that succeed from
locking anyone out. Once the count reached the limit every attempt is refused, the right password
included (a limit that lets the right password through is an oracle), until the window ends; a
success does not reset the count (docs/SECURITY.md, "Login limits").

Redis down: the check raises :class:`ServiceUnavailable` (503 + ``Retry-After``). Login fails
closed: an unlimited login endpoint is an open door to password guessing, and a short outage of
login is the lesser harm. Refresh fails closed the same way (the client keeps its cookie and
retries); requests already holding an access token are not rate limited here at all.

``limits``' Redis storage is synchronous, so each check runs in a worker thread to keep the
event loop free.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

from limits import RateLimitItem
from limits import parse as parse_limit
from limits.storage import RedisStorage
from redis.exceptions import RedisError
from servicekit import redis_url
from servicekit.emails import normalise_email
from servicekit.forwarded import client_ip, forwarded_for
from servicekit.logs import log_event
from slowapi import Limiter
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from gateway import metrics
from gateway.errors import RateLimited, ServiceUnavailable
from gateway.settings import Settings

logger = logging.getLogger("gateway.ratelimit")

REDIS_DOWN_RETRY_AFTER = 5

# Give one count back, only while its window lives: a refund that arrived after the window ended
# must not create a negative counter that would grant the next window an extra guess.
_REFUND = b"""
if redis.call("exists", KEYS[1]) == 1 and tonumber(redis.call("get", KEYS[1])) > 0 then
    return redis.call("decr", KEYS[1])
end
return 0
"""


def account_key(email: str) -> str:
    """The per-account bucket: the address's one normal form (the backend looks accounts up by
    the same), so no spelling of an address (case, long s, fullwidth letters, spaces) gets a
    fresh allowance of guesses. Hashed so the Redis keyspace is not a list of addresses."""
    return hashlib.sha256(normalise_email(email).encode("utf-8")).hexdigest()[:32]


class RateLimits:
    """The login and refresh limits: fixed windows counted in Redis, shared by every instance.

    Invariants it keeps:

    - one count per attempt, made before the work it protects (the credential check, the
      rotation), so a burst cannot slip past the limit while earlier attempts are in flight;
    - counters live only in Redis under ``REDIS_KEY_PREFIX``: every gateway instance and worker
      sees the same count, and no limit resets when one of them restarts;
    - fail closed: if Redis cannot be reached the check raises :class:`ServiceUnavailable`
      (503 + ``Retry-After``) instead of letting the attempt through uncounted;
    - a client cannot pick its own bucket: the address comes from
      :func:`servicekit.forwarded.client_ip` (the one set of rules for it), and account keys are
      hashes (:func:`account_key`), so the keyspace is not a list of email addresses.
    """

    def __init__(self, settings: Settings) -> None:
        # Short socket timeouts: with Redis gone, login must answer 503 quickly, not hang.
        # servicekit's pool talks to the master only, with or without Sentinel: limits' own
        # Sentinel storage would read the counts from a replica (use_replicas=True by default),
        # and a lagging replica's lower count lets a burst of guesses through.
        self.pool = redis_url.sync_pool(
            settings.redis, socket_connect_timeout=1.0, socket_timeout=1.0
        )
        options: dict[str, Any] = {
            "key_prefix": f"{settings.redis_key_prefix}ratelimit",
            "connection_pool": self.pool,
        }
        self._limiter = Limiter(
            key_func=lambda: "unused",
            # only the scheme is read (limits' plain Redis storage): the pool says where
            storage_uri="redis://",
            storage_options=options,
            strategy="fixed-window",
            swallow_errors=False,
            in_memory_fallback_enabled=False,
        )
        storage = self._limiter.limiter.storage
        if not isinstance(storage, RedisStorage):  # the refund script needs its connection
            raise TypeError("the login limits need a Redis storage")
        self._storage = storage
        self._refund = storage.get_connection().register_script(_REFUND)
        self._trusted = settings.trusted_proxies
        self.login_ip = self._parse(settings.login_rate_limit_ip)
        self.login_account = self._parse(settings.login_rate_limit_account)
        self.refresh_ip = self._parse(settings.refresh_rate_limit)

    @staticmethod
    def _parse(value: str) -> RateLimitItem | None:
        return parse_limit(value) if value else None

    def client_ip(self, request: Request) -> str:
        peer = request.client.host if request.client else None
        return client_ip(peer, forwarded_for(request.scope["headers"]), self._trusted)

    async def check(self, item: RateLimitItem | None, scope: str, key: str) -> dict[str, str]:
        """Count one hit; raise 429 over the limit, 503 if Redis is unreachable."""
        if item is None:
            return {}
        return await run_in_threadpool(self._hit, item, scope, key)

    async def refund(self, item: RateLimitItem | None, scope: str, key: str) -> None:
        """Give back the count of one attempt :meth:`check` let through (a login or password
        change whose password was right). Best effort: if Redis cannot be reached the attempt
        stays counted, which errs on the side of the limit."""
        if item is not None:
            await run_in_threadpool(self._give_back, item, scope, key)

    def _give_back(self, item: RateLimitItem, scope: str, key: str) -> None:
        try:
            self._refund(keys=[self._storage.prefixed_key(item.key_for(scope, key))])
        except (RedisError, OSError) as exc:
            log_event(logger, "ratelimit_refund_failed", logging.WARNING, error=type(exc).__name__)
            metrics.redis_error("ratelimit")

    def _hit(self, item: RateLimitItem, scope: str, key: str) -> dict[str, str]:
        strategy = self._limiter.limiter
        try:
            allowed = strategy.hit(item, scope, key)
            stats = strategy.get_window_stats(item, scope, key)
        except (RedisError, OSError) as exc:
            log_event(logger, "ratelimit_unavailable", logging.WARNING, error=type(exc).__name__)
            metrics.redis_error("ratelimit")
            raise ServiceUnavailable(
                "rate limiting is unavailable, retry later", retry_after=REDIS_DOWN_RETRY_AFTER
            ) from None
        reset = int(stats.reset_time)
        headers = {
            "X-RateLimit-Limit": str(item.amount),
            "X-RateLimit-Remaining": str(max(stats.remaining, 0)),
            "X-RateLimit-Reset": str(reset),
        }
        if not allowed:
            retry = max(1, reset - int(time.time()))
            log_event(logger, "rate_limited", logging.WARNING, scope=scope)
            metrics.rate_limited(scope)
            raise RateLimited(headers={**headers, "Retry-After": str(retry)})
        return headers
