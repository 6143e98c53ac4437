"""An optional limit on proxied requests per user (``PROXY_RATE_LIMIT_USER``, off by default).

It runs on the hot path, so it uses ``limits``' asyncio Redis storage: one pipelined round trip on
the event loop, no thread hop, nothing blocking. Fixed window, because it is the cheapest strategy
(one ``INCRBY`` + ``EXPIRE``) and the point is to stop one account from flooding the backend, not
to shape traffic precisely.

If Redis is unreachable the request is let through (and logged): every proxied request already
carries a verified access token, so failing open only loses the flood guard for a moment, whereas
failing closed would turn a Redis outage into an outage of the whole API.
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
from gateway.errors import RateLimited

logger = logging.getLogger("gateway.user_limit")

NAMESPACE = "proxy-user"


class UserLimit:
    def __init__(self, *, redis: redis_url.RedisTarget, key_prefix: str, rate: str) -> None:
        self.item: RateLimitItem = parse(rate)
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

    async def check(self, user_id: str) -> None:
        """Count one proxied request for ``user_id``; raise 429 over the limit."""
        try:
            allowed = await self._limiter.hit(self.item, NAMESPACE, user_id)
            if allowed:
                return
            stats = await self._limiter.get_window_stats(self.item, NAMESPACE, user_id)
        except Exception as exc:  # any storage failure: fail open, see the module docstring
            log_event(logger, "user_limit_unavailable", logging.WARNING, error=type(exc).__name__)
            metrics.redis_error("user_limit")
            return
        retry = max(1, int(stats.reset_time - time.time()))
        log_event(logger, "rate_limited", logging.WARNING, scope=NAMESPACE, user_id=user_id)
        metrics.rate_limited("user")
        raise RateLimited(
            headers={
                "Retry-After": str(retry),
                "X-RateLimit-Limit": str(self.item.amount),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": str(int(stats.reset_time)),
            }
        )
