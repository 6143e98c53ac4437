"""A background writer for high-volume audit events (failed logins under attack, rejected
internal tokens): a request only appends to a bounded in-memory queue; one task writes what is
queued as one transaction per batch, at least every ``flush_interval`` seconds, and everything
left on shutdown. A full queue drops the event and counts it (``on_drop``): an attacker must not
be able to grow the process's memory or make PostgreSQL the bottleneck of login.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from servicekit.audit.events import Event
from servicekit.audit.store import append
from servicekit.logs import log_event

logger = logging.getLogger("servicekit.audit")


class BatchWriter:
    def __init__(
        self,
        pool: Any,
        writer: str,
        *,
        queue_size: int = 10_000,
        batch_size: int = 500,
        flush_interval: float = 0.25,
        close_timeout: float = 5.0,
        on_drop: Callable[[int], None] = lambda n: None,
        on_written: Callable[[int], None] = lambda n: None,
    ) -> None:
        self.pool = pool
        self.writer = writer
        self._queue: deque[Event] = deque()
        self._queue_size = queue_size
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._close_timeout = close_timeout
        self._on_drop = on_drop
        self._on_written = on_written
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()
        #: events dropped since start (full queue, or a failed final flush)
        self.dropped = 0
        #: the last sequence this writer committed; a head found behind it means the database
        #: lost committed transactions (a failover to a standby that had not received them)
        self.last_seq: int | None = None
        #: times that happened
        self.restarts = 0

    def submit(self, event: Event) -> bool:
        """Queue ``event``; never blocks, never raises. False when it was dropped."""
        if len(self._queue) >= self._queue_size:
            self._drop(1)
            return False
        self._queue.append(event)
        return True

    def _drop(self, count: int) -> None:
        self.dropped += count
        self._on_drop(count)

    @property
    def pending(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def _run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._flush_interval)
            try:
                await self.flush()
            except Exception as exc:  # the database is down: keep the batch, retry next tick
                log_event(logger, "audit_write_failed", logging.WARNING, error=type(exc).__name__)

    async def flush(self) -> None:
        """Write everything queued now, a batch per transaction. On a database error the batch
        goes back to the front of the queue (space permitting) and the error is raised."""
        async with self._lock:
            while self._queue:
                batch = [
                    self._queue.popleft() for _ in range(min(self._batch_size, len(self._queue)))
                ]
                try:
                    async with self.pool.acquire() as conn, conn.transaction():
                        links = await append(conn, self.writer, batch)
                except BaseException:
                    room = self._queue_size - len(self._queue)
                    keep = batch[:room] if room > 0 else []
                    self._queue.extendleft(reversed(keep))
                    if len(batch) > len(keep):
                        self._drop(len(batch) - len(keep))
                    raise
                self._on_written(len(batch))
                if self.last_seq is not None and links[0].seq - 1 != self.last_seq:
                    # The chain and its head lost the same tail together, so it still verifies:
                    # reported as a restart of the chain, not as tampering (docs/SECURITY.md).
                    self.restarts += 1
                    log_event(
                        logger,
                        "audit_chain_restarted",
                        logging.WARNING,
                        writer=self.writer,
                        expected_seq=self.last_seq + 1,
                        found_seq=links[0].seq,
                    )
                self.last_seq = links[-1].seq

    async def close(self) -> None:
        """Stop the task and flush what is left, within ``close_timeout``; what cannot be
        written then is dropped and counted."""
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(Exception):
                await self._task
        try:
            await asyncio.wait_for(self.flush(), self._close_timeout)
        except Exception as exc:  # shutting down: count, log, go on
            log_event(logger, "audit_final_flush_failed", logging.ERROR, error=type(exc).__name__)
            self._drop(len(self._queue))
            self._queue.clear()
