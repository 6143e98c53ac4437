"""Limits on proxied requests: per user (``PROXY_RATE_LIMIT_USER``, off by default) and, for the
anonymous requests a policy's public rules admit, per client IP (``PROXY_RATE_LIMIT_IP``).

It runs on the hot path, so it uses ``limits``' asyncio Redis storage: one pipelined round trip on
the event loop, no thread hop, nothing blocking. Fixed window, because it is the cheapest strategy
(one ``INCRBY`` + ``EXPIRE``) and the point is to stop one account from flooding the backend, not
to shape traffic precisely.

If Redis is unreachable the per-user limit lets the request through (and logs it): such a request
carries a verified access token, so failing open only loses the flood guard for a moment, whereas
failing closed would turn a Redis outage into an outage of the whole API. The per-IP limit fails
closed (503 + ``Retry-After``): nothing else stands between an anonymous flood and the service.
"""

from __future__ import annotations

import logging
import time

from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter
from servicekit import redis_url
from servicekit.logs import log_event

from gateway import metrics
from gateway.errors import RateLimited, ServiceUnavailable

logger = logging.getLogger("gateway.user_limit")

NAMESPACE = "proxy-user"


class UserLimit:
    """A fixed window per key (a user id, or a client IP with ``namespace="proxy-ip"``)."""

    def __init__(
        self,
        *,
        redis: redis_url.RedisTarget,
        key_prefix: str,
        rate: str,
        namespace: str = NAMESPACE,
        limit: str = "user",
        fail_open: bool = True,
    ) -> None:
        self.item: RateLimitItem = parse(rate)
        self._namespace = namespace
        self._limit = limit
        self._fail_open = fail_open
        # Every key starts with REDIS_KEY_PREFIX so deployments (and test sessions) sharing one
        # Redis never count each other's requests. The pool is servicekit's: the master only
        # (through Sentinel or not), so a count is never read from a lagging replica, which
        # limits' own Sentinel storage does by default (use_replicas=True).
        self.pool = redis_url.async_pool(redis, socket_connect_timeout=0.5, socket_timeout=0.5)
        self._storage = RedisStorage(
            "async+redis://",  # only the scheme is read: the pool says where
            implementation="redispy",
            key_prefix=f"{key_prefix}limits",
            connection_pool=self.pool,  # type: ignore[arg-type]  # limits types **options narrowly
        )
        self._limiter = FixedWindowRateLimiter(self._storage)

    async def check(self, key: str) -> None:
        """Count one proxied request for ``key``; raise 429 over the limit."""
        try:
            allowed = await self._limiter.hit(self.item, self._namespace, key)
            if allowed:
                return
            stats = await self._limiter.get_window_stats(self.item, self._namespace, key)
        except Exception as exc:  # any storage failure: see the module docstring
            log_event(
                logger,
                f"{self._limit}_limit_unavailable",
                logging.WARNING,
                error=type(exc).__name__,
            )
            metrics.redis_error(f"{self._limit}_limit")
            if self._fail_open:
                return
            raise ServiceUnavailable("rate limiting is unavailable, retry later") from None
        retry = max(1, int(stats.reset_time - time.time()))
        if self._limit == "user":
            log_event(logger, "rate_limited", logging.WARNING, scope=self._namespace, user_id=key)
        else:
            # a client IP is personal data: the count is what an operator needs, not the address
            log_event(logger, "rate_limited", logging.WARNING, scope=self._namespace)
        metrics.rate_limited(self._limit)
        raise RateLimited(
            headers={
                "Retry-After": str(retry),
                "X-RateLimit-Limit": str(self.item.amount),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(int(stats.reset_time)),
            }
        )
