"""Revoked sessions: a local set of ``sid``s that every gateway instance keeps in step via Redis.

Access tokens are stateless, so killing a family's live access tokens needs a deny-list. Checking
Redis on every proxied request would put a network round trip on the hot path; instead each
instance keeps the revoked ``sid``s in memory (``sid in revoked`` does no I/O) and learns of new
ones over pub/sub on ``<prefix>revoked``.

Pub/sub is fire-and-forget: an instance that was disconnected misses messages. So the set is also
kept in Redis as a sorted set ``<prefix>revoked:sids`` (member ``sid``, score = expiry time, one
access-token lifetime after revocation, the longest any token of that family can still be alive).
It is loaded at start-up and reloaded after every reconnect, *after* subscribing so nothing falls
into the gap between load and subscribe.

Revocations made while Redis is unreachable take effect locally at once, are queued, and are
pushed to Redis when the connection comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from servicekit.logs import log_event

logger = logging.getLogger("gateway.revocation")

_RECONNECT_DELAY = 0.5
_PRUNE_INTERVAL = 60.0


class RevokedSessions:
    def __init__(self, client: aioredis.Redis, *, prefix: str, ttl: int) -> None:
        self._client = client
        self.channel = f"{prefix}revoked"
        self.key = f"{prefix}revoked:sids"
        self._ttl = ttl
        self._local: dict[str, float] = {}
        self._pending: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._stopping = False
        self.connected = False

    def __contains__(self, sid: object) -> bool:
        if not isinstance(sid, str):
            return False
        expires = self._local.get(sid)
        if expires is None:
            return False
        if expires < time.time():
            # Every access token of that family has expired by now: forget it.
            self._local.pop(sid, None)
            return False
        return True

    def __len__(self) -> int:
        return len(self._local)

    @property
    def pending(self) -> int:
        """Revocations not yet pushed to Redis (it was unreachable when they were made)."""
        return len(self._pending)

    async def start(self, *, wait: float = 2.0) -> None:
        """Start the listener; wait briefly for the first load so start-up begins warm."""
        self._task = asyncio.create_task(self._run(), name="revocation-listener")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._subscribed.wait(), wait)
        if not self.connected:
            log_event(logger, "revocation_listener_unavailable", logging.WARNING)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._stopping = True
        task.cancel()
        # A cancellation that lands while redis-py's own read timeout fires inside
        # get_message() can be swallowed (asyncio.timeout on Python 3.11), and awaiting the task
        # would then hang shutdown forever. The flag ends the loop at its next turn (within the
        # 1 s poll) either way, and the wait is bounded regardless.
        done, _ = await asyncio.wait({task}, timeout=_RECONNECT_DELAY + 2.0)
        if not done:
            log_event(logger, "revocation_listener_stuck", logging.WARNING)

    async def revoke(self, sids: Iterable[str]) -> None:
        """Deny the families locally now, then tell every other instance through Redis."""
        expires = time.time() + self._ttl
        batch = {sid: expires for sid in sids}
        if not batch:
            return
        self._local.update(batch)
        self._pending.update(batch)
        try:
            await self._flush()
        except (RedisError, OSError):
            log_event(logger, "revocation_queued", logging.WARNING, count=len(self._pending))

    async def _flush(self) -> None:
        if not self._pending:
            return
        batch = dict(self._pending)
        now = time.time()
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.zadd(self.key, batch)
            pipe.zremrangebyscore(self.key, "-inf", now)
            for sid in batch:
                pipe.publish(self.channel, sid)
            await pipe.execute()
        for sid in batch:
            self._pending.pop(sid, None)

    async def reload(self) -> None:
        now = time.time()
        rows = await self._client.zrangebyscore(self.key, now, "+inf", withscores=True)
        for member, score in rows:
            sid = member.decode() if isinstance(member, bytes) else str(member)
            self._local[sid] = max(float(score), self._local.get(sid, 0.0))
        self._prune()

    def _prune(self) -> None:
        now = time.time()
        for sid in [s for s, exp in self._local.items() if exp < now]:
            self._local.pop(sid, None)

    async def _run(self) -> None:
        while not self._stopping:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                await self.reload()
                await self._flush()
                self.connected = True
                self._subscribed.set()
                log_event(logger, "revocation_listener_ready", revoked=len(self._local))
                last_prune = time.monotonic()
                while not self._stopping:
                    message = await pubsub.get_message(timeout=1.0)
                    if self._pending:
                        # a revocation made during a blip that the listener did not notice
                        await self._flush()
                    if time.monotonic() - last_prune > _PRUNE_INTERVAL:
                        self._prune()
                        last_prune = time.monotonic()
                    if message is None or message.get("type") != "message":
                        continue
                    data = message["data"]
                    sid = data.decode() if isinstance(data, bytes) else str(data)
                    self._local[sid] = max(time.time() + self._ttl, self._local.get(sid, 0.0))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                if self.connected:
                    log_event(
                        logger,
                        "revocation_listener_lost",
                        logging.WARNING,
                        error=type(exc).__name__,
                    )
                self.connected = False
                await asyncio.sleep(_RECONNECT_DELAY)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
