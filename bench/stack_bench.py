"""The whole stack under load: gateway and backend under uvicorn (separate processes, as in
production), real PostgreSQL and Redis, driven by ``wrk``. One run prints:

1. ``GET /api/v1/me`` through the gateway (full path: access token, revocation check, internal
   token minted, proxied, backend verifies it and reads PostgreSQL) at concurrency 1 and N;
2. the same route on the backend directly with a valid internal token (the floor);
3. the gateway's added latency at concurrency 1 (p50 and p99, gateway minus direct);
4. proxied p99 at concurrency N while a burst of logins (argon2 in the backend) runs;
5. the per-user proxy limit's cost (``PROXY_RATE_LIMIT_USER`` on, limit never reached).

Usage: ``python bench/stack_bench.py [--duration 5] [--connections 32]``.
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


def row(name: str, r: WrkResult) -> str:
    return f"{name:<46}{r.rps:>9.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--login-connections", type=int, default=4)
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
            backend_env={"LOG_LEVEL": "WARNING"},
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

            def gateway(c: int) -> WrkResult:
                return wrk_tools.run(gw_url, connections=c, duration=dur, headers=gw_headers)

            wrk_tools.run(gw_url, connections=4, duration=1, headers=gw_headers)  # warm pools
            direct(4)
            gw1, be1 = gateway(1), direct(1)
            gwn, ben = gateway(conns), direct(conns)

            with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as lua:
                lua.write(LOGIN_LUA % (email, PASSWORD))
            try:
                logins = wrk_tools.start(
                    stack.gateway_url + "/api/v1/auth/login",
                    connections=args.login_connections,
                    duration=dur + 1,
                    script=Path(lua.name),
                )
                time.sleep(0.5)
                burst = gateway(conns)
                login_r = wrk_tools.finish(logins)
            finally:
                os.unlink(lua.name)

            stack.gateway_env["PROXY_RATE_LIMIT_USER"] = "100000000/minute"
            stack.restart_gateway()
            wrk_tools.run(gw_url, connections=4, duration=1, headers=gw_headers)
            lim1, limn = gateway(1), gateway(conns)

    lines.append(
        f"{'GET /v1/me, ' + str(dur) + ' s per run':<46}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}"
    )
    lines.append(row("backend direct, c1", be1))
    lines.append(row("gateway (full path), c1", gw1))
    lines.append(row(f"backend direct, c{conns}", ben))
    lines.append(row(f"gateway (full path), c{conns}", gwn))
    lines.append(row(f"gateway, c{conns}, during login burst", burst))
    lines.append(row(f"  (logins, c{args.login_connections}, same time)", login_r))
    lines.append(row("gateway + per-user limit, c1", lim1))
    lines.append(row(f"gateway + per-user limit, c{conns}", limn))
    lines.append("")
    added_p50 = gw1.p50_ms - be1.p50_ms
    added_p99 = gw1.p99_ms - be1.p99_ms
    lines.append(f"gateway added latency at c1: p50 {added_p50:.3f} ms, p99 {added_p99:.3f} ms")
    lines.append(f"req/s through the gateway at c{conns}: {gwn.rps:.0f} (goal >= 2,500)")
    ratio = burst.p99_ms / gwn.p99_ms if gwn.p99_ms else float("nan")
    lines.append(
        f"proxied p99 during login burst: {burst.p99_ms:.2f} ms = {ratio:.2f}x (goal <= 2x)"
    )
    lines.append(
        f"per-user limit cost: c1 p50 +{lim1.p50_ms - gw1.p50_ms:.3f} ms, "
        f"c{conns} req/s {limn.rps:.0f} vs {gwn.rps:.0f} ({(limn.rps / gwn.rps - 1) * 100:+.1f} %)"
    )
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
