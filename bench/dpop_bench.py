"""DPoP against bearer through the whole stack: what a proof per request costs the gateway.

Starts the real stack (``tests/support/stack.py``: backend and gateway processes, a throw-away
database, real Redis), logs one user in twice (a bearer session, and a DPoP session bound to an
Ed25519 key, PUBLIC_ORIGIN set) and drives ``GET /api/v1/me`` through the gateway with ``wrk``:

- bearer: ``Authorization: Bearer`` (a fixed header);
- DPoP: ``Authorization: DPoP`` plus a fresh proof per request. Proofs are single use, so they
  are signed before each run (Ed25519, ``cryptography``) and fed to wrk one per request by a Lua
  script; a run that used more requests than proofs would show up as 401s and fails loudly.

For each run it reads the gateway process's CPU time (``/proc/<pid>/stat``, user + system) before
and after and divides by the requests served, and counts the replay-cache keys the run left in
Redis (``{prefix}dpop:jti:*``, one per claimed proof) to give Redis round trips per request.
Configurations run interleaved (bearer c1, DPoP c1, bearer cN, DPoP cN, ...) and the median round
by throughput is printed. Goal (issue 11): at most 150 µs of gateway CPU added per request.

Usage: ``python bench/dpop_bench.py [--duration 3] [--connections 32] [--rounds 3]``. Needs
``wrk``, PostgreSQL (``BENCH_DATABASE_URL``) and Redis (``BENCH_REDIS_URL``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import wrk_tools
from bench.stack_bench import PASSWORD, scratch_database
from bench.wrk_tools import WrkResult
from tests.support.dpop_proofs import ProofKey
from tests.support.stack import Stack, running_stack
from tokengate.migrate import migrate

# One proof per request, in the order wrk sends them; wrk -t1 runs one Lua state.
PROOFS_LUA = """
local proofs = {}
for line in io.lines("%s") do proofs[#proofs + 1] = line end
local i = 0
request = function()
  i = i + 1
  return wrk.format("GET", "/api/v1/me", {
    ["Authorization"] = "DPoP %s",
    ["DPoP"] = proofs[i] or "exhausted",
  })
end
"""
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    wrk: WrkResult
    cpu_us_per_request: float
    redis_per_request: float


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def login(stack: Stack, email: str, key: ProofKey | None, origin: str) -> str:
    headers = {"DPoP": key.proof("POST", f"{origin}/api/v1/auth/login")} if key else {}
    r = httpx.post(
        stack.gateway_url + "/api/v1/auth/login",
        json={"email": email, "password": PASSWORD},
        headers=headers,
        timeout=30,
    )
    r.raise_for_status()
    assert r.json()["token_type"] == ("DPoP" if key else "Bearer")
    return str(r.json()["access_token"])


def jti_keys(client: redis.Redis, prefix: str) -> int:
    return sum(1 for _ in client.scan_iter(match=f"{prefix}dpop:jti:*", count=5000))


def measure(
    stack: Stack,
    *,
    connections: int,
    duration: float,
    headers: dict[str, str] | None = None,
    script: Path | None = None,
    count_keys: tuple[redis.Redis, str] | None = None,
) -> Run:
    pid = stack.gateway_pid
    assert pid is not None
    before_keys = jti_keys(*count_keys) if count_keys else 0
    before = cpu_seconds(pid)
    result = wrk_tools.run(
        stack.gateway_url + "/api/v1/me",
        connections=connections,
        duration=duration,
        headers=headers,
        script=script,
    )
    cpu = cpu_seconds(pid) - before
    keys = (jti_keys(*count_keys) - before_keys) if count_keys else 0
    return Run(result, cpu / result.requests * 1e6, keys / result.requests)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--alg", default="EdDSA", choices=["EdDSA", "Ed25519", "ES256"])
    args = parser.parse_args()
    wrk_tools.require_wrk()
    admin_dsn = os.environ.get(
        "BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"tokengate-bench-{secrets.token_hex(4)}:"
    origin = "https://api.bench.test"
    results: dict[str, list[Run]] = {}

    with scratch_database(admin_dsn) as dsn, tempfile.TemporaryDirectory() as tmp:
        asyncio.run(migrate(dsn))
        with running_stack(
            database_url=dsn,
            redis_url=redis_url,
            redis_prefix=prefix,
            gateway_env={
                "PUBLIC_ORIGIN": origin,
                "LOGIN_RATE_LIMIT_IP": "1000000/minute",
                "LOGIN_RATE_LIMIT_ACCOUNT": "1000000/minute",
                "LOG_LEVEL": "WARNING",
            },
            backend_env={"LOG_LEVEL": "WARNING"},
        ) as stack:
            gateway_prefix = stack.gateway_env["REDIS_KEY_PREFIX"]
            rclient = redis.Redis.from_url(redis_url)
            email = f"bench-{secrets.token_hex(4)}@example.test"
            stack.create_user(email, PASSWORD)
            key = ProofKey(args.alg)
            bearer = login(stack, email, None, origin)
            bound = login(stack, email, key, origin)
            proofs_file = Path(tmp) / "proofs.txt"
            script = Path(tmp) / "dpop.lua"
            script.write_text(PROOFS_LUA % (proofs_file, bound))
            url = f"{origin}/api/v1/me"
            # a generous upper bound on what one run can send, so no proof is ever reused
            per_run = {1: 8000, args.connections: 20000}

            for _ in range(args.rounds):
                for conns in (1, args.connections):
                    name = f"c{conns}"
                    results.setdefault(f"bearer {name}", []).append(
                        measure(
                            stack,
                            connections=conns,
                            duration=args.duration,
                            headers={"Authorization": f"Bearer {bearer}"},
                        )
                    )
                    proofs_file.write_text(
                        "\n".join(
                            key.proof("GET", url, access_token=bound)
                            for _ in range(int(per_run[conns] * args.duration / 3))
                        )
                        + "\n"
                    )
                    results.setdefault(f"DPoP {name}", []).append(
                        measure(
                            stack,
                            connections=conns,
                            duration=args.duration,
                            script=script,
                            count_keys=(rclient, gateway_prefix),
                        )
                    )
            rclient.close()

    print(
        f"{'GET /api/v1/me, median of rounds':<34}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'gw CPU µs/req':>15}{'Redis/req':>11}"
    )
    medians: dict[str, Run] = {}
    for name, runs in results.items():
        ordered = sorted(runs, key=lambda r: r.wrk.rps)
        run = ordered[len(ordered) // 2]
        cpu = statistics.median(r.cpu_us_per_request for r in runs)
        medians[name] = Run(run.wrk, cpu, statistics.median(r.redis_per_request for r in runs))
        m = medians[name]
        print(
            f"{name:<34}{m.wrk.rps:>8.0f}{m.wrk.p50_ms:>9.2f}{m.wrk.p99_ms:>9.2f}"
            f"{m.cpu_us_per_request:>15.0f}{m.redis_per_request:>11.2f}"
        )
    worst = 0.0
    for conns in (1, args.connections):
        added = (
            medians[f"DPoP c{conns}"].cpu_us_per_request
            - medians[f"bearer c{conns}"].cpu_us_per_request
        )
        p50 = medians[f"DPoP c{conns}"].wrk.p50_ms - medians[f"bearer c{conns}"].wrk.p50_ms
        worst = max(worst, added)
        print(f"c{conns}: DPoP adds {added:.0f} µs gateway CPU per request, p50 {p50:+.2f} ms")
    print(f"goal: at most 150 µs added per request: {'met' if worst <= 150 else 'MISSED'}")
    return 0 if worst <= 150 else 1


if __name__ == "__main__":
    raise SystemExit(main())
