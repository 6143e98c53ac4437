"""What internal-token verification costs the backend: ``GET /v1/me`` under uvicorn with the real
``InternalAuthMiddleware``, against the same app with verification switched off **in this harness
only** (a middleware that injects a fixed principal instead). Real PostgreSQL, driven by ``wrk``.

Usage: ``python bench/backend_bench.py [--duration 5] [--connections 32]``.
Needs ``wrk`` (``apt-get install wrk``) and PostgreSQL (``BENCH_DATABASE_URL``, default the local
superuser); a throw-away database is created and dropped.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, cast

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from internal_auth import (
    HEADER,
    InternalAuthMiddleware,
    KeySet,
    Minter,
    Principal,
    TokenScope,
    generate_private_key,
    load_private_key,
)

from bench import wrk_tools
from bench.stack_bench import scratch_database
from tests.support.stack import free_port
from tokengate.migrate import migrate

GATEWAY_ID, BACKEND_ID = "tokengate-gateway", "tokengate-backend"


class FixedPrincipal:
    """Harness-only stand-in for the guard: every request is ``sub`` with scope user_request."""

    def __init__(self, app: Any, sub: str) -> None:
        self.app = app
        now = int(time.time())
        self.principal = Principal(
            sub=sub,
            scope=TokenScope.USER_REQUEST,
            roles=("user",),
            sid=None,
            jti="bench",
            iss=GATEWAY_ID,
            iat=now,
            exp=now + 3600,
        )

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})["principal"] = self.principal
        await self.app(scope, receive, send)


def serve(mode: str, port: int) -> None:
    import uvicorn
    from starlette.middleware import Middleware

    from backend.app import create_app
    from backend.settings import Settings

    key = load_private_key(os.environ["BENCH_PRIVATE_KEY"])
    settings = Settings(
        database_url=os.environ["DATABASE_URL"],
        public_keys=KeySet([key.public_key]),
        log_level="WARNING",
        # wrk repeats one token; single use would refuse all but the first request. Its own
        # cost is measured by bench/replay_cache_bench.py.
        replay_cache_size=0,
    )
    app = create_app(settings)
    if mode == "off":
        app.user_middleware = [
            Middleware(FixedPrincipal, sub=os.environ["BENCH_USER_ID"])
            if cast(object, m.cls) is InternalAuthMiddleware
            else m
            for m in app.user_middleware
        ]
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        http="httptools",
    )


def wait_ready(url: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("backend did not start")


async def create_user(dsn: str) -> str:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return str(
            await conn.fetchval(
                "INSERT INTO users (id, email, password_hash) VALUES (gen_random_uuid(), $1, 'x')"
                " RETURNING id",
                f"bench-{secrets.token_hex(4)}@example.test",
            )
        )
    finally:
        await conn.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--serve", choices=["on", "off"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port)
        return 0
    wrk_tools.require_wrk()
    admin = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    key = generate_private_key()
    minter = Minter(key, issuer=GATEWAY_ID, audience=BACKEND_ID, ttl=60)
    rows: list[tuple[str, wrk_tools.WrkResult]] = []
    with scratch_database(admin) as dsn:
        asyncio.run(migrate(dsn))
        user_id = asyncio.run(create_user(dsn))
        env = {
            **os.environ,
            "DATABASE_URL": dsn,
            "BENCH_PRIVATE_KEY": key.private_pem(),
            "BENCH_USER_ID": user_id,
        }
        for mode, label in (("on", "verification on"), ("off", "verification off (harness)")):
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, __file__, "--serve", mode, "--port", str(port)], env=env
            )
            try:
                url = f"http://127.0.0.1:{port}"
                wait_ready(url)
                for conns in (1, args.connections):
                    # bound to GET /v1/me and valid 60 s: minted right before each run
                    token = minter.mint(
                        sub=user_id, scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/me"
                    )
                    wrk_tools.run(
                        url + "/v1/me", connections=conns, duration=1, headers={HEADER: token}
                    )
                    result = wrk_tools.run(
                        url + "/v1/me",
                        connections=conns,
                        duration=args.duration,
                        headers={HEADER: token},
                    )
                    rows.append((f"{label}, c{conns}", result))
            finally:
                proc.terminate()
                proc.wait(10)
    print(f"{'backend GET /v1/me':<40}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    for label, r in rows:
        print(f"{label:<40}{r.rps:>9.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}")
    on, off = rows[1][1], rows[3][1]
    print(
        f"\nverification costs {(1 - on.rps / off.rps) * 100:.1f} % of throughput at "
        f"c{args.connections} ({on.rps:.0f} vs {off.rps:.0f} req/s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
