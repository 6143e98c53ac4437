"""Fault injection under load: dependencies die, restart and stall while traffic flows.

The real processes (``tokengate backend`` and two ``tokengate gateway`` instances) run against
this module's **own** PostgreSQL and Redis (:mod:`tests.support.servers`), never the machine's
shared ones, while several clients keep up steady mixed traffic: proxied requests, note writes,
logins, refresh rotations, session revocations and readiness checks. Four phases:

1. ``redis``: Redis is killed (SIGKILL) for 5 s and restarted empty;
2. ``postgres``: PostgreSQL gets a fast shutdown (sessions and queries in flight are cut) and is
   restarted 5 s later;
3. ``backend``: the backend process is killed (SIGKILL) and restarted 5 s later;
4. ``slow-postgres``: every table is locked for 5 s, so the services see timeouts, not refusals.

Per phase: no 500 from anyone; every 5xx is JSON, a 502, 503 or 504, and a 503 carries
``Retry-After``; every kind of request is answered normally again within 5 s of the dependency's
return (measured and printed). After all of them: every acknowledged write (note created, session
revoked) is there, and every write that failed was applied entirely or not at all. A revoked
family stays dead on both gateways across the Redis restart, and on a third gateway started after
it. The table printed at the end is the one in docs/SECURITY.md.

Run it alone with ``pytest -m fault``.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import itertools
import json
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis

from tests.support.servers import PrivatePostgres, PrivateRedis
from tests.support.stack import Stack, running_stack
from tokengate.migrate import migrate

pytestmark = pytest.mark.fault

OUTAGE = 5.0  # seconds each dependency stays down (issue 15)
RECOVERY_LIMIT = 5.0  # seconds after its return by which everything must answer normally
PASSWORD = "fault injection password"
ORIGIN = "http://localhost:5173"
NORMAL = {
    "proxied": {200},
    "note": {201},
    "login": {200},
    "refresh": {200},
    "revoke": {204},
    "password": {200},
    # after a failed password change: which password is in force? one of them says 401
    "password-login": {200, 401},
    "readyz": {200},
    "backend-readyz": {200},
}


#: the traffic logs in and refreshes far faster than the default limits allow
UNLIMITED = {
    "LOGIN_RATE_LIMIT_IP": "100000/minute",
    "LOGIN_RATE_LIMIT_ACCOUNT": "100000/minute",
    "REFRESH_RATE_LIMIT": "100000/minute",
}


def create_users(stack: Stack, domain: str) -> dict[str, str]:
    """The traffic's users (name -> email), one CLI process each, side by side: start-up time
    adds up on a busy machine."""
    users = {name: f"{name}@{domain}" for name in ("notes", "login", "chain", "password")}
    with concurrent.futures.ThreadPoolExecutor(len(users)) as pool:
        list(pool.map(lambda email: stack.create_user(email, PASSWORD), users.values()))
    return users


#: kinds of request that are one request each, at a steady pace: they time the recovery
PROBES = {"proxied", "note", "login", "refresh", "readyz", "backend-readyz"}

#: phase -> (kind of request, status) that must be seen while its dependency is down
SIGNATURE = {
    "redis": ("login", 503),  # the login rate limit lives in Redis
    "postgres": ("note", 503),  # the backend's database
    "backend": ("proxied", 502),
    "slow-postgres": ("proxied", 503),  # a statement timeout in the backend
}


@dataclasses.dataclass
class Sample:
    kind: str
    start: float
    end: float
    status: int | None  # None: no HTTP answer at all (connection error, client timeout)
    error: str | None = None
    retry_after: str | None = None
    body: object = None
    response: httpx.Response | None = dataclasses.field(default=None, repr=False)

    @property
    def normal(self) -> bool:
        return self.status in NORMAL[self.kind]


@dataclasses.dataclass
class Session:
    access: str
    refresh: str
    sid: str


@dataclasses.dataclass
class World:
    stack: Stack
    gateways: list[str]
    postgres: PrivatePostgres
    redis: PrivateRedis
    users: dict[str, str]
    redis_prefix: str
    logdir: Path


def _sid(access_token: str) -> str:
    payload = access_token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["sid"])


def _refresh_cookie(response: httpx.Response) -> str | None:
    for header in response.headers.get_list("set-cookie"):
        name, _, rest = header.partition("=")
        if name == "tg_refresh":
            return rest.split(";", 1)[0] or None
    return None


# -- the world: private servers, migrated database, users, backend and two gateways ------------


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    # Not under pytest's tmp_path: pytest keeps its base folder 0700 (and resets it whenever a
    # concurrent pytest run starts), which would lock out PostgreSQL's own system user.
    root = Path(tempfile.mkdtemp(prefix="tokengate-faults-"))
    postgres = PrivatePostgres(root / "postgres")
    redis_server = PrivateRedis(root / "redis")
    postgres.init()
    postgres.start()
    redis_server.start()
    try:
        asyncio.run(migrate(postgres.dsn()))
        db = {
            # short timeouts so the slow phase shows them well inside its 5 s
            "DB_COMMAND_TIMEOUT": "2",
            "DB_ACQUIRE_TIMEOUT": "1",
            "DB_CONNECT_TIMEOUT": "1",
        }
        cheap_argon2 = {"ARGON2_TIME_COST": "1", "ARGON2_MEMORY_KIB": "8192"}
        with running_stack(
            database_url=postgres.dsn(),
            redis_url=redis_server.url,
            redis_prefix="faults:",
            backend_env={**db, **cheap_argon2, "DATABASE_URL": postgres.dsn("tokengate_backend")},
            gateway_env={
                **db,
                "DATABASE_URL": postgres.dsn("tokengate_gateway"),
                "CORS_ALLOWED_ORIGINS": ORIGIN,
                **UNLIMITED,
            },
        ) as stack:
            users = create_users(stack, "faults.example.test")
            with stack.extra_gateway() as second:
                yield World(
                    stack=stack,
                    gateways=[stack.gateway_url, second],
                    postgres=postgres,
                    redis=redis_server,
                    users=users,
                    redis_prefix=stack.gateway_env["REDIS_KEY_PREFIX"],
                    logdir=stack.logdir,
                )
    finally:
        redis_server.stop()
        postgres.stop()
        shutil.rmtree(root, ignore_errors=True)


# -- traffic -----------------------------------------------------------------------------------


class Traffic:
    """Steady mixed traffic from several clients; every answer is kept as a :class:`Sample`."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.samples: list[Sample] = []
        self.notes_acked: dict[str, str] = {}  # title -> body, answered 201
        self.notes_failed: dict[str, str] = {}  # title -> body, answered otherwise
        self.revoked: list[Session] = []  # DELETE answered 204
        self.revoke_failed: list[Session] = []  # DELETE answered otherwise
        self.lost_rotations_reused = 0  # a retried rotation answered 401 (treated as reuse)
        self.lost_rotations_retried = 0  # a retried rotation answered 200
        self.password = PASSWORD  # of the "password" user, as far as acknowledged changes go
        self.passwords_applied: list[tuple[str, Session]] = []  # (old password, a bystander)
        self.passwords_failed: list[bool] = []  # a failed change: was it applied after all?
        self.password_problems: list[str] = []
        self._stop = asyncio.Event()

    async def call(
        self, client: httpx.AsyncClient, kind: str, method: str, url: str, **kwargs: Any
    ) -> Sample:
        start = time.monotonic()
        try:
            response = await client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            sample = Sample(kind, start, time.monotonic(), None, error=type(exc).__name__)
        else:
            try:
                body: object = response.json() if response.content else None
            except ValueError:
                body = response.text[:200]
            sample = Sample(
                kind,
                start,
                time.monotonic(),
                response.status_code,
                retry_after=response.headers.get("retry-after"),
                body=body,
                response=response,
            )
        self.samples.append(sample)
        return sample

    async def login(
        self,
        client: httpx.AsyncClient,
        gateway: str,
        email: str,
        password: str = PASSWORD,
        kind: str = "login",
    ) -> Session | None:
        sample = await self.call(
            client,
            kind,
            "POST",
            gateway + "/api/v1/auth/login",
            json={"email": email, "password": password},
        )
        if sample.status != 200 or sample.response is None:
            return None
        response = sample.response
        access = response.json()["access_token"]
        refresh = _refresh_cookie(response)
        assert refresh is not None
        return Session(access, refresh, _sid(access))

    async def _loop(self, pause: float, body: Callable[[], Awaitable[None]]) -> None:
        while not self._stop.is_set():
            await body()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), pause)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        gateways = self.world.gateways
        users = self.world.users
        async with contextlib.AsyncExitStack() as stack:

            async def client() -> httpx.AsyncClient:
                return await stack.enter_async_context(
                    httpx.AsyncClient(timeout=15.0, headers={"Origin": ORIGIN})
                )

            first = await self.login(await client(), gateways[0], users["notes"])
            assert first is not None, "login fails before any fault"
            bearer = {"Authorization": f"Bearer {first.access}"}
            counter = itertools.count()

            async def proxied(c: httpx.AsyncClient, gateway: str) -> None:
                await self.call(c, "proxied", "GET", gateway + "/api/v1/me", headers=bearer)

            async def note(c: httpx.AsyncClient) -> None:
                n = next(counter)
                title, text = f"note {n}", f"body of note {n} " * 4
                sample = await self.call(
                    c,
                    "note",
                    "POST",
                    gateways[n % 2] + "/api/v1/notes",
                    headers=bearer,
                    json={"title": title, "body": text},
                )
                (self.notes_acked if sample.status == 201 else self.notes_failed)[title] = text

            async def login(c: httpx.AsyncClient) -> None:
                await self.login(c, gateways[1], users["login"])

            chain: dict[str, Session | None] = {"session": None}
            failed_once: dict[str, bool] = {"failed": False}

            async def refresh(c: httpx.AsyncClient) -> None:
                session = chain["session"]
                if session is None:
                    chain["session"] = await self.login(c, gateways[0], users["chain"])
                    failed_once["failed"] = False
                    return
                c.cookies.clear()
                sample = await self.call(
                    c,
                    "refresh",
                    "POST",
                    gateways[0] + "/api/v1/auth/refresh",
                    headers={"Cookie": f"tg_refresh={session.refresh}"},
                )
                if sample.status == 200 and sample.response is not None:
                    if failed_once["failed"]:
                        self.lost_rotations_retried += 1
                    token = _refresh_cookie(sample.response)
                    assert token is not None
                    session.refresh = token
                    failed_once["failed"] = False
                elif sample.status == 401:
                    if failed_once["failed"]:
                        # the attempt before may have committed a rotation whose answer was lost
                        self.lost_rotations_reused += 1
                    chain["session"] = None
                else:
                    failed_once["failed"] = True

            # the new password of a change that failed, and its bystander, until resolved
            pending: list[tuple[str, Session]] = []
            pair: dict[str, Session | None] = {}
            numbers = itertools.count()

            async def change_password(c: httpx.AsyncClient) -> None:
                email = users["password"]
                if pending:
                    # A change failed: exactly one of the two passwords must be in force.
                    old, (new, witness) = self.password, pending[0]
                    url = gateways[1] + "/api/v1/auth/login"
                    works = {}
                    for password in (old, new):
                        sample = await self.call(
                            c,
                            "password-login",
                            "POST",
                            url,
                            json={"email": email, "password": password},
                        )
                        if sample.status not in (200, 401):
                            return  # still down: find out later
                        works[password] = sample.status == 200
                    if works[old] == works[new]:
                        self.password_problems.append(
                            f"after a failed change old works: {works[old]}, new: {works[new]}"
                        )
                    else:
                        self.passwords_failed.append(works[new])
                        if works[new]:
                            # applied: then wholly, other sessions ended too (checked at the end)
                            self.password = new
                            self.passwords_applied.append((old, witness))
                    pending.clear()
                    pair.clear()
                    return
                # The changer's session and a bystander are logged in ahead, while logins work,
                # so the change itself is tried whatever is down at the time.
                for role, gateway in (("session", gateways[0]), ("bystander", gateways[1])):
                    if pair.get(role) is None:
                        pair[role] = await self.login(c, gateway, email, self.password)
                session, bystander = pair.get("session"), pair.get("bystander")
                if session is None or bystander is None:
                    return
                new = f"fault injection password {next(numbers)}"
                sample = await self.call(
                    c,
                    "password",
                    "POST",
                    gateways[0] + "/api/v1/auth/password",
                    headers={"Authorization": f"Bearer {session.access}"},
                    json={"current_password": self.password, "new_password": new},
                )
                if sample.status == 200 and sample.response is not None:
                    self.passwords_applied.append((self.password, bystander))
                    self.password = new
                    # the caller carries on with the session the answer gave it
                    access = sample.response.json()["access_token"]
                    token = _refresh_cookie(sample.response)
                    assert token is not None
                    pair["session"], pair["bystander"] = Session(access, token, _sid(access)), None
                else:
                    pending.append((new, bystander))

            stock: list[Session] = []

            async def revoke(c: httpx.AsyncClient) -> None:
                # sessions are logged in ahead while logins work, so revocations are tried
                # whatever is down at the time
                while len(stock) < 5:
                    session = await self.login(c, gateways[0], users["notes"])
                    if session is None:
                        break
                    stock.append(session)
                if not stock:
                    return
                session = stock.pop(0)
                sample = await self.call(
                    c,
                    "revoke",
                    "DELETE",
                    gateways[1] + f"/api/v1/auth/sessions/{session.sid}",
                    headers={"Authorization": f"Bearer {session.access}"},
                )
                (self.revoked if sample.status == 204 else self.revoke_failed).append(session)

            async def ready(c: httpx.AsyncClient, url: str, kind: str) -> None:
                await self.call(c, kind, "GET", url + "/readyz")

            c = [await client() for _ in range(10)]
            backend_url = self.world.stack.backend_url
            workers = [
                self._loop(0.02, functools.partial(proxied, c[0], gateways[0])),
                self._loop(0.02, functools.partial(proxied, c[1], gateways[1])),
                self._loop(0.05, functools.partial(note, c[2])),
                self._loop(0.1, functools.partial(login, c[3])),
                self._loop(0.1, functools.partial(refresh, c[4])),
                self._loop(0.3, functools.partial(revoke, c[5])),
                self._loop(0.3, functools.partial(change_password, c[9])),
                self._loop(0.1, functools.partial(ready, c[6], gateways[0], "readyz")),
                self._loop(0.1, functools.partial(ready, c[7], gateways[1], "readyz")),
                self._loop(0.1, functools.partial(ready, c[8], backend_url, "backend-readyz")),
            ]
            tasks = [asyncio.create_task(w) for w in workers]
            try:
                yield
            finally:
                self._stop.set()
                await asyncio.gather(*tasks)


# -- measuring a phase -------------------------------------------------------------------------


@dataclasses.dataclass
class Phase:
    name: str
    samples: list[Sample]
    returned_at: float
    lost_rotations_reused: int = 0

    def recoveries(self) -> dict[str, float]:
        """Per kind of request, seconds from the dependency's return until it answers normally
        for good: the end of the first normal answer after its last abnormal one."""
        by_kind: dict[str, list[Sample]] = collections.defaultdict(list)
        for sample in self.samples:
            by_kind[sample.kind].append(sample)
        out = {}
        for kind, samples in by_kind.items():
            samples.sort(key=lambda s: s.start)
            last_bad = max((i for i, s in enumerate(samples) if not s.normal), default=None)
            if last_bad is None:
                out[kind] = 0.0
            elif last_bad == len(samples) - 1:
                out[kind] = float("inf")
            else:
                out[kind] = max(samples[last_bad + 1].end - self.returned_at, 0.0)
        return out

    def recovery(self) -> float:
        """The slowest probe's recovery: when every service answers normally again.

        Only the one-request probes count (:data:`PROBES`). A revocation or a password change
        comes after its worker has logged in afresh (and, for a password, sorted out the change
        that failed), so their figures measure the workers' own pace; they are printed, and they
        must still recover (:meth:`problems`)."""
        return max((v for k, v in self.recoveries().items() if k in PROBES), default=0.0)

    def statuses(self) -> str:
        counts = collections.Counter(
            str(s.status) if s.status is not None else (s.error or "error") for s in self.samples
        )
        return " ".join(f"{k}x{v}" for k, v in sorted(counts.items()))

    def problems(self, *, recovery: bool = True) -> list[str]:
        found = []
        for s in self.samples:
            if s.status is None and self.name == "backend" and s.kind == "backend-readyz":
                continue  # asked the killed process itself: no answer is the right answer
            if s.status is None:
                found.append(f"{self.name}: {s.kind} got no answer ({s.error})")
            elif s.status >= 500:
                if s.status not in (502, 503, 504):
                    found.append(f"{self.name}: {s.kind} answered {s.status}: {s.body!r}")
                elif not _json_5xx(s):
                    found.append(f"{self.name}: {s.kind} {s.status} is not JSON: {s.body!r}")
                elif s.status == 503 and not s.retry_after:
                    found.append(f"{self.name}: {s.kind} 503 without Retry-After")
            elif s.status not in NORMAL[s.kind] and (s.status, s.kind) != (401, "refresh"):
                found.append(f"{self.name}: {s.kind} answered {s.status}: {s.body!r}")
        never = [k for k, v in self.recoveries().items() if v == float("inf")]
        if recovery and never:
            found.append(f"{self.name}: never answered normally again: {never}")
        if recovery and self.recovery() > RECOVERY_LIMIT:
            found.append(f"{self.name}: recovery took {self.recovery():.1f} s")
        return found


def _json_5xx(sample: Sample) -> bool:
    body = sample.body
    if not isinstance(body, dict):
        return False
    if sample.kind.endswith("readyz"):
        return body.get("status") == "unavailable" and isinstance(body.get("checks"), dict)
    error = body.get("error")
    return isinstance(error, dict) and {"code", "message"} <= set(error)


async def _phase(
    traffic: Traffic, name: str, fault: Callable[[], Awaitable[float]], *, settle: float = 1.5
) -> Phase:
    first = len(traffic.samples)
    reused_before = traffic.lost_rotations_reused
    await asyncio.sleep(1.0)  # steady traffic first
    returned_at = await fault()
    deadline = returned_at + 10.0
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        probe = Phase(name, traffic.samples[first:], returned_at)
        recovered = float("inf") not in probe.recoveries().values()
        if recovered and time.monotonic() - returned_at > 1.0:
            break
    await asyncio.sleep(settle)
    return Phase(
        name,
        traffic.samples[first:],
        returned_at,
        traffic.lost_rotations_reused - reused_before,
    )


# -- checks through the API --------------------------------------------------------------------


async def _status(client: httpx.AsyncClient, gateway: str, access: str) -> int:
    response = await client.get(
        gateway + "/api/v1/me", headers={"Authorization": f"Bearer {access}"}
    )
    return response.status_code


async def _denied_everywhere(
    client: httpx.AsyncClient, gateways: list[str], session: Session, within: float
) -> bool:
    deadline = time.monotonic() + within
    while True:
        statuses = [await _status(client, g, session.access) for g in gateways]
        if statuses == [401] * len(gateways):
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)


def _log_events(logdir: Path) -> dict[str, collections.Counter[str]]:
    """What the services logged about failures: event -> class (or level) -> count."""
    events: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for path in sorted(logdir.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict) or record.get("level") not in ("warning", "error"):
                continue
            cls = record.get("exc_type") or record.get("error") or record.get("status") or "-"
            events[str(record.get("event"))][str(cls)] += 1
    return events


# -- the test ----------------------------------------------------------------------------------


def test_faults_under_load_never_show_as_a_500(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(_scenario(world, capsys))


async def _scenario(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    gateways = world.gateways
    problems: list[str] = []
    phases: list[Phase] = []
    async with httpx.AsyncClient(timeout=15.0, headers={"Origin": ORIGIN}) as client:
        traffic = Traffic(world)
        # two sessions for the revocation checks across the Redis restart
        checker = Traffic(world)
        logged_out = await checker.login(client, gateways[0], world.users["notes"])
        revoked_during_outage = await checker.login(client, gateways[0], world.users["notes"])
        assert logged_out is not None and revoked_during_outage is not None
        client.cookies.clear()
        logout = await client.post(
            gateways[0] + "/api/v1/auth/logout",
            headers={"Cookie": f"tg_refresh={logged_out.refresh}"},
        )
        assert logout.status_code == 204
        assert await _denied_everywhere(client, gateways, logged_out, within=2.0)

        async with traffic.running():

            async def redis_down() -> float:
                await asyncio.to_thread(world.redis.kill)
                killed = time.monotonic()
                await asyncio.sleep(1.0)
                # a revocation while Redis is down: PostgreSQL and this instance at once
                revoke = await client.delete(
                    gateways[0] + f"/api/v1/auth/sessions/{revoked_during_outage.sid}",
                    headers={"Authorization": f"Bearer {revoked_during_outage.access}"},
                )
                if revoke.status_code != 204:
                    problems.append(f"redis: revoking while Redis is down: {revoke.status_code}")
                if await _status(client, gateways[0], revoked_during_outage.access) != 401:
                    problems.append("redis: the revoking instance accepts the revoked session")
                await asyncio.sleep(max(0.0, killed + OUTAGE - time.monotonic()))
                return await asyncio.to_thread(world.redis.start)

            phases.append(await _phase(traffic, "redis", redis_down))

            # Redis came back empty: both sessions stay dead on both instances...
            for name, session in (
                ("logged out before", logged_out),
                ("revoked during the outage", revoked_during_outage),
            ):
                if not await _denied_everywhere(client, gateways, session, within=RECOVERY_LIMIT):
                    problems.append(f"redis: session {name} accepted again after the restart")
            # ...and the set is whole again in Redis, pushed back by the instances
            stored = aioredis.from_url(world.redis.url)
            try:
                key = f"{world.redis_prefix}revoked:sids"
                members = {m.decode() for m in await stored.zrange(key, 0, -1)}
            finally:
                await stored.aclose()
            if not {logged_out.sid, revoked_during_outage.sid} <= members:
                problems.append("redis: the revoked set was not pushed back into the empty Redis")
            # ...and on a gateway started after the restart (started in a thread: the traffic
            # goes on meanwhile)
            late_gateway = world.stack.extra_gateway()
            late = await asyncio.to_thread(late_gateway.__enter__)
            try:
                for session in (logged_out, revoked_during_outage):
                    if await _status(client, late, session.access) != 401:
                        problems.append(
                            "redis: a gateway started after the restart accepts a revoked session"
                        )
            finally:
                await asyncio.to_thread(late_gateway.__exit__, None, None, None)

            async def postgres_down() -> float:
                await asyncio.to_thread(world.postgres.fast_shutdown)
                stopped = time.monotonic()
                await asyncio.sleep(max(0.0, stopped + OUTAGE - time.monotonic()))
                return await asyncio.to_thread(world.postgres.start)

            phases.append(await _phase(traffic, "postgres", postgres_down))

            async def backend_down() -> float:
                await asyncio.to_thread(world.stack.kill_backend)
                await asyncio.sleep(OUTAGE)
                await asyncio.to_thread(world.stack.start_backend)  # returns once it is healthy
                return time.monotonic()

            phases.append(await _phase(traffic, "backend", backend_down))

            async def postgres_slow() -> float:
                conn = await asyncpg.connect(world.postgres.dsn())
                try:
                    tables = await conn.fetchval(
                        "SELECT string_agg(format('%I.%I', schemaname, tablename), ', ')"
                        " FROM pg_tables WHERE schemaname = 'public'"
                    )
                    async with conn.transaction():
                        await conn.execute(f"LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE")
                        await asyncio.sleep(OUTAGE)
                finally:
                    await conn.close()
                return time.monotonic()

            phases.append(await _phase(traffic, "slow-postgres", postgres_slow))

        # every acknowledged write is there; every failed one is whole or absent
        access = await checker.login(client, gateways[1], world.users["notes"])
        assert access is not None
        notes: dict[str, list[str]] = collections.defaultdict(list)
        offset = 0
        while True:
            page = await client.get(
                gateways[1] + f"/api/v1/notes?limit=200&offset={offset}",
                headers={"Authorization": f"Bearer {access.access}"},
            )
            assert page.status_code == 200, page.text
            items = page.json()["items"]
            for item in items:
                notes[item["title"]].append(item["body"])
            if len(items) < 200:
                break
            offset += 200
        for title, text in traffic.notes_acked.items():
            if notes.get(title) != [text]:
                problems.append(f"acknowledged {title!r} is {notes.get(title)!r} after the faults")
        # the password in force is the last acknowledged one (or a failed change found applied);
        # every earlier one is refused, and every session that was not the changer's is dead
        problems.extend(traffic.password_problems)
        email = world.users["password"]
        for gateway in gateways:
            if await checker.login(client, gateway, email, traffic.password) is None:
                problems.append(f"the password in force does not log in on {gateway}")
        for old, bystander in traffic.passwords_applied:
            if await checker.login(client, gateways[0], email, old) is not None:
                problems.append("a password changed with an acknowledgement still logs in")
            if not await _denied_everywhere(client, gateways, bystander, within=0):
                problems.append("a session other than the changer's survived a password change")
        failed_but_stored = 0
        for title, text in traffic.notes_failed.items():
            if title in notes:
                failed_but_stored += 1
                if notes[title] != [text]:
                    problems.append(f"failed {title!r} half-applied: {notes[title]!r}")
        for session in traffic.revoked:
            if not await _denied_everywhere(client, gateways, session, within=0):
                problems.append(f"acknowledged revocation of {session.sid} did not hold")
            client.cookies.clear()
            again = await client.post(
                gateways[0] + "/api/v1/auth/refresh",
                headers={"Cookie": f"tg_refresh={session.refresh}"},
            )
            if again.status_code != 401:
                problems.append(f"revoked {session.sid} refreshed: {again.status_code}")
        for session in traffic.revoke_failed:
            live = [await _status(client, g, session.access) for g in gateways]
            client.cookies.clear()
            again = await client.post(
                gateways[0] + "/api/v1/auth/refresh",
                headers={"Cookie": f"tg_refresh={session.refresh}"},
            )
            whole = (live == [200, 200] and again.status_code == 200) or (
                live == [401, 401] and again.status_code == 401
            )
            if not whole:
                problems.append(
                    f"failed revocation of {session.sid} half-applied: {live} {again.status_code}"
                )

    events = _log_events(world.logdir)
    for phase in phases:
        problems.extend(phase.problems())
        # the fault really happened: each phase shows its outage's signature
        kind, status = SIGNATURE[phase.name]
        if not any(s.kind == kind and s.status == status for s in phase.samples):
            problems.append(f"{phase.name}: no {kind} answered {status}; was anything down?")
    # the answers between phases too (fewer, but none may be a 500 either)
    in_phases = {id(s) for phase in phases for s in phase.samples}
    between = [s for s in traffic.samples if id(s) not in in_phases]
    problems.extend(Phase("between phases", between, 0.0).problems(recovery=False))
    if events.get("unhandled_error"):
        problems.append(f"unhandled errors logged: {dict(events['unhandled_error'])}")

    lines = [
        "",
        "| phase | requests | statuses | recovery (s) | lost rotation treated as reuse |",
        "|---|---|---|---|---|",
    ]
    for phase in phases:
        lines.append(
            f"| {phase.name} | {len(phase.samples)} | {phase.statuses()} | "
            f"{phase.recovery():.1f} | {phase.lost_rotations_reused} |"
        )
    lines.append("")
    lines.append("recovery per kind of request (s):")
    for phase in phases:
        per_kind = sorted(phase.recoveries().items(), key=lambda item: -item[1])
        lines.append(f"  {phase.name}: " + ", ".join(f"{k} {v:.1f}" for k, v in per_kind))
    lines.append(
        f"notes: {len(traffic.notes_acked)} acknowledged (all present), "
        f"{len(traffic.notes_failed)} failed ({failed_but_stored} of them stored whole); "
        f"revocations: {len(traffic.revoked)} acknowledged, {len(traffic.revoke_failed)} failed; "
        f"retried rotations answered 200: {traffic.lost_rotations_retried}"
    )
    lines.append(
        f"password changes: {len(traffic.passwords_applied) - sum(traffic.passwords_failed)} "
        f"acknowledged, {len(traffic.passwords_failed)} failed ({sum(traffic.passwords_failed)} "
        "of them applied whole); every applied one: old password refused, other sessions ended"
    )
    lines.append("logged failures (event: class x count):")
    for event, classes in sorted(events.items()):
        lines.append(f"  {event}: " + ", ".join(f"{k}x{v}" for k, v in sorted(classes.items())))
    with capsys.disabled():
        print("\n".join(lines))
    counted = collections.Counter(problems)
    assert not problems, "\n".join(f"{n} x {p}" for p, n in counted.items())
