"""Refresh rotations per second against the real PostgreSQL, through ``gateway.sessions.ledger``.

Creates a throw-away database, applies every migration in ``db/``, then runs rotation
chains (each worker rotates its own family's newest token again and again, as clients do) for a
few seconds at several concurrency levels, and prints a table. The database is dropped at the end.

    .venv/bin/python bench/rotate_bench.py [--seconds 3] [--concurrency 1,4,8,16]

TOKENGATE_BENCH_PG sets the admin DSN (default: postgres on 127.0.0.1:5432).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import time
import uuid

import asyncpg

from gateway.sessions.ledger import Ledger, Outcome
from tokengate.migrate import migrate

ADMIN_DSN = os.environ.get("TOKENGATE_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
GOAL = 1000.0


async def run_level(ledger: Ledger, workers: int, seconds: float) -> tuple[float, float, float]:
    stop = time.perf_counter() + seconds
    latencies: list[float] = []

    async def worker() -> int:
        now = int(time.time())
        issued = await ledger.create_family(
            user_id=str(uuid.uuid4()), roles=["user"], user_agent="bench", ip="127.0.0.1", now=now
        )
        claims, done = issued.as_claims(), 0
        while time.perf_counter() < stop:
            start = time.perf_counter()
            result = await ledger.rotate(claims, now=int(time.time()))
            latencies.append(time.perf_counter() - start)
            if result.outcome is not Outcome.ROTATED or result.successor is None:
                raise RuntimeError(f"rotation failed: {result.outcome}")
            claims = result.successor.as_claims()
            done += 1
        return done

    began = time.perf_counter()
    counts = await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
    return sum(counts) / elapsed, p50, p99


async def main(seconds: float, levels: list[int]) -> int:
    name = f"tokengate_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = f"{ADMIN_DSN.rpartition('/')[0]}/{name}"
    best = 0.0
    try:
        await migrate(dsn)
        pool = await asyncpg.create_pool(dsn, min_size=max(levels), max_size=max(levels))
        ledger = Ledger(pool, refresh_ttl=1209600, family_lifetime=2592000, grace_seconds=10)
        print(f"| concurrency | rotations/s | p50 ms | p99 ms |  ({seconds:g} s per level)")
        print("|---:|---:|---:|---:|")
        for workers in levels:
            rate, p50, p99 = await run_level(ledger, workers, seconds)
            best = max(best, rate)
            print(f"| {workers} | {rate:,.0f} | {p50:.2f} | {p99:.2f} |")
        await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    print(f"best: {best:,.0f} rotations/s (goal {GOAL:,.0f})")
    return 0 if best >= GOAL else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", default="1,4,8,16")
    args = parser.parse_args()
    levels = [int(x) for x in args.concurrency.split(",")]
    raise SystemExit(asyncio.run(main(args.seconds, levels)))
