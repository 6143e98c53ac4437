"""The whole stack under load: gateway and backend under uvicorn (separate processes, as in
production), real PostgreSQL and Redis, driven by ``wrk``. One run prints:

1. ``GET /api/v1/me`` through the gateway (full path: access token, revocation check, internal
   token minted, proxied, backend verifies it and reads PostgreSQL) at concurrency 1 and N;
2. the same route on the backend directly with a valid internal token (the floor);
3. the gateway's added latency at concurrency 1 (p50 and p99, gateway minus direct);
4. proxied p99 at concurrency N while a burst of logins (argon2 in the backend) runs;
5. the per-user proxy limit's cost (``PROXY_RATE_LIMIT_USER`` on, limit never reached).

Usage: ``python bench/stack_bench.py [--duration 3] [--connections 32] [--rounds 3]``.
The machine these goals are for is shared and noisy, so each configuration is measured in
interleaved rounds and the median round is printed (the per-user limit runs on a second gateway
process next to the first, so the two are measured seconds apart, not across a restart).
Needs ``wrk`` (``apt-get install wrk``), PostgreSQL (``BENCH_DATABASE_URL``, default the local
superuser) and Redis (``BENCH_REDIS_URL``). A throw-away database is created and dropped.
Goals (issue 5): >= 2,500 req/s at c32, < 1 ms added p50 at c1, login burst <= 2x proxied p99.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import wrk_tools
from bench.wrk_tools import WrkResult
from tests.support.stack import Stack, running_stack
from tokengate.migrate import migrate

PASSWORD = "bench correct horse battery staple"
LOGIN_LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"email":"%s","password":"%s"}'
"""


@contextlib.contextmanager
def scratch_database(admin_dsn: str) -> Iterator[str]:
    name = f"tokengate_bench_{secrets.token_hex(4)}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(admin_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    base, _, _ = admin_dsn.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def login(stack: Stack, email: str) -> str:
    r = httpx.post(
        stack.gateway_url + "/api/v1/auth/login",
        json={"email": email, "password": PASSWORD},
        timeout=30,
    )
    r.raise_for_status()
    return str(r.json()["access_token"])


def median(results: list[WrkResult]) -> WrkResult:
    """The round with the median throughput (one whole run, not a mix of runs)."""
    ordered = sorted(results, key=lambda r: r.rps)
    return ordered[len(ordered) // 2]


def row(name: str, r: WrkResult) -> str:
    return f"{name:<46}{r.rps:>9.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--login-connections", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    wrk_tools.require_wrk()
    admin_dsn = os.environ.get(
        "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    dur, conns = args.duration, args.connections
    me_path = "/v1/me"
    lines: list[str] = []

    with scratch_database(admin_dsn) as dsn:
        asyncio.run(migrate(dsn))
        with running_stack(
            database_url=dsn,
            redis_url=redis_url,
            redis_prefix=f"tokengate-bench-{secrets.token_hex(4)}:",
            gateway_env={
                "LOGIN_RATE_LIMIT_IP": "1000000/minute",
                "LOGIN_RATE_LIMIT_ACCOUNT": "1000000/minute",
                "LOG_LEVEL": "WARNING",
            },
            # The direct floor repeats one internal token with wrk, which single use would
            # refuse; the cache's own cost is in bench/replay_cache_bench.py.
            backend_env={"LOG_LEVEL": "WARNING", "INTERNAL_TOKEN_REPLAY_CACHE_SIZE": "0"},
        ) as stack:
            email = f"bench-{secrets.token_hex(4)}@example.test"
            stack.create_user(email, PASSWORD)
            token = login(stack, email)
            user_id = httpx.get(
                stack.gateway_url + "/api/v1/me", headers={"Authorization": f"Bearer {token}"}
            ).json()["id"]
            gw_url = stack.gateway_url + "/api/v1/me"
            gw_headers = {"Authorization": f"Bearer {token}"}

            def direct(c: int) -> WrkResult:
                # Bound to GET /v1/me and valid 60 s: minted right before each run.
                internal = stack.internal_token(sub=user_id, method="GET", path=me_path)
                return wrk_tools.run(
                    stack.backend_url + me_path,
                    connections=c,
                    duration=dur,
                    headers={"X-Internal-Auth": internal},
                )

            def gateway(c: int, url: str = gw_url) -> WrkResult:
                return wrk_tools.run(url, connections=c, duration=dur, headers=gw_headers)

            # The machine is shared and noisy: configurations are measured in interleaved
            # rounds (A, B, A, B, ...) and the median round is reported for each.
            results: dict[str, list[WrkResult]] = {}

            def record(name: str, result: WrkResult) -> None:
                results.setdefault(name, []).append(result)

            with stack.extra_gateway(PROXY_RATE_LIMIT_USER="100000000/minute") as limited_url:
                limited_url += "/api/v1/me"
                for url in (gw_url, limited_url):
                    wrk_tools.run(url, connections=4, duration=1, headers=gw_headers)  # warm
                direct(4)
                for _ in range(args.rounds):
                    record("be1", direct(1))
                    record("gw1", gateway(1))
                    record("lim1", gateway(1, limited_url))
                    record("ben", direct(conns))
                    record("gwn", gateway(conns))
                    record("limn", gateway(conns, limited_url))

            with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
                lua.write(LOGIN_LUA % (email, PASSWORD))
            try:
                for _ in range(args.rounds):
                    record("quiet", gateway(conns))
                    logins = wrk_tools.start(
                        stack.gateway_url + "/api/v1/auth/login",
                        connections=args.login_connections,
                        duration=dur + 1,
                        script=Path(lua.name),
                    )
                    time.sleep(0.5)
                    record("burst", gateway(conns))
                    record("logins", wrk_tools.finish(logins))
                    # Let the backend finish the password checks still in flight, so the next
                    # quiet baseline is quiet.
                    time.sleep(2)
            finally:
                os.unlink(lua.name)

    m = {name: median(rs) for name, rs in results.items()}
    header = f"GET /v1/me, {dur:g} s per run, median of {args.rounds} interleaved rounds"
    lines.append(header)
    lines.append(f"{'':<46}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    lines.append(row("backend direct, c1", m["be1"]))
    lines.append(row("gateway (full path), c1", m["gw1"]))
    lines.append(row(f"backend direct, c{conns}", m["ben"]))
    lines.append(row(f"gateway (full path), c{conns}", m["gwn"]))
    lines.append(row(f"gateway, c{conns}, quiet (burst baseline)", m["quiet"]))
    lines.append(row(f"gateway, c{conns}, during login burst", m["burst"]))
    lines.append(row(f"  (logins, c{args.login_connections}, same time)", m["logins"]))
    lines.append(row("gateway + per-user limit, c1", m["lim1"]))
    lines.append(row(f"gateway + per-user limit, c{conns}", m["limn"]))
    lines.append("")
    gw1, be1, gwn, ben = m["gw1"], m["be1"], m["gwn"], m["ben"]
    lines.append(
        f"gateway added latency at c1: p50 {gw1.p50_ms - be1.p50_ms:.3f} ms, "
        f"p99 {gw1.p99_ms - be1.p99_ms:.3f} ms (goal: p50 < 1 ms)"
    )
    lines.append(
        f"req/s through the gateway at c{conns}: {gwn.rps:.0f} (goal >= 2,500); "
        f"backend direct {ben.rps:.0f}, ratio {gwn.rps / ben.rps:.2f}"
    )
    quiet_p99 = sorted(r.p99_ms for r in results["quiet"])[args.rounds // 2]
    burst_p99 = sorted(r.p99_ms for r in results["burst"])[args.rounds // 2]
    lines.append(
        f"proxied p99 during login burst (median p99 of the rounds): {burst_p99:.2f} ms vs "
        f"{quiet_p99:.2f} ms quiet = {burst_p99 / quiet_p99:.2f}x (goal <= 2x); "
        f"throughput {m['burst'].rps:.0f} vs {m['quiet'].rps:.0f} req/s"
    )
    lim1, limn = m["lim1"], m["limn"]
    lines.append(
        f"per-user limit cost: c1 p50 {lim1.p50_ms - gw1.p50_ms:+.3f} ms, "
        f"c{conns} req/s {limn.rps:.0f} vs {gwn.rps:.0f} ({(limn.rps / gwn.rps - 1) * 100:+.1f} %)"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
