"""Memory and time of internal_auth's single-use jti cache at the load measured in this folder.

The cache holds one entry per token verified in the last ``lifetime + leeway`` seconds. At the
backend's measured peak (``--rate``, req/s, bench/README.md) and the default 30 s lifetime + 5 s
leeway that is ``rate x 35`` live entries; the bench also fills the cache to its default bound.

    .venv/bin/python bench/replay_cache_bench.py [--rate 2700] [--window 35]
"""

from __future__ import annotations

import argparse
import gc
import secrets
import time
import tracemalloc

from internal_auth.replay import DEFAULT_MAX_ENTRIES, ReplayCache


def memory(entries: int, window: float) -> float:
    """MiB held by a cache of ``entries`` live jti values (the jti strings included)."""
    now = 1_000_000.0
    cache = ReplayCache(max_entries=entries, clock=lambda: now)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(entries):
        # jti as Minter makes it; arrivals spread evenly over the window, expiries likewise
        cache.use(secrets.token_urlsafe(16), now + window * (i + 1) / entries)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(cache) == entries
    return held / 2**20


def use_cost(entries: int, window: float) -> float:
    """µs per ``use`` in steady state: the cache full of live entries, one expiring per call."""
    clock = [0.0]
    cache = ReplayCache(max_entries=entries + 1, clock=lambda: clock[0])
    step = window / entries
    for i in range(entries):
        cache.use(secrets.token_urlsafe(16), window + i * step)
    jtis = [secrets.token_urlsafe(16) for _ in range(entries)]
    started = time.perf_counter()
    for i, jti in enumerate(jtis):
        clock[0] = window + i * step
        cache.use(jti, 2 * window + i * step)
    return (time.perf_counter() - started) / entries * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=2700, help="verified tokens per second")
    parser.add_argument("--window", type=float, default=35.0, help="lifetime + leeway, seconds")
    args = parser.parse_args()
    at_load = int(args.rate * args.window)
    print(f"{'live entries':>14} {'MiB':>8} {'bytes/entry':>12} {'µs/use':>8}")
    for entries in (at_load, DEFAULT_MAX_ENTRIES):
        mib, us = memory(entries, args.window), use_cost(entries, args.window)
        print(f"{entries:>14,} {mib:>8.1f} {mib * 2**20 / entries:>12.0f} {us:>8.2f}")


if __name__ == "__main__":
    main()
