"""``tokengate audit query|tail|verify|prune``: the operator's and auditor's view of the trail.

Every command needs only ``DATABASE_URL`` (``query --email`` also ``BACKEND_DATABASE_URL`` to
resolve the address, as ``tokengate sessions`` does). ``verify`` and the queries work as any role
that may read the trail (``tokengate_auditor``); ``prune`` drops partitions, which only the
owner (the role ``tokengate migrate`` runs as) may do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from servicekit import config, pg_url
from servicekit.audit import chain_hash, ensure_partitions, query, row_json
from servicekit.audit.store import COLUMNS, event_of
from servicekit.config import ConfigError
from servicekit.terminal import printable

from gateway.cli import resolve_user_id

#: ASVS 16.x asks for a documented retention; 90 days is Okta's, long enough for most
#: investigations, short enough to bound the table (README, docs/SECURITY.md)
DEFAULT_RETENTION = "90d"
_DURATION = re.compile(r"([1-9][0-9]{0,6})([smhd])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_PARTITION = re.compile(r"audit_events_(\d{4})(\d{2})")
MAX_QUERY = 10_000


def duration(text: str) -> timedelta:
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r}: a duration like 30m, 24h or 90d")
    return timedelta(seconds=int(match[1]) * _UNITS[match[2]])


def register(sub: argparse._SubParsersAction[Any]) -> None:
    audit = sub.add_parser("audit", help="query, verify and prune the audit trail")
    actions = audit.add_subparsers(dest="action", required=True, metavar="ACTION")

    q = actions.add_parser("query", help="events, newest first")
    who = q.add_mutually_exclusive_group()
    who.add_argument("--email", help="the subject's email (resolved via BACKEND_DATABASE_URL)")
    who.add_argument("--user-id", help="the subject's user id")
    q.add_argument("--since", type=duration, default=duration("24h"), help="default 24h")
    q.add_argument("--type", help="one event type (docs/AUDIT.md)")
    q.add_argument("--limit", type=int, default=1000, help=f"at most (<= {MAX_QUERY})")
    q.add_argument("--json", action="store_true", help="one JSON object per line")
    q.set_defaults(func=_query)

    tail = actions.add_parser("tail", help="the newest events, oldest of them first")
    tail.add_argument("-n", type=int, default=20, help="how many (default 20)")
    tail.add_argument("--follow", action="store_true", help="keep printing new events")
    tail.add_argument("--json", action="store_true", help="one JSON object per line")
    tail.set_defaults(func=_tail)

    verify = actions.add_parser("verify", help="walk every writer's chain; exit 1 if broken")
    verify.set_defaults(func=_verify)

    prune = actions.add_parser("prune", help="drop whole monthly partitions past the retention")
    prune.add_argument(
        "--older-than",
        type=duration,
        default=duration(DEFAULT_RETENTION),
        help=f"retention (default {DEFAULT_RETENTION})",
    )
    prune.set_defaults(func=_prune)


def _dsn() -> str:
    return pg_url.checked(config.get_str(config.environ(), "DATABASE_URL"))


async def _subject(args: argparse.Namespace) -> str | None:
    if not args.email and not args.user_id:
        return None
    env = config.environ()
    users_dsn = env.get("BACKEND_DATABASE_URL") or config.get_str(env, "DATABASE_URL")
    return await resolve_user_id(pg_url.checked(users_dsn), args.email, args.user_id)


def _line(row: Any, as_json: bool) -> str:
    data = row_json(row)
    if as_json:
        return json.dumps(data, sort_keys=True)
    details = " ".join(f"{k}={printable(str(v))}" for k, v in data["details"].items())
    parts = [
        data["at"],
        data["type"],
        data["outcome"],
        f"subject={data['subject'] or '-'}",
        f"actor={printable(data['actor'] or '-')}",
        f"ip={printable(data['ip'] or '-')}",
        f"family={data['family'] or '-'}",
        details,
    ]
    return " ".join(p for p in parts if p)


def _query(args: argparse.Namespace) -> int:
    if not 1 <= args.limit <= MAX_QUERY:
        raise ConfigError(f"--limit must be 1 to {MAX_QUERY}")

    async def run() -> list[Any]:
        subject = await _subject(args)
        conn = await asyncpg.connect(_dsn())
        try:
            return await query(
                conn,
                limit=args.limit,
                subject=subject,
                type=args.type,
                since=datetime.now(UTC) - args.since,
            )
        finally:
            await conn.close()

    try:
        rows = asyncio.run(run())
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"tokengate audit query: database error: {type(exc).__name__}", file=sys.stderr)
        return 1
    for row in rows:
        print(_line(row, args.json))
    return 0


def _tail(args: argparse.Namespace) -> int:
    if not 1 <= args.n <= MAX_QUERY:
        raise ConfigError(f"-n must be 1 to {MAX_QUERY}")

    async def run() -> None:
        conn = await asyncpg.connect(_dsn())
        try:
            rows = list(reversed(await query(conn, limit=args.n)))
            for row in rows:
                print(_line(row, args.json), flush=True)
            last = int(rows[-1]["id"]) if rows else 0
            while args.follow:
                await asyncio.sleep(1.0)
                new = await conn.fetch(
                    f"SELECT {COLUMNS} FROM audit_events WHERE id > $1 ORDER BY id LIMIT 1000",  # noqa: S608 (constant columns)
                    last,
                )
                for row in new:
                    print(_line(row, args.json), flush=True)
                    last = int(row["id"])
        finally:
            await conn.close()

    try:
        asyncio.run(run())
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"tokengate audit tail: database error: {type(exc).__name__}", file=sys.stderr)
        return 1
    return 0


@dataclass(frozen=True)
class ChainReport:
    writer: str
    events: int
    problem: str | None


async def verify_chains(conn: Any) -> list[ChainReport]:
    """Walk every writer's chain from where pruning left it to its head. The first broken link
    of a chain is its problem: a gap or a repeat in the sequence (a deleted row), a link whose
    ``prev_hash`` is not its predecessor's hash, a hash that does not match the row (an edited
    row), or a chain that ends before its head (its newest rows deleted).

    Heads and events are read in one repeatable-read snapshot: writers keep committing while an
    operator verifies, and a head read before a batch committed beside events read after it would
    look like deleted rows."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        return await _verify_snapshot(conn)


async def _verify_snapshot(conn: Any) -> list[ChainReport]:
    heads = {r["writer"]: r for r in await conn.fetch("SELECT * FROM audit_heads")}
    writers = set(heads) | {
        r["writer"] for r in await conn.fetch("SELECT DISTINCT writer FROM audit_events")
    }
    reports = []
    for writer in sorted(writers):
        head = heads.get(writer)
        if head is None:
            reports.append(ChainReport(writer, 0, "events without a head row (head deleted)"))
            continue
        expected, prev = int(head["pruned_seq"]) + 1, bytes(head["pruned_hash"])
        count, problem = 0, None
        cursor = conn.cursor(
            f"SELECT {COLUMNS} FROM audit_events WHERE writer = $1 ORDER BY seq",  # noqa: S608 (constant columns)
            writer,
            prefetch=1000,
        )
        async for row in cursor:
            seq = int(row["seq"])
            if seq != expected:
                problem = (
                    f"seq {expected} missing (next is {seq}): deleted row"
                    if seq > expected
                    else f"seq {seq} appears twice or out of order"
                )
                break
            if bytes(row["prev_hash"]) != prev:
                problem = f"seq {seq}: prev_hash is not the hash of seq {seq - 1}"
                break
            digest = chain_hash(prev, event_of(row), writer=writer, seq=seq)
            if digest != bytes(row["hash"]):
                problem = f"seq {seq}: hash does not match the row (edited)"
                break
            prev, expected, count = digest, expected + 1, count + 1
        if problem is None and (
            expected - 1 != int(head["last_seq"]) or prev != bytes(head["last_hash"])
        ):
            problem = (
                f"chain ends at seq {expected - 1} but its head says {head['last_seq']}:"
                " newest rows deleted"
            )
        reports.append(ChainReport(writer, count, problem))
    return reports


def _verify(args: argparse.Namespace) -> int:
    async def run() -> list[ChainReport]:
        conn = await asyncpg.connect(_dsn())
        try:
            return await verify_chains(conn)
        finally:
            await conn.close()

    try:
        reports = asyncio.run(run())
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"tokengate audit verify: database error: {type(exc).__name__}", file=sys.stderr)
        return 1
    broken = 0
    for report in reports:
        if report.problem is None:
            print(f"ok      {printable(report.writer)}: {report.events} events")
        else:
            broken += 1
            print(f"BROKEN  {printable(report.writer)}: {report.problem}")
    print(f"{len(reports)} chains, {broken} broken")
    return 1 if broken else 0


def _partition_end(name: str) -> datetime | None:
    match = _PARTITION.fullmatch(name)
    if not match:
        return None
    year, month = int(match[1]), int(match[2])
    return datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)


async def prune_partitions(
    conn: Any, older_than: timedelta, *, now: datetime | None = None
) -> list[str]:
    """Drop every monthly partition whose whole month is older than ``older_than``; never a row
    by row ``DELETE`` (which would lock and bloat the table while logins write to it). Before a
    partition goes, each writer's last event in it is kept in its head row (``pruned_seq``,
    ``pruned_hash``), so ``verify`` still checks the rest of the chain from there."""
    now = now or datetime.now(UTC)
    cutoff = now - older_than
    await ensure_partitions(conn, now)
    names = [
        r["relname"]
        for r in await conn.fetch(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'audit_events'::regclass ORDER BY c.relname"
        )
    ]
    dropped = []
    for name in names:
        end = _partition_end(name)
        if end is None or end > cutoff:
            continue
        async with conn.transaction():
            # a brief lock on the parent; never wait behind a long reader for long
            await conn.execute("SET LOCAL lock_timeout = '5s'")
            ident = await conn.fetchval("SELECT quote_ident($1)", name)
            lasts = await conn.fetch(
                f"SELECT DISTINCT ON (writer) writer, seq, hash FROM {ident}"  # noqa: S608 (quoted identifier)
                " ORDER BY writer, seq DESC"
            )
            for row in lasts:
                await conn.execute(
                    "UPDATE audit_heads SET pruned_seq = $2, pruned_hash = $3"
                    " WHERE writer = $1 AND pruned_seq < $2",
                    row["writer"],
                    row["seq"],
                    row["hash"],
                )
            await conn.execute(f"ALTER TABLE audit_events DETACH PARTITION {ident}")
            await conn.execute(f"DROP TABLE {ident}")
        dropped.append(name)
    return dropped


def _prune(args: argparse.Namespace) -> int:
    async def run() -> list[str]:
        conn = await asyncpg.connect(_dsn())
        try:
            return await prune_partitions(conn, args.older_than)
        finally:
            await conn.close()

    try:
        dropped = asyncio.run(run())
    except asyncpg.InsufficientPrivilegeError:
        print(
            "tokengate audit prune: only the tables' owner may drop partitions"
            " (run it with the DATABASE_URL of `tokengate migrate`)",
            file=sys.stderr,
        )
        return 1
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"tokengate audit prune: database error: {type(exc).__name__}", file=sys.stderr)
        return 1
    for name in dropped:
        print(f"dropped {name}")
    if not dropped:
        print("nothing to prune")
    return 0
