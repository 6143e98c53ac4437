"""The refresh ledger's figures for issue 14: size, rotation throughput, and pruning.

Each section runs in a throw-away database with every migration applied, dropped at the end.

- ``size``: the ledger after 1,000,000 rotations spread over 10,000 families, with the old
  one-row-per-token ledger (``bench/legacy_ledger.py``, the code before issue 14) and the
  current one-row-per-family ledger. The rotations are applied with each ledger's *own* write
  statement (``executemany``, 10,000 per round): what is stored is exactly what the code stores,
  without the minutes that signing a million JWTs would add.
- ``throughput``: rotations per second and p50/p99 through ``Ledger.rotate`` (each worker rotates
  its own family's newest token again and again, as clients do) at 8 and 64 connections, with
  the table holding 10,000 and 1,000,000 families (filled with ``generate_series``).
- ``prune``: one ``Ledger.prune`` pass over 1,000,000 expired families (batches of 1,000) while
  8 workers keep rotating live families; rotation p99 before and during the pass.

    .venv/bin/python bench/ledger_bench.py [--sections size,throughput,prune] [--seconds 5]

TOKENGATE_BENCH_PG sets the admin DSN (default: postgres on 127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import statistics
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.legacy_ledger import LegacyLedger
from gateway.sessions.ledger import (
    IssuedRefresh,
    Ledger,
    Outcome,
)
from tokengate.migrate import migrate

ADMIN_DSN = os.environ.get("TOKENGATE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
DAY = 86400


@contextlib.asynccontextmanager
async def scratch_database() -> AsyncIterator[str]:
    name = f"tokengate_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{ADMIN_DSN.rpartition('/')[0]}/{name}"
    try:
        await migrate(dsn)
        yield dsn
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def ledger_bytes(conn: asyncpg.Connection) -> tuple[int, int, int]:
    """(family rows, old-format token rows, bytes of both tables with indexes and TOAST)."""
    families = await conn.fetchval("SELECT count(*) FROM refresh_session")
    tokens = await conn.fetchval("SELECT count(*) FROM refresh_token_family")
    size = await conn.fetchval(
        "SELECT pg_total_relation_size('refresh_session')"
        " + pg_total_relation_size('refresh_token_family')"
    )
    return families, tokens, size


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


# -- size ------------------------------------------------------------------------------------------


# The rotations run inside PostgreSQL, one transaction each (a procedure that COMMITs after every
# rotation), writing exactly the rows and columns each ledger's rotate() writes
# (bench/legacy_ledger.py `_ROTATE`; gateway/sessions/ledger.py `_ROTATE_CURRENT`), families taken
# in
# turn. One commit per rotation matters: it is what lets PostgreSQL reclaim a row's previous
# version on the page (HOT pruning) as a live gateway's rotations do. synchronous_commit is off
# for the bench session only: it changes when a commit reaches the disk, not what is stored.
_LEGACY_ROTATIONS = """
CREATE PROCEDURE bench_rotate(rounds int) LANGUAGE plpgsql AS $$
DECLARE
    fams uuid[];
    users uuid[];
    cur text[];
    child text;
BEGIN
    SELECT array_agg(family_id ORDER BY family_id), array_agg(user_id ORDER BY family_id),
           array_agg(jti ORDER BY family_id)
      INTO fams, users, cur FROM refresh_token_family;
    FOR r IN 1..rounds LOOP
        FOR i IN 1..array_length(fams, 1) LOOP
            child := substr(md5(random()::text), 1, 22);
            INSERT INTO refresh_token_family
                (jti, family_id, user_id, parent_jti, issued_at, expires_at)
            VALUES (child, fams[i], users[i], cur[i], now(), now() + interval '14 days');
            UPDATE refresh_token_family SET used_at = now(), child_jti = child
             WHERE jti = cur[i];
            UPDATE refresh_session SET last_used_at = now() WHERE family_id = fams[i];
            cur[i] := child;
            COMMIT;
        END LOOP;
    END LOOP;
END $$
"""

_ROTATIONS = """
CREATE PROCEDURE bench_rotate(rounds int) LANGUAGE plpgsql AS $$
DECLARE
    fams uuid[];
BEGIN
    SELECT array_agg(family_id ORDER BY family_id) INTO fams FROM refresh_session;
    FOR r IN 1..rounds LOOP
        FOR i IN 1..array_length(fams, 1) LOOP
            UPDATE refresh_session SET
                generation = generation + 1,
                previous_digest = current_digest,
                current_digest = sha256(gen_random_uuid()::text::bytea),
                rotation_nonce = substr(sha256(gen_random_uuid()::text::bytea), 1, 16),
                rotated_at = now(),
                last_used_at = now(),
                current_jti = substr(md5(random()::text), 1, 22),
                current_issued_at = now(),
                current_expires_at = LEAST(now() + interval '14 days', absolute_expires_at)
            WHERE family_id = fams[i];
            COMMIT;
        END LOOP;
    END LOOP;
END $$
"""


async def size_section(families: int, rotations: int) -> list[str]:
    rounds = rotations // families
    rows: list[str] = []
    for legacy in (True, False):
        async with scratch_database() as dsn:
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute("SET synchronous_commit = off")
                if legacy:
                    await fill_legacy(conn, families)
                    await conn.execute(_LEGACY_ROTATIONS)
                else:
                    await fill_families(conn, families)
                    await conn.execute(_ROTATIONS)
                started = time.perf_counter()
                await conn.execute("CALL bench_rotate($1)", rounds, timeout=3600)
                took = time.perf_counter() - started
                fam_rows, token_rows, size = await ledger_bytes(conn)
                await conn.execute("VACUUM ANALYZE")
                *_, vacuumed = await ledger_bytes(conn)
            finally:
                await conn.close()
        name = "before (row per token)" if legacy else "after (row per family)"
        rows.append(
            f"| {name} | {fam_rows:,} + {token_rows:,} | {_mb(size)} | {_mb(vacuumed)} |"
            f" {size / (fam_rows + token_rows):,.0f} | {took:,.0f} s |"
        )
        print(rows[-1], flush=True)
    header = [
        f"Ledger after {rounds * families:,} rotations over {families:,} families",
        "",
        "| ledger | rows (families + token rows) | bytes | after VACUUM | bytes/row | write time |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    return header + rows


# -- throughput ------------------------------------------------------------------------------------


async def fill_families(conn: asyncpg.Connection, count: int, *, expired: bool = False) -> None:
    """``count`` other users' families in the new form, written in one statement."""
    created = "now() - interval '40 days'" if expired else "now()"
    lifetime = "interval '30 days'"
    await conn.execute(
        "INSERT INTO refresh_session (family_id, user_id, roles, created_at, last_used_at,"
        " absolute_expires_at, user_agent, ip, generation, current_jti, current_issued_at,"
        " current_expires_at, current_digest)"
        f" SELECT gen_random_uuid(), gen_random_uuid(), '{{user}}', {created}, {created},"
        f" {created} + {lifetime}, 'bench', '127.0.0.1', 1, md5(i::text), {created},"
        f" {created} + interval '14 days', sha256(i::text::bytea)"
        " FROM generate_series(1, $1) AS i",
        count,
    )
    await conn.execute("VACUUM ANALYZE refresh_session")


async def rotate_for(
    ledger: Ledger | LegacyLedger,
    workers: int,
    seconds: float,
    stop: asyncio.Event | None = None,
) -> tuple[float, float, float, int]:
    """Workers rotating their own chains for ``seconds`` (or until ``stop``): rate, p50, p99."""
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def worker() -> int:
        now = int(time.time())
        issued = await ledger.create_family(
            user_id=str(uuid.uuid4()), roles=["user"], user_agent="bench", ip="127.0.0.1", now=now
        )
        done = 0
        if isinstance(issued, IssuedRefresh):
            claims = issued.as_claims()
        else:
            jti = issued.jti
        while time.perf_counter() < deadline and not (stop and stop.is_set()):
            start = time.perf_counter()
            if isinstance(ledger, Ledger):
                result = await ledger.rotate(claims, now=int(time.time()))
                if result.outcome is not Outcome.ROTATED or result.successor is None:
                    raise RuntimeError(f"rotation failed: {result.outcome}")
                claims = result.successor.as_claims()
            else:
                old = await ledger.rotate(jti, now=int(time.time()))
                if old.successor is None:
                    raise RuntimeError(f"rotation failed: {old.outcome}")
                jti = old.successor.jti
            latencies.append(time.perf_counter() - start)
            done += 1
        return done

    began = time.perf_counter()
    counts = await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[max(int(len(latencies) * 0.99) - 1, 0)] * 1000
    return sum(counts) / elapsed, p50, p99, sum(counts)


async def fill_legacy(conn: asyncpg.Connection, count: int) -> None:
    """``count`` families of the old ledger: a session row and a token row each."""
    await conn.execute(
        "INSERT INTO refresh_session (family_id, user_id, roles, created_at, last_used_at,"
        " absolute_expires_at, user_agent, ip)"
        " SELECT gen_random_uuid(), gen_random_uuid(), '{user}', now(), now(),"
        " now() + interval '30 days', 'bench', '127.0.0.1' FROM generate_series(1, $1)",
        count,
    )
    await conn.execute(
        "INSERT INTO refresh_token_family (jti, family_id, user_id, issued_at, expires_at)"
        " SELECT md5(family_id::text), family_id, user_id, now(), now() + interval '14 days'"
        " FROM refresh_session"
    )
    await conn.execute("VACUUM ANALYZE")


def make_ledger(pool: asyncpg.Pool, *, legacy: bool = False) -> Ledger | LegacyLedger:
    kind = LegacyLedger if legacy else Ledger
    return kind(pool, refresh_ttl=1209600, family_lifetime=2592000, grace_seconds=10)


async def throughput_section(
    sizes: list[int], levels: list[int], seconds: float, compare: bool
) -> list[str]:
    rows = [
        f"Rotations through the ledger's rotate(), {seconds:g} s per case",
        "",
        "| ledger | families in the table | connections | rotations/s | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    kinds = [False, True] if compare else [False]
    for size in sizes:
        for legacy in kinds:
            async with scratch_database() as dsn:
                conn = await asyncpg.connect(dsn)
                try:
                    await (fill_legacy(conn, size) if legacy else fill_families(conn, size))
                finally:
                    await conn.close()
                for workers in levels:
                    pool = await asyncpg.create_pool(dsn, min_size=workers, max_size=workers)
                    try:
                        ledger = make_ledger(pool, legacy=legacy)
                        rate, p50, p99, _ = await rotate_for(ledger, workers, seconds)
                    finally:
                        await pool.close()
                    name = "before" if legacy else "after"
                    rows.append(
                        f"| {name} | {size:,} | {workers} | {rate:,.0f} | {p50:.2f} | {p99:.2f} |"
                    )
                    print(rows[-1], flush=True)
    return rows


# -- prune -----------------------------------------------------------------------------------------


async def prune_section(expired: int, workers: int, seconds: float) -> list[str]:
    async with scratch_database() as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await fill_families(conn, expired, expired=True)
            await fill_families(conn, 10_000)
        finally:
            await conn.close()
        pool = await asyncpg.create_pool(dsn, min_size=workers + 1, max_size=workers + 1)
        try:
            ledger = make_ledger(pool)
            if not isinstance(ledger, Ledger):  # make_ledger builds the new ledger here
                raise TypeError(f"expected a Ledger, got {type(ledger).__name__}")
            rate0, _, p99_0, _ = await rotate_for(ledger, workers, seconds)
            stop = asyncio.Event()

            async def prune() -> float:
                started = time.perf_counter()
                report = await ledger.prune(retention=DAY, now=int(time.time()))
                stop.set()
                assert report.deleted == expired, report
                return time.perf_counter() - started

            took, (rate1, _, p99_1, _) = await asyncio.gather(
                prune(), rotate_for(ledger, workers, 3600, stop)
            )
        finally:
            await pool.close()
    return [
        f"Prune pass over {expired:,} expired families (batches of 1,000) with {workers}"
        " connections rotating",
        "",
        "| | time | rotations/s | rotation p99 ms |",
        "|---|---:|---:|---:|",
        f"| rotations alone ({seconds:g} s) | | {rate0:,.0f} | {p99_0:.2f} |",
        f"| during the prune pass | {took:,.1f} s | {rate1:,.0f} | {p99_1:.2f} |",
    ]


async def main(args: argparse.Namespace) -> int:
    sections = args.sections.split(",")
    out: list[list[str]] = []
    if "size" in sections:
        out.append(await size_section(args.families, args.rotations))
        print("\n".join(out[-1]) + "\n", flush=True)
    if "throughput" in sections:
        sizes = [int(x) for x in args.sizes.split(",")]
        levels = [int(x) for x in args.connections.split(",")]
        out.append(await throughput_section(sizes, levels, args.seconds, not args.no_compare))
        print("\n".join(out[-1]) + "\n", flush=True)
    if "prune" in sections:
        out.append(await prune_section(args.prune_families, 8, args.seconds))
        print("\n".join(out[-1]) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="size,throughput,prune")
    parser.add_argument("--families", type=int, default=10_000)
    parser.add_argument("--rotations", type=int, default=1_000_000)
    parser.add_argument("--sizes", default="10000,1000000")
    parser.add_argument("--connections", default="8,64")
    parser.add_argument("--prune-families", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--no-compare", action="store_true", help="skip the old ledger in the throughput section"
    )
    raise SystemExit(asyncio.run(main(parser.parse_args())))
