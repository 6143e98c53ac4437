"""Failover under load (issue 29): the Redis master dies under Sentinel, then the PostgreSQL
primary stops and its standby is promoted, while steady traffic flows through two gateways.

The topologies are built from the machine's own binaries (:mod:`tests.support.ha`): two
``redis-server``s and three sentinels (``down-after-milliseconds`` 1000), a PostgreSQL primary
and a ``pg_basebackup -R`` standby. Both services and every CLI command use
``REDIS_URL=redis+sentinel://...`` (the sentinels with their own password) and a
``DATABASE_URL`` that lists both PostgreSQL hosts with ``target_session_attrs=read-write``; the
gateways run with their default timeouts. The traffic is the fault suite's own
(``tests/faults/test_faults.py``: proxied requests, notes, logins, refreshes, revocations,
password changes, readiness).

Phases, each timed from its event and printed:

1. ``redis-failover``: SIGKILL to the Redis master. Every kind of request is normal again within
   :data:`REDIS_LIMIT` of its death; 5xx only inside that window, never a 500.
2. ``redis-rejoin``: the killed master comes back empty, believing itself a master, and the
   sentinels make it a replica. No request may fail meanwhile (nothing reads or writes it: no
   client sees READONLY).
3. ``postgres-failover``: fast shutdown of the primary, the standby promoted 2 s later. Every kind
   of request is normal again within :data:`POSTGRES_LIMIT` of the promotion.

After each failover: ``/readyz`` went unready and came back by itself, and names the new master
and host; a logout on gateway A kills its access token on gateway B. At the end: no refresh family
was revoked as reuse (a rotation lost with the old primary is a plain 401), and the login rate
limit read its counts from the master only, never from the replica.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import asyncpg
import httpx
import pytest
from servicekit import redis_url

from gateway.dpop._proof import Proof, ReplayCache
from gateway.errors import ServiceUnavailable
from tests.faults.test_faults import (
    ORIGIN,
    PASSWORD,
    PROBES,
    UNLIMITED,
    Phase,
    Sample,
    Traffic,
    World,
    _denied_everywhere,
    create_users,
)
from tests.support.ha import SENTINEL_PASSWORD, PostgresPair, SentinelSet
from tests.support.stack import running_stack
from tokengate.migrate import migrate

pytestmark = pytest.mark.fault

REDIS_LIMIT = 30.0  # seconds from the master's death to normal answers everywhere (issue 29)
POSTGRES_LIMIT = 40.0  # seconds from the standby's promotion


@pytest.fixture(scope="module")
def ha() -> Iterator[tuple[World, SentinelSet, PostgresPair]]:
    root = Path(tempfile.mkdtemp(prefix="tokengate-failover-"))
    sentinels = SentinelSet(root / "redis")
    pair = PostgresPair()
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            redis_up = pool.submit(sentinels.start)
            pair.init()
            pair.start(0)
            asyncio.run(migrate(pair.dsn()))
            pair.make_standby()
            redis_up.result()
        cheap_argon2 = {"ARGON2_TIME_COST": "1", "ARGON2_MEMORY_KIB": "8192"}
        sentinel_env = {"REDIS_SENTINEL_PASSWORD": SENTINEL_PASSWORD}
        with running_stack(
            database_url=pair.multi_dsn("postgres"),
            redis_url=sentinels.url,
            redis_prefix="failover:",
            backend_env={
                **cheap_argon2,
                **sentinel_env,
                "DATABASE_URL": pair.multi_dsn("tokengate_backend"),
                "REDIS_URL": sentinels.url,
            },
            gateway_env={
                **sentinel_env,
                "DATABASE_URL": pair.multi_dsn("tokengate_gateway"),
                "CORS_ALLOWED_ORIGINS": ORIGIN,
                **UNLIMITED,
            },
        ) as stack:
            users = create_users(stack, "failover.example.test")
            with stack.extra_gateway() as second:
                world = World(
                    stack=stack,
                    gateways=[stack.gateway_url, second],
                    # the traffic reads neither; this module drives its own servers
                    postgres=cast(Any, pair),
                    redis=cast(Any, sentinels),
                    users=users,
                    redis_prefix=stack.gateway_env["REDIS_KEY_PREFIX"],
                    logdir=stack.logdir,
                )
                yield world, sentinels, pair
    finally:
        sentinels.stop()
        pair.close()
        shutil.rmtree(root, ignore_errors=True)


def _window(samples: list[Sample], since: float) -> str:
    """When the 5xx answers (and answers that never came) were, in seconds from ``since``."""
    bad = [s for s in samples if s.status is None or s.status >= 500]
    if not bad:
        return "no 5xx"
    first, last = min(s.start for s in bad) - since, max(s.end for s in bad) - since
    return f"5xx from {first:+.1f} s to {last:+.1f} s ({len(bad)} answers)"


async def _until_recovered(
    traffic: Traffic, first: int, name: str, event: float, limit: float
) -> Phase:
    """Wait (at most ``limit`` after ``event``) until every probe is normal again, then a little
    more so the recovery is seen to hold."""
    deadline = event + limit
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        probe = Phase(name, traffic.samples[first:], event)
        kinds = probe.recoveries()
        if float("inf") not in kinds.values() and time.monotonic() - event > 1.0:
            break
    await asyncio.sleep(1.5)
    return Phase(name, traffic.samples[first:], event)


async def _readyz(client: httpx.AsyncClient, gateways: list[str]) -> list[dict[str, Any]]:
    return [(await client.get(g + "/readyz")).json() for g in gateways]


async def _logout_on_a_kills_on_b(
    traffic: Traffic, client: httpx.AsyncClient, gateways: list[str], email: str
) -> bool:
    session = await traffic.login(client, gateways[0], email)
    if session is None:
        return False
    client.cookies.clear()
    out = await client.post(
        gateways[0] + "/api/v1/auth/logout", headers={"Cookie": f"tg_refresh={session.refresh}"}
    )
    return out.status_code == 204 and await _denied_everywhere(
        client, gateways, session, within=2.0
    )


def _check_phase(phase: Phase, limit: float, problems: list[str], *, readyz_dips: bool) -> None:
    problems.extend(phase.problems(recovery=False))
    recoveries = phase.recoveries()
    slow = {k: v for k, v in recoveries.items() if k in PROBES and v > limit}
    if slow:
        problems.append(f"{phase.name}: recovery over {limit:.0f} s: {slow}")
    late = [
        s
        for s in phase.samples
        if (s.status is None or s.status >= 500) and s.start > phase.returned_at + limit
    ]
    if late:
        problems.append(f"{phase.name}: {len(late)} 5xx after the {limit:.0f} s window")
    readyz = [s for s in phase.samples if s.kind == "readyz"]
    if readyz_dips and not any(s.status == 503 for s in readyz):
        problems.append(f"{phase.name}: /readyz never went unready; was anything down?")
    if readyz and readyz[-1].status != 200:
        problems.append(f"{phase.name}: /readyz did not come back by itself")


def test_redis_and_postgres_failover_under_load(
    ha: tuple[World, SentinelSet, PostgresPair], capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(_scenario(*ha, capsys))


async def _scenario(
    world: World, sentinels: SentinelSet, pair: PostgresPair, capsys: pytest.CaptureFixture[str]
) -> None:
    gateways = world.gateways
    problems: list[str] = []
    lines: list[str] = [""]
    phases: list[tuple[Phase, float]] = []
    async with httpx.AsyncClient(timeout=15.0, headers={"Origin": ORIGIN}) as client:
        before = await _readyz(client, gateways)
        first_master = sentinels.master_port()
        assert first_master is not None
        for body in before:
            assert body["status"] == "ready", body
            in_use = {k: v for k, v in body["in_use"].items() if k != "redis_master_id"}
            assert in_use == {
                "postgres_host": 0,
                "redis_master": f"127.0.0.1:{first_master}",
            }, body
        traffic = Traffic(world)
        async with traffic.running():
            # 1. the Redis master dies
            await asyncio.sleep(1.0)
            start = len(traffic.samples)
            old = sentinels.by_port(first_master)
            await asyncio.to_thread(old.kill)
            died = time.monotonic()
            phase = await _until_recovered(traffic, start, "redis-failover", died, REDIS_LIMIT)
            phases.append((phase, REDIS_LIMIT))
            lines.append(f"redis-failover: {_window(phase.samples, died)} after the master's death")
            new_master = sentinels.master_port()
            if new_master in (None, first_master):
                problems.append(f"redis-failover: the sentinels name {new_master} as master")
            for body in await _readyz(client, gateways):
                if body.get("in_use", {}).get("redis_master") != f"127.0.0.1:{new_master}":
                    problems.append(f"redis-failover: /readyz names {body.get('in_use')}")
            if not await _logout_on_a_kills_on_b(traffic, client, gateways, world.users["notes"]):
                problems.append("redis-failover: a logout on A did not kill the token on B")

            # 2. the killed master comes back (empty, a master in its own eyes) and is made a
            # replica by the sentinels, with traffic running: nobody may notice
            start = len(traffic.samples)
            await asyncio.to_thread(sentinels.restart, old)
            back = time.monotonic()
            while sentinels.role(old.port) != "slave" and time.monotonic() < back + 30.0:
                await asyncio.sleep(0.2)
            rejoined = time.monotonic() - back
            if sentinels.role(old.port) != "slave":
                problems.append("redis-rejoin: the old master never became a replica")
            await asyncio.sleep(2.0)
            rejoin = Phase("redis-rejoin", traffic.samples[start:], back)
            problems.extend(rejoin.problems(recovery=False))
            abnormal = [
                s for s in rejoin.samples if not s.normal and (s.status, s.kind) != (401, "refresh")
            ]
            if abnormal:
                problems.append(
                    f"redis-rejoin: {len(abnormal)} answers not normal, e.g. {abnormal[0]!r}"
                )
            if any("READONLY" in repr(s.body) for s in traffic.samples):
                problems.append("a client saw READONLY")
            lines.append(
                f"redis-rejoin: replica again {rejoined:.1f} s after its restart, "
                + _window(rejoin.samples, back)
            )

            # 3. the PostgreSQL primary stops; its standby is promoted 2 s later
            await asyncio.sleep(1.0)
            start = len(traffic.samples)
            stopped = time.monotonic()
            await asyncio.to_thread(pair.stop, 0)
            await asyncio.sleep(2.0)
            await asyncio.to_thread(pair.promote, 1)
            promoted = time.monotonic()
            phase = await _until_recovered(
                traffic, start, "postgres-failover", promoted, POSTGRES_LIMIT
            )
            phases.append((phase, POSTGRES_LIMIT))
            lines.append(
                f"postgres-failover: {_window(phase.samples, promoted)} after the promotion "
                f"(primary stopped {promoted - stopped:.1f} s before it)"
            )
            for body in await _readyz(client, gateways):
                if body.get("in_use", {}).get("postgres_host") != 1:
                    problems.append(f"postgres-failover: /readyz names {body.get('in_use')}")
            if not await _logout_on_a_kills_on_b(traffic, client, gateways, world.users["notes"]):
                problems.append("postgres-failover: a logout on A did not kill the token on B")
            # the CLI on the same URLs: the ledger on the new primary, the broadcast via Sentinel
            victim = await traffic.login(client, gateways[1], world.users["notes"])
            assert victim is not None
            done = await asyncio.to_thread(
                subprocess.run,
                [
                    sys.executable,
                    "-m",
                    "tokengate.cli",
                    "sessions",
                    "revoke",
                    "--family",
                    victim.sid,
                ],
                env=world.stack.gateway_env,
                capture_output=True,
                timeout=60,
            )
            if done.returncode != 0:
                problems.append(f"tokengate sessions revoke failed: {done.stderr[-500:]!r}")
            elif not await _denied_everywhere(client, gateways, victim, within=2.0):
                problems.append("tokengate sessions revoke did not reach both gateways")

        for phase, limit in phases:
            _check_phase(phase, limit, problems, readyz_dips=True)
        in_phases = {id(s) for phase, _ in phases for s in phase.samples}
        between = [s for s in traffic.samples if id(s) not in in_phases]
        problems.extend(Phase("between phases", between, 0.0).problems(recovery=False))

        # no family was revoked by the failovers themselves: a lost rotation is a plain 401
        conn = await asyncpg.connect(pair.dsn(index=1))
        try:
            reasons = collections.Counter(
                dict(
                    await conn.fetch(
                        "SELECT revoked_reason, count(*) FROM refresh_session"
                        " WHERE revoked_reason IS NOT NULL GROUP BY 1"
                    )
                )
            )
        finally:
            await conn.close()
        if reasons.get("reuse"):
            problems.append(f"{reasons['reuse']} families revoked as reuse by a failover")

        # every revocation acknowledged during the failovers holds on both gateways
        for session in traffic.revoked:
            if not await _denied_everywhere(client, gateways, session, within=0):
                problems.append(f"acknowledged revocation of {session.sid} did not hold")

        # tokengate users (the backend's command) broadcasts new epochs through Sentinel too:
        # the access token dies on both gateways at once, not at their next epoch reload (30 s)
        email = world.users["login"]
        victim = await traffic.login(client, gateways[1], email)
        assert victim is not None
        await asyncio.sleep(1.1)  # epochs are whole seconds: the token must predate the change
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "tokengate.cli", "users", "end-sessions", "--email", email],
            env={**world.stack.backend_env, "REDIS_KEY_PREFIX": world.redis_prefix},
            capture_output=True,
            timeout=60,
        )
        if done.returncode != 0 or b"not broadcast" in done.stderr:
            problems.append(f"tokengate users end-sessions: {done.stderr[-500:]!r}")
        elif not await _denied_everywhere(client, gateways, victim, within=2.0):
            problems.append("tokengate users end-sessions did not reach both gateways at once")

        # the login rate limit reads its counts from the master, never from the replica
        problems.extend(await _counts_read_from_master(client, gateways, world, sentinels))

    lines.append("| phase | requests | statuses | recovery (s) | retried rotation answered 401 |")
    lines.append("|---|---|---|---|---|")
    for phase, _ in phases:
        lines.append(
            f"| {phase.name} | {len(phase.samples)} | {phase.statuses()} | "
            f"{max((v for k, v in phase.recoveries().items() if k in PROBES), default=0):.1f} | "
            f"{traffic.lost_rotations_reused} |"
        )
    lines.append(f"families revoked, by reason: {dict(reasons)}")
    # a 401 is either the password client asking which password is in force, or a refresh whose
    # rotation was lost with the old primary (a plain 401, never reuse): say which
    unauthorized = collections.Counter(s.kind for s in traffic.samples if s.status == 401)
    lines.append(f"401 answers by kind of request: {dict(unauthorized)}")
    with capsys.disabled():
        print("\n".join(lines))
    counted = collections.Counter(problems)
    assert not problems, "\n".join(f"{n} x {p}" for p, n in counted.items())


async def _counts_read_from_master(
    client: httpx.AsyncClient, gateways: list[str], world: World, sentinels: SentinelSet
) -> list[str]:
    master = sentinels.master_port()
    replica = next(s.port for s in sentinels.data if s.port != master)
    reads = ("cmdstat_get", "cmdstat_ttl", "cmdstat_mget", "cmdstat_evalsha")

    def stats(port: int) -> dict[str, int]:
        with sentinels.client(port) as redis_client:
            info = redis_client.info("commandstats")
        return {k: int(v["calls"]) for k, v in info.items() if k in reads}

    def reset() -> None:
        for port in (master, replica):
            assert port is not None
            with sentinels.client(port) as redis_client:
                redis_client.config_resetstat()

    await asyncio.to_thread(reset)
    logins = 0
    for _ in range(5):
        response = await client.post(
            gateways[0] + "/api/v1/auth/login",
            json={"email": world.users["login"], "password": PASSWORD},
        )
        logins += response.status_code == 200
    assert master is not None
    on_master, on_replica = (
        await asyncio.to_thread(stats, master),
        await asyncio.to_thread(stats, replica),
    )
    found = []
    if logins != 5:
        found.append(f"rate-limit check: {logins} of 5 logins succeeded")
    if sum(on_replica.values()):
        found.append(f"rate-limit counts read from the replica: {on_replica}")
    if not sum(on_master.values()):
        found.append(f"no rate-limit reads on the master either: {on_master}")
    return found


def test_dpop_replay_cache_follows_a_sentinel_failover(
    ha: tuple[World, SentinelSet, PostgresPair],
) -> None:
    """The replay cache's own connection (made by the Sentinel-managed pool) leaves a demoted
    master: a manual failover keeps the old master up as a replica, and claims must go to the
    new one, while a ``jti`` claimed before the failover is still refused after it. The
    gateways' revocation channel, subscribed on the old master, must follow too: a logout on A
    still kills the access token on B."""
    world, sentinels, _ = ha

    async def scenario() -> None:
        target = redis_url.parse(sentinels.url, sentinel_password=SENTINEL_PASSWORD)
        client = redis_url.async_client(target, socket_connect_timeout=1.0, socket_timeout=2.0)
        cache = ReplayCache(client, prefix="failover:", iat_window=60)
        now = int(time.time())
        try:
            before = Proof(jkt="k" * 43, jti="before-the-failover", iat=now)
            assert await cache.claim(before) is True
            await asyncio.to_thread(sentinels.wait_replicated)
            old = sentinels.master_port()
            with sentinels.sentinel_client() as sentinel:
                sentinel.execute_command("SENTINEL", "FAILOVER", "tokengate")
            deadline = time.monotonic() + 20.0
            while sentinels.master_port() == old and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            new = sentinels.master_port()
            assert new not in (None, old)
            fresh, unavailable = 0, 0
            while time.monotonic() < deadline:
                proof = Proof(jkt="k" * 43, jti=f"after-{fresh}-{unavailable}", iat=now)
                try:
                    assert await cache.claim(proof) is True
                except ServiceUnavailable:
                    unavailable += 1  # the cache fails closed while the switch happens
                    await asyncio.sleep(0.1)
                    continue
                fresh += 1
                connection: Any = cache._connection
                if fresh >= 3 and connection is not None and connection.port == new:
                    break
            connection = cache._connection
            assert connection is not None and connection.port == new
            # the replayed proof: replicated before the failover, still refused after it
            assert await cache.claim(before) is False
            async with httpx.AsyncClient(timeout=15.0, headers={"Origin": ORIGIN}) as http:
                traffic = Traffic(world)
                deadline = time.monotonic() + 20.0
                while True:  # login and logout fail closed (503) until the switch is done
                    if await _logout_on_a_kills_on_b(
                        traffic, http, world.gateways, world.users["notes"]
                    ):
                        break
                    assert time.monotonic() < deadline, "logout on A never reached B"
                    await asyncio.sleep(0.5)
        finally:
            await cache.close()
            await client.aclose()

    asyncio.run(scenario())
