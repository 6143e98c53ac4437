"""Issue 22, item 7: password writes that race, through real gateway and backend processes.

The backend reads a hash, runs argon2, then writes. Each test forces the interleaving the race
needs instead of hoping for it: it holds the user's row lock (``SELECT ... FOR UPDATE`` in an
open transaction) so every concurrent request reads the same hash and then waits at its write,
and lets go only once PostgreSQL shows all of them waiting. On the old code every waiting write
then went through; now each is conditional on the hash it read, so only the first one does.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
import pytest
from argon2 import PasswordHasher

from backend.passwords import Argon2Params, Passwords
from backend.users import _SET_PASSWORD
from tests.gateway.conftest import as_role
from tests.support.stack import Stack, running_stack

ORIGIN = "http://localhost:5173"
PASSWORD = "race account password"
CONCURRENT = 8  # below the backend's DB_POOL_MAX (10): every request reaches its UPDATE
# cheap parameters keep 2 x CONCURRENT argon2 runs fast; the stack's backend uses them too
ARGON2 = Argon2Params(time_cost=1, memory_kib=8192, parallelism=1)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def stack(migrated_dsn: str, redis_url: str, redis_prefix: str) -> Iterator[Stack]:
    with running_stack(
        database_url=migrated_dsn,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        backend_env={
            "DATABASE_URL": as_role(migrated_dsn, "tokengate_backend"),
            "ARGON2_TIME_COST": str(ARGON2.time_cost),
            "ARGON2_MEMORY_KIB": str(ARGON2.memory_kib),
            # the first write waits on the test's lock while the others run argon2, one at a
            # time: room for a loaded machine before the statement timeout answers 503
            "DB_COMMAND_TIMEOUT": "30",
        },
        gateway_env={
            "DATABASE_URL": as_role(migrated_dsn, "tokengate_gateway"),
            "CORS_ALLOWED_ORIGINS": ORIGIN,
            "LOGIN_RATE_LIMIT_IP": "1000/minute",
            "LOGIN_RATE_LIMIT_ACCOUNT": "1000/minute",
        },
    ) as running:
        yield running


def new_email() -> str:
    return f"race-{uuid.uuid4().hex[:10]}@example.test"


async def insert_user(dsn: str, email: str, password_hash: str) -> uuid.UUID:
    conn = await asyncpg.connect(dsn)
    try:
        user_id = uuid.uuid4()
        await conn.execute(
            "INSERT INTO users (id, email, email_normal, password_hash) VALUES ($1, $2, $2, $3)",
            user_id,
            email,
            password_hash,
        )
        return user_id
    finally:
        await conn.close()


async def stored_hash(dsn: str, user_id: uuid.UUID) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval("SELECT password_hash FROM users WHERE id = $1", user_id))
    finally:
        await conn.close()


@asynccontextmanager
async def holding_row(dsn: str, user_id: uuid.UUID) -> AsyncIterator[asyncpg.Connection]:
    """The user's row locked in an open transaction, committed on leaving: every password
    write to it waits meanwhile (reads do not)."""
    holder = await asyncpg.connect(dsn)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", user_id)
            yield holder
    finally:
        await holder.close()


async def wait_for_writers(
    conn: asyncpg.Connection, count: int, tasks: list[asyncio.Task[httpx.Response]]
) -> None:
    """Until ``count`` other sessions of this database wait on a lock in a password write."""
    deadline = time.monotonic() + 20.0
    waiting = 0
    while time.monotonic() < deadline and not any(t.done() for t in tasks):
        # pg_stat_clear_snapshot(): inside the lock holder's transaction the view would
        # otherwise show the same snapshot at every poll
        await conn.execute("SELECT pg_stat_clear_snapshot()")
        waiting = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'"
            " AND query LIKE '%UPDATE users SET password_hash%'"
        )
        if waiting >= count:
            return
        await asyncio.sleep(0.02)
    done = [t.result().text for t in tasks if t.done() and not t.exception()]
    raise AssertionError(f"{waiting} of {count} password writes reached the row lock; {done}")


async def login(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post("/api/v1/auth/login", json={"email": email, "password": password})


async def test_concurrent_changes_from_one_current_password_one_wins(
    stack: Stack, migrated_dsn: str
) -> None:
    email = new_email()
    user_id = await insert_user(migrated_dsn, email, Passwords(ARGON2).hash_sync(PASSWORD))
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers={"Origin": ORIGIN}, timeout=30.0
    ) as client:
        sessions = []
        for _ in range(CONCURRENT):
            r = await login(client, email, PASSWORD)
            assert r.status_code == 200, r.text
            sessions.append((r.json()["access_token"], r.cookies["tg_refresh"]))
            client.cookies.clear()
        new_passwords = [f"new password number {i}" for i in range(CONCURRENT)]

        async def change(access: str, new: str) -> httpx.Response:
            return await client.post(
                "/api/v1/auth/password",
                json={"current_password": PASSWORD, "new_password": new},
                headers={"Authorization": f"Bearer {access}"},
            )

        async with holding_row(migrated_dsn, user_id) as holder:
            tasks = [
                asyncio.create_task(change(access, new))
                for (access, _), new in zip(sessions, new_passwords, strict=True)
            ]
            # every change has verified the same current password and waits to write
            await wait_for_writers(holder, CONCURRENT, tasks)
        answers = await asyncio.gather(*tasks)

        statuses = sorted(r.status_code for r in answers)
        assert statuses == [200] + [403] * (CONCURRENT - 1), [r.text for r in answers]
        # the losers get exactly what a wrong current password gets
        for r in answers:
            if r.status_code == 403:
                assert r.json()["error"]["code"] == "forbidden"
        winner = next(i for i, r in enumerate(answers) if r.status_code == 200)
        # the winner's password is the account's; no loser's is
        client.cookies.clear()
        assert (await login(client, email, new_passwords[winner])).status_code == 200
        for i, new in enumerate(new_passwords):
            if i != winner:
                assert (await login(client, email, new)).status_code == 401
        assert (await login(client, email, PASSWORD)).status_code == 401
        # only one session of the race lives: the winner's new one (plus the login just made)
        listed = await client.get(
            "/api/v1/auth/sessions",
            headers={"Authorization": f"Bearer {answers[winner].json()['access_token']}"},
        )
        assert listed.status_code == 200, listed.text
        live = {s["id"] for s in listed.json()["sessions"]}
        assert len(live) == 2, live
        # every session from before the change is over
        for _, token in sessions:
            client.cookies.clear()
            refreshed = await client.post(
                "/api/v1/auth/refresh", headers={"Cookie": f"tg_refresh={token}"}
            )
            assert refreshed.status_code == 401


async def test_login_rehash_never_overwrites_an_operators_set_password(
    stack: Stack, migrated_dsn: str
) -> None:
    """An account hashed with older parameters logs in (the backend rehashes its password)
    while the operator sets a new one: the rehash of the old password must not land on top."""
    weak = PasswordHasher(time_cost=1, memory_cost=512, parallelism=1)
    email = new_email()
    user_id = await insert_user(migrated_dsn, email, weak.hash(PASSWORD))
    operator_password = "the operator's new password"
    operator_hash = Passwords(ARGON2).hash_sync(operator_password)
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, headers={"Origin": ORIGIN}, timeout=30.0
    ) as client:
        async with holding_row(migrated_dsn, user_id) as holder:
            logins = [
                asyncio.create_task(login(client, email, PASSWORD)) for _ in range(CONCURRENT)
            ]
            # every login verified the old hash and waits to write its rehash ...
            await wait_for_writers(holder, CONCURRENT, logins)
            # ... when the operator's set-password (the statement the command runs) commits
            assert await holder.fetchrow(_SET_PASSWORD, email, operator_hash) is not None
        answers = await asyncio.gather(*logins)
        # the password they checked was replaced under them: no session for it
        assert [r.status_code for r in answers] == [401] * CONCURRENT, [r.text for r in answers]
        assert await stored_hash(migrated_dsn, user_id) == operator_hash
        assert (await login(client, email, PASSWORD)).status_code == 401
        assert (await login(client, email, operator_password)).status_code == 200
