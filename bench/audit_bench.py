"""What the audit trail costs a login: ``POST /api/v1/auth/login`` through the real gateway app
(in process, ASGI) with ``AUDIT_ENABLED`` on and off, real PostgreSQL and Redis. The identity
service is a stand-in answering at once (its argon2 verification would hide the gateway's own
cost, which is what this measures): failed logins (the attack volume: one batched event each)
and successful ones (a ledger family plus an event).

Usage: ``python bench/audit_bench.py [--requests 400] [--rounds 3]``. Needs PostgreSQL
(``BENCH_DATABASE_URL``, default the local superuser; a throw-away database is created and
dropped) and Redis (``BENCH_REDIS_URL``). Rounds alternate on and off; p50/p99 over all rounds.
Goal (issue 28): p50 and p99 with auditing on within 1.2 x of off.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import time
import uuid
from contextlib import AsyncExitStack
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from internal_auth import generate_private_key

from bench.stack_bench import scratch_database
from gateway.app import create_app
from gateway.settings import Settings
from tokengate.migrate import migrate

USER_ID = str(uuid.uuid4())


def _identity(request: httpx.Request) -> httpx.Response:
    """The identity service's answers, instantly: a user, or the refused credential check."""
    if request.url.path == "/internal/auth/validate":
        if b"right-password" in request.content:
            return httpx.Response(
                200,
                json={"id": USER_ID, "email": "bench@example.test", "roles": ["user"]},
            )
        return httpx.Response(
            401,
            json={"error": {"code": "invalid_credentials", "message": "x"}},
            headers={"X-Audit-Subject": USER_ID, "X-Audit-Reason": "password"},
        )
    if request.url.path.startswith("/internal/lifecycle/epochs"):
        return httpx.Response(200, json={"epochs": [], "next": None})
    return httpx.Response(404, json={"error": {"code": "not_found", "message": "x"}})


async def _round(client: httpx.AsyncClient, password: str, count: int) -> list[float]:
    times = []
    for _ in range(count):
        started = time.perf_counter()
        response = await client.post(
            "/api/v1/auth/login", json={"email": "bench@example.test", "password": password}
        )
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code in (200, 401), response.text
    return times


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(dsn: str, redis_url: str, requests: int, rounds: int) -> dict[str, list[float]]:
    await migrate(dsn)
    key = generate_private_key()
    base = {
        "DATABASE_URL": dsn,
        "REDIS_URL": redis_url,
        "REDIS_KEY_PREFIX": f"tgbench:{secrets.token_hex(4)}:",
        "BACKEND_URL": "http://backend.internal",
        "JWT_ACCESS_SECRET": secrets.token_urlsafe(32),
        "JWT_REFRESH_SECRET": secrets.token_urlsafe(32),
        "INTERNAL_JWT_PRIVATE_KEY": key.private_pem(),
        "LOGIN_RATE_LIMIT_IP": "1000000/minute",
        "LOGIN_RATE_LIMIT_ACCOUNT": "1000000/minute",
        "LOG_LEVEL": "WARNING",
    }
    results: dict[str, list[float]] = {}
    async with AsyncExitStack() as stack:
        clients = {}
        for audit in ("on", "off"):
            settings = Settings.from_env(
                {**base, "AUDIT_ENABLED": "true" if audit == "on" else "false"}
            )
            app = create_app(settings, backend_transport=httpx.MockTransport(_identity))
            await stack.enter_async_context(app.router.lifespan_context(app))
            clients[audit] = await stack.enter_async_context(
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=app, client=("203.0.113.9", 4000)),
                    base_url="https://gateway.test",
                )
            )
        for kind, password in (("failed", "wrong-password"), ("succeeded", "right-password")):
            for audit in ("on", "off"):  # warm-up
                await _round(clients[audit], password, 50)
            for _ in range(rounds):
                for audit in ("on", "off"):
                    results.setdefault(f"{kind} {audit}", []).extend(
                        await _round(clients[audit], password, requests)
                    )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    admin = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    with scratch_database(admin) as dsn:
        results = asyncio.run(run(dsn, redis_url, args.requests, args.rounds))
    print("| login, in-process gateway | requests | p50 ms | p99 ms | mean ms |")
    print("|---|---:|---:|---:|---:|")
    for name, values in results.items():
        print(
            f"| {name} | {len(values)} | {_pct(values, 0.5):.2f} | {_pct(values, 0.99):.2f}"
            f" | {statistics.fmean(values):.2f} |"
        )
    worst = 0.0
    for kind in ("failed", "succeeded"):
        on, off = results[f"{kind} on"], results[f"{kind} off"]
        for q in (0.5, 0.99):
            ratio = _pct(on, q) / _pct(off, q)
            worst = max(worst, ratio)
            print(f"{kind} p{int(q * 100)} on/off: {ratio:.2f}")
    return 0 if worst <= 1.2 else 1


if __name__ == "__main__":
    raise SystemExit(main())
