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

Redis may also come back *empty* (a restart without persistence, a failover to a blank replica),
and then neither the sorted set nor anyone's memory of the outage would tell an instance started
afterwards which families are dead. PostgreSQL holds the truth (the ledger's ``revoked_at``), so
each instance also rebuilds its set from the ledger: at start-up (before the first request, and
whether or not Redis answers), after every Redis reconnect, and, while a rebuild has failed (the
database was down too), again every few seconds until one succeeds. After a reconnect it also
re-pushes everything it knows to the sorted set, so the set is whole again for the next instance
to start.

The same connection follows the per-user epoch channel (``<prefix>epochs``, see
:mod:`gateway.sessions.epochs`); after every (re)connect the epochs are reloaded from the backend,
which
holds them durably.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

import redis.asyncio as aioredis
from redis.exceptions import RedisError
from servicekit import epochs as epoch_messages
from servicekit.logs import log_event

from gateway import metrics
from gateway.sessions.epochs import UserEpochs

logger = logging.getLogger("gateway.revocation")

_RECONNECT_DELAY = 0.5
_PRUNE_INTERVAL = 60.0
_REBUILD_RETRY = 5.0

#: ``since`` (epoch seconds) -> ``(sid, revoked_at)`` of the families revoked after it.
RevokedSince = Callable[[float], Awaitable[Iterable[tuple[str, float]]]]


class RevokedSessions:
    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str,
        ttl: int,
        revoked_since: RevokedSince | None = None,
        epochs: UserEpochs | None = None,
    ) -> None:
        self._client = client
        self._revoked_since = revoked_since
        self._rebuilt = revoked_since is None
        self._last_rebuild = 0.0
        self.channel = f"{prefix}revoked"
        self.epoch_channel = epoch_messages.channel(prefix)
        self._epochs = epochs
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
        """Rebuild from the ledger, start the listener, and wait briefly for its first load, so
        start-up begins warm."""
        await self.rebuild()
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
            metrics.redis_error("revocation")

    async def publish_epochs(self, update: epoch_messages.EpochUpdate) -> None:
        """Apply a user's new epochs here at once and tell every other gateway. If Redis is
        unreachable they learn it at their next epoch reload from the backend instead."""
        if self._epochs is not None:
            self._epochs.apply(update)
        try:
            await self._client.publish(self.epoch_channel, epoch_messages.encode(update))
        except (RedisError, OSError) as exc:
            log_event(logger, "epoch_broadcast_failed", logging.WARNING, error=type(exc).__name__)
            metrics.redis_error("epochs")

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

    async def rebuild(self) -> bool:
        """Deny every family the ledger says was revoked within one access-token lifetime.

        Returns whether the ledger answered; a failure is logged and retried by the listener.
        """
        if self._revoked_since is None:
            return True
        self._last_rebuild = time.monotonic()
        try:
            rows = await self._revoked_since(time.time() - self._ttl)
        except Exception as exc:  # whatever the ledger raises must not end the listener
            log_event(logger, "revocation_rebuild_failed", logging.ERROR, error=type(exc).__name__)
            self._rebuilt = False
            return False
        count = 0
        for sid, revoked_at in rows:
            expires = revoked_at + self._ttl
            if expires > time.time():
                self._local[sid] = max(expires, self._local.get(sid, 0.0))
                count += 1
        self._rebuilt = True
        log_event(logger, "revocation_rebuilt", families=count)
        return True

    async def _push_all(self) -> None:
        """Put everything this instance knows back into the sorted set (Redis may be empty)."""
        self._prune()
        if not self._local:
            return
        # GT: never shorten an entry another instance pushed with a later expiry
        await self._client.zadd(self.key, dict(self._local), gt=True)

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
                channels = [self.channel]
                if self._epochs is not None:
                    channels.append(self.epoch_channel)
                await pubsub.subscribe(*channels)
                await self.reload()
                await self.rebuild()
                if self._epochs is not None:
                    # broadcasts sent while we were not subscribed are lost: re-read the source
                    self._epochs.request_reload()
                await self._flush()
                await self._push_all()
                self.connected = True
                self._subscribed.set()
                log_event(logger, "revocation_listener_ready", revoked=len(self._local))
                last_prune = time.monotonic()
                while not self._stopping:
                    message = await pubsub.get_message(timeout=1.0)
                    if self._pending:
                        # a revocation made during a blip that the listener did not notice
                        await self._flush()
                    if not self._rebuilt and time.monotonic() - self._last_rebuild > _REBUILD_RETRY:
                        await self.rebuild()
                    if time.monotonic() - last_prune > _PRUNE_INTERVAL:
                        self._prune()
                        last_prune = time.monotonic()
                    if message is None or message.get("type") != "message":
                        continue
                    data = message["data"]
                    if self._epochs is not None and _name(message) == self.epoch_channel:
                        update = epoch_messages.decode(data)
                        if update is not None:
                            self._epochs.apply(update)
                        continue
                    sid = data.decode() if isinstance(data, bytes) else str(data)
                    self._local[sid] = max(time.time() + self._ttl, self._local.get(sid, 0.0))
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                metrics.redis_error("revocation")
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


def _name(message: dict[str, object]) -> str:
    channel = message.get("channel")
    return channel.decode() if isinstance(channel, bytes) else str(channel)
