"""The gateway's audit writer: one chain per worker process (``gateway/<host>/<pid>``)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from servicekit import db
from servicekit.audit import BatchWriter, ensure_partitions, writer_id
from servicekit.logs import log_event

from gateway import metrics
from gateway.settings import Settings

logger = logging.getLogger("gateway.audit")


def audit_writer(settings: Settings, pool: db.Database) -> BatchWriter:
    return BatchWriter(
        pool,
        writer_id("gateway"),
        queue_size=settings.audit_queue_size,
        batch_size=settings.audit_batch_size,
        flush_interval=settings.audit_flush_interval,
        on_drop=metrics.audit_dropped,
        on_written=metrics.audit_written,
    )


async def audit_ensure_partitions(pool: db.Database) -> None:
    """This month's and next month's partitions, made at start-up (and again by every batch
    that meets a new month), so no login ever waits on a CREATE TABLE.

    A database that is down does not stop the start-up (the gateway starts and reports not
    ready while PostgreSQL is down, README ``DB_POOL_MIN``): the first batch makes them."""
    try:
        async with pool.acquire() as conn:
            await ensure_partitions(conn, datetime.now(UTC))
    except db.UNAVAILABLE as exc:
        log_event(logger, "audit_partitions_deferred", logging.WARNING, error=type(exc).__name__)
