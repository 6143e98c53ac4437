"""The gateway's audit writer: one chain per worker process (``gateway/<host>/<pid>``)."""

from __future__ import annotations

from datetime import UTC, datetime

from servicekit import db
from servicekit.audit import BatchWriter, ensure_partitions, writer_id

from gateway import metrics
from gateway.settings import Settings


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
    that meets a new month), so no login ever waits on a CREATE TABLE."""
    async with pool.acquire() as conn:
        await ensure_partitions(conn, datetime.now(UTC))
