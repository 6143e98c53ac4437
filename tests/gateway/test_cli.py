"""``tokengate sessions list|revoke`` against a real database and Redis."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import cast

import asyncpg
import pytest
import redis
from servicekit.emails import normalise_email

from gateway.sessions.ledger import Ledger
from tests.gateway.conftest import PASSWORD, FakeBackend, Harness
from tokengate.cli import main


@pytest.fixture(scope="module")
def operator_dsn(new_database: Callable[[], str]) -> str:
    """A private database with the gateway's tables and a minimal users table (like dev's)."""
    dsn = new_database()

    async def setup() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "CREATE TABLE users (id uuid PRIMARY KEY, email text NOT NULL,"
                " email_normal text NOT NULL UNIQUE)"
            )
            db = Path(__file__).parents[2] / "db"
            for name in (
                "002_refresh_token_family.sql",
                "004_refresh_family_rows.sql",
                "005_dpop_binding.sql",
                "006_audit.sql",
            ):
                await conn.execute((db / name).read_text())
        finally:
            await conn.close()

    asyncio.run(setup())
    return dsn


def _make_sessions(dsn: str, email: str, count: int) -> tuple[str, list[str]]:
    user_id = str(uuid.uuid4())

    async def go() -> list[str]:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
        try:
            await pool.execute(
                "INSERT INTO users VALUES ($1, $2, $3)", user_id, email, normalise_email(email)
            )
            ledger = Ledger(pool, refresh_ttl=3600, family_lifetime=86400, grace_seconds=10)
            return [
                (
                    await ledger.create_family(
                        user_id=user_id, roles=["user"], user_agent="cli-test", ip="192.0.2.1",
                        now=int(time.time()),
                    )
                ).sid
                for _ in range(count)
            ]  # fmt: skip
        finally:
            await pool.close()

    return user_id, asyncio.run(go())


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch, operator_dsn: str, redis_url: str, redis_prefix: str
) -> str:
    prefix = f"{redis_prefix}cli:"
    monkeypatch.setenv("DATABASE_URL", operator_dsn)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("REDIS_KEY_PREFIX", prefix)
    monkeypatch.delenv("BACKEND_DATABASE_URL", raising=False)
    return prefix


def test_list_by_email(cli_env: str, operator_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    _, sids = _make_sessions(operator_dsn, "Listed@Example.test", 2)
    assert main(["sessions", "list", "--email", "listed@example.test"]) == 0
    out = capsys.readouterr().out
    assert all(sid in out for sid in sids)
    assert "cli-test" in out


def test_revoke_by_email_publishes_to_redis(
    cli_env: str, operator_dsn: str, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    user_id, sids = _make_sessions(operator_dsn, "revoke-me@example.test", 2)
    assert main(["sessions", "revoke", "--email", "revoke-me@example.test"]) == 0
    assert "revoked 2 session(s)" in capsys.readouterr().out
    client = redis.Redis.from_url(redis_url)
    try:
        members = cast(list[bytes], client.zrange(f"{cli_env}revoked:sids", 0, -1))
        stored = {m.decode() for m in members}
    finally:
        client.close()
    assert set(sids) <= stored
    assert main(["sessions", "list", "--email", "revoke-me@example.test"]) == 0
    assert not any(sid in capsys.readouterr().out for sid in sids)
    # the operator's revocation is in the audit trail, found by the subject's email
    assert main(["audit", "query", "--email", "revoke-me@example.test", "--json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["type"], e["actor"], e["details"]) for e in events] == [
        ("session_revoked", "operator", {"by": "operator", "count": 2})
    ]
    assert events[0]["subject"] == user_id


def test_revoke_one_family(
    cli_env: str, operator_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    user_id, sids = _make_sessions(operator_dsn, "family@example.test", 2)
    assert main(["sessions", "revoke", "--family", sids[0]]) == 0
    assert main(["sessions", "list", "--user-id", user_id]) == 0
    out = capsys.readouterr().out
    assert sids[0] not in out and sids[1] in out
    assert main(["audit", "query", "--user-id", user_id, "--type", "session_revoked"]) == 0
    line = capsys.readouterr().out
    assert f"family={sids[0]}" in line and "session_revoked success" in line


def test_unknown_email_is_a_clear_error(cli_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["sessions", "list", "--email", "nobody@example.test"]) == 1
    assert "no user with email" in capsys.readouterr().err


# ANSI "clear screen" and "set window title" (C0 ESC, BEL), a C1 CSI (one byte 0x9b, read as
# U+009B), a UTF-8 right-to-left override as the gateway decodes it (Latin-1: U+00E2 U+0080 U+00AE),
# and a forged second line. Nothing in it may reach the operator's terminal as itself.
HOSTILE_UA = b"ua\x1b[2J\x1b]0;owned\x07\x9b31m\xe2\x80\xae\r\nforged"


def test_sessions_list_escapes_a_hostile_user_agent_stored_through_a_login(
    gateway: Harness,
    backend: FakeBackend,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 22, item 9: a client-chosen User-Agent, stored by a real login, printed raw by
    ``tokengate sessions list``, drove the operator's terminal."""
    email = backend.add_user()

    async def log_in() -> None:
        async with gateway(env) as client:
            response = await client.post(
                "/api/v1/auth/login",
                json={"email": email, "password": PASSWORD},
                headers={"User-Agent": HOSTILE_UA},
            )
            assert response.status_code == 200, response.text

    asyncio.run(log_in())
    monkeypatch.setenv("DATABASE_URL", env["DATABASE_URL"])
    monkeypatch.setenv("REDIS_URL", env["REDIS_URL"])
    monkeypatch.setenv("REDIS_KEY_PREFIX", env["REDIS_KEY_PREFIX"])
    monkeypatch.delenv("BACKEND_DATABASE_URL", raising=False)
    assert main(["sessions", "list", "--user-id", backend.user_id(email)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert len(lines) == 2, out  # the header and one session: no forged line
    assert not [c for c in out if c != "\n" and not c.isprintable()], ascii(out)
    assert "ua\\x1b[2J\\x1b]0;owned\\x07\\x9b31m\u00e2\\x80\u00ae\\x0d\\x0aforged" in lines[1]
