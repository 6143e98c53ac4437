"""The audit tables: appending a batch to a writer's chain, the monthly partitions, queries.

:func:`append` runs in the caller's transaction, so an account change and its event commit
together or not at all. It locks the writer's head row, so the sequence stays gap-free and the
head names the newest event even if two tasks of one process append at once.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

from servicekit.audit.events import ZERO_HASH, ChainLink, Event, chain_hash

_INSERT = (
    "INSERT INTO audit_events (at, writer, seq, type, outcome, actor, subject, subject_hmac,"
    " family, ip, user_agent, request_id, trace_id, service, rule, details, prev_hash, hash)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16::jsonb,"
    " $17, $18)"
)

#: months whose partition this process has already made sure of
_known_months: set[tuple[int, int]] = set()


def _month(at: datetime | date) -> tuple[int, int]:
    if isinstance(at, datetime):
        at = at.astimezone(UTC)
    return (at.year, at.month)


def _next_month(year: int, month: int) -> date:
    return date(year + month // 12, month % 12 + 1, 1)


async def ensure_partitions(conn: Any, at: datetime) -> None:
    """Make sure the partitions of ``at``'s month and the next exist (made ahead, so a writer
    never meets a month without one; there is no default partition)."""
    year, month = _month(at)
    if (year, month) in _known_months:
        return
    current = _month(datetime.now(UTC))
    for day in (date(year, month, 1), _next_month(year, month)):
        await conn.fetchval("SELECT audit_ensure_partition($1)", day)
        # only this month and later: an older one may be pruned (dropped) at any time
        if _month(day) >= current:
            _known_months.add(_month(day))


def _uuid(value: str | None) -> uuid.UUID | None:
    return uuid.UUID(value) if value else None


async def append(conn: Any, writer: str, events: Sequence[Event]) -> list[ChainLink]:
    """Append ``events`` to ``writer``'s chain inside the caller's transaction; returns their
    links. The head row is read ``FOR UPDATE``: after a failover that lost the tail of a chain
    (and, in the same transaction, its head update) the chain simply goes on from the head the
    database has, which ``audit verify`` reports as consistent, not as tampering."""
    if not events:
        return []
    for at in {_month(e.at): e.at for e in events}.values():
        await ensure_partitions(conn, at)
    await conn.execute(
        "INSERT INTO audit_heads (writer, last_seq, last_hash) VALUES ($1, 0, $2)"
        " ON CONFLICT (writer) DO NOTHING",
        writer,
        ZERO_HASH,
    )
    head = await conn.fetchrow(
        "SELECT last_seq, last_hash FROM audit_heads WHERE writer = $1 FOR UPDATE", writer
    )
    if head is None:  # row-level security hid it: not this role's writer name
        raise PermissionError("audit writer name not allowed for this role")
    seq, prev = int(head["last_seq"]), bytes(head["last_hash"])
    links: list[ChainLink] = []
    rows = []
    for event in events:
        seq += 1
        digest = chain_hash(prev, event, writer=writer, seq=seq)
        links.append(ChainLink(writer, seq, prev, digest))
        rows.append(
            (
                event.at,
                writer,
                seq,
                event.type,
                event.outcome,
                event.actor,
                _uuid(event.subject),
                event.subject_hmac,
                _uuid(event.family),
                event.ip,
                event.user_agent,
                event.request_id,
                event.trace_id,
                event.service,
                event.rule,
                json.dumps(dict(event.details), sort_keys=True),
                prev,
                digest,
            )
        )
        prev = digest
    await conn.executemany(_INSERT, rows)
    await conn.execute(
        "UPDATE audit_heads SET last_seq = $2, last_hash = $3, updated_at = now()"
        " WHERE writer = $1",
        writer,
        seq,
        prev,
    )
    return links


def event_of(row: Any) -> Event:
    """The event a stored row holds, exactly as it was hashed."""
    details = row["details"]
    return Event(
        type=row["type"],
        outcome=row["outcome"],
        at=row["at"].astimezone(UTC),
        actor=row["actor"],
        subject=str(row["subject"]) if row["subject"] is not None else None,
        subject_hmac=row["subject_hmac"],
        family=str(row["family"]) if row["family"] is not None else None,
        ip=row["ip"],
        user_agent=row["user_agent"],
        request_id=row["request_id"],
        trace_id=row["trace_id"],
        service=row["service"],
        rule=row["rule"],
        details=json.loads(details) if isinstance(details, str) else dict(details),
    )


def row_json(row: Any) -> dict[str, Any]:
    """A stored event as the API and ``audit query --json`` show it. No hash: the chain is for
    ``audit verify``, and the email HMAC stays in the database."""
    event = event_of(row)
    return {
        "id": int(row["id"]),
        "seq": int(row["seq"]),
        "writer": row["writer"],
        "at": event.at.isoformat(),
        "type": event.type,
        "outcome": event.outcome,
        "actor": event.actor,
        "subject": event.subject,
        "family": event.family,
        "ip": event.ip,
        "user_agent": event.user_agent,
        "request_id": event.request_id,
        "trace_id": event.trace_id,
        "service": event.service,
        "rule": event.rule,
        "details": dict(event.details),
    }


COLUMNS = (
    "id, at, writer, seq, type, outcome, actor, subject, subject_hmac, family, ip, user_agent,"
    " request_id, trace_id, service, rule, details, prev_hash, hash"
)


async def query(
    conn: Any,
    *,
    limit: int,
    subject: str | None = None,
    type: str | None = None,
    outcome: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: int | None = None,
) -> list[Any]:
    """Newest first, at most ``limit`` rows, each older (by ``id``) than ``before_id``.

    Keyset paging by the id, never an offset: rows inserted between two pages have larger ids
    and never shift the next page, so paging loses and repeats nothing."""
    clauses, args = [], []

    def add(sql: str, value: Any) -> None:
        args.append(value)
        clauses.append(sql.replace("?", f"${len(args)}"))

    if subject is not None:
        add("subject = ?", uuid.UUID(subject))
    if type is not None:
        add("type = ?", type)
    if outcome is not None:
        add("outcome = ?", outcome)
    if since is not None:
        add("at >= ?", since)
    if until is not None:
        add("at < ?", until)
    if before_id is not None:
        add("id < ?", before_id)
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    args.append(limit)
    return list(
        await conn.fetch(
            f"SELECT {COLUMNS} FROM audit_events{where} ORDER BY id DESC LIMIT ${len(args)}",  # noqa: S608 (fixed clauses, values bound)
            *args,
        )
    )
