"""Proxied requests per second with 1 and 2 gateway workers, side by side (issue 12).

``tokengate gateway --workers N`` (metrics on: ``METRICS_PORT`` set) runs in front of
``bench/proxy_client_bench.py``'s trivial upstream (a fixed 72-byte JSON, one uvicorn process),
so the figure is the gateway's, not the real backend's; ``wrk -t1 -c32 GET /api/v1/me`` with a
valid bearer token. Rounds alternate (1 worker, 2 workers, 1, ...) so drift on this shared machine
hits both. For each run: requests per second, p99, and the CPU the whole gateway (parent and
workers, from ``/proc``) spent per request.

It also times the metrics calls one proxied request makes (the request counter with its route
template lookup, and the two-part latency histogram), in process, to show what metrics cost.

Usage: ``python bench/workers_bench.py [--rounds 3] [--duration 5] [--connections 32]``
(needs ``wrk``; the gateway's lifespan needs PostgreSQL and Redis: ``BENCH_DATABASE_URL``,
``BENCH_REDIS_URL``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
import timeit
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import wrk_tools
from bench.cpu_bench import cpu_seconds
from bench.proxy_client_bench import free_port, gateway_environment, serve, wait_port
from bench.stack_bench import scratch_database
from gateway.auth.tokens import TokenService
from gateway.settings import Settings
from tokengate.migrate import migrate

HERE = Path(__file__).resolve().parent


def tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the supervisor and its workers)."""
    out = [pid]
    for task in Path(f"/proc/{pid}/task").iterdir():
        children = (task / "children").read_text().split()
        for child in children:
            out += tree(int(child))
    return out


def tree_cpu(pid: int) -> float:
    total = 0.0
    for p in tree(pid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(p)
    return total


@contextlib.contextmanager
def gateway(workers: int, env: dict[str, str]) -> Iterator[tuple[int, str]]:
    port = free_port()
    cmd = [sys.executable, "-m", "tokengate.cli", "gateway", "--port", str(port)]
    cmd += ["--workers", str(workers)]
    proc = subprocess.Popen(
        cmd,
        env={**env, "METRICS_PORT": str(free_port())},
        cwd=HERE.parent,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, timeout=60)
        time.sleep(2 * workers)  # every worker up, not just the first
        yield proc.pid, f"http://127.0.0.1:{port}/api/v1/me"
    finally:
        proc.terminate()
        proc.wait(20)


def run(pid: int, url: str, token: str, connections: int, duration: int) -> dict[str, float]:
    before = tree_cpu(pid)
    result = wrk_tools.run(
        url,
        connections=connections,
        duration=duration,
        headers={"Authorization": f"Bearer {token}"},
    )
    used = tree_cpu(pid) - before
    if result.errors:
        raise RuntimeError(f"wrk saw {result.errors} socket errors")
    return {"rps": result.rps, "p99": result.p99_ms, "cpu_us": used / result.requests * 1e6}


def metrics_cost() -> float:
    """µs of the metrics calls one proxied request makes."""
    from servicekit.metrics import RequestCounter, RouteTemplates

    from gateway import metrics

    counter = RequestCounter(
        None, routes=RouteTemplates(metrics.PROXIED_ROUTES), counter=metrics.REQUESTS
    )
    started = time.perf_counter()

    def one() -> None:
        counter.count("/api/v1/notes/8c4b0f6e-2f6b-4a57-9d0e-2d1c2e0d6a11", "GET", 200)
        metrics.proxy_timing(started, 0.001)

    n = 200_000
    return min(timeit.repeat(one, number=n, repeat=5)) / n * 1e6


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    wrk_tools.require_wrk()

    up_port = free_port()
    admin_dsn = os.environ.get(
        "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    with serve("upstream", up_port), scratch_database(admin_dsn) as dsn:
        # the gateway rebuilds its revocation set from a migrated ledger at start-up
        asyncio.run(migrate(dsn))
        env = {
            **gateway_environment(f"http://127.0.0.1:{up_port}", "WARNING"),
            "DATABASE_URL": dsn,
        }
        token, _ = TokenService(Settings.from_env(env)).issue_access(
            sub="00000000-0000-0000-0000-000000000001", sid="bench", roles=["user"]
        )
        print(
            f"cpus={os.cpu_count()} wrk -t1 -c{args.connections} -d{args.duration}s "
            "GET /api/v1/me through the gateway to a trivial upstream, metrics on"
        )
        figures: dict[int, list[dict[str, float]]] = {1: [], 2: []}
        print(f"{'round':<6}{'workers':>8}{'req/s':>10}{'p99 ms':>9}{'CPU µs/req':>12}")
        for n in range(1, args.rounds + 1):
            for workers in (1, 2):
                with gateway(workers, env) as (pid, url):
                    run(pid, url, token, 4, 1)  # warm
                    fig = run(pid, url, token, args.connections, args.duration)
                figures[workers].append(fig)
                print(
                    f"{n:<6}{workers:>8}{fig['rps']:>10.0f}{fig['p99']:>9.1f}{fig['cpu_us']:>12.0f}"
                )
        for workers, runs in figures.items():
            print(
                f"{'median':<6}{workers:>8}"
                f"{statistics.median(r['rps'] for r in runs):>10.0f}"
                f"{statistics.median(r['p99'] for r in runs):>9.1f}"
                f"{statistics.median(r['cpu_us'] for r in runs):>12.0f}"
            )
    print(f"metrics calls per proxied request, in process: {metrics_cost():.2f} µs")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
