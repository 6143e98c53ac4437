"""``tokengate migrate`` and ``tokengate users`` through the real command line."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
from collections.abc import Callable

import asyncpg


def tokengate(
    *args: str,
    stdin: str = "",
    env: dict[str, str] | None = None,
    unset: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """The command line with this environment plus ``env``, less the variables whose names
    start with one of ``unset``."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith(unset)}
    return subprocess.run(
        [sys.executable, "-m", "tokengate.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**inherited, **(env or {})},
        timeout=60,
        check=False,
    )


def _fetch(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def test_migrate_then_up_to_date(new_database: Callable[[], str]) -> None:
    dsn = new_database()
    first = tokengate("migrate", "--database-url", dsn)
    assert first.returncode == 0, first.stderr
    assert "applied 001_users_notes.sql" in first.stdout
    again = tokengate("migrate", env={"DATABASE_URL": dsn})
    assert again.returncode == 0
    assert again.stdout.strip() == "database is up to date"


def test_users_create_reads_the_password_from_stdin(migrated_dsn: str) -> None:
    email = f"Cli-{secrets.token_hex(4)}@Example.test"
    password = "a password from stdin"
    env = {"DATABASE_URL": migrated_dsn, "ARGON2_MEMORY_KIB": "1024", "ARGON2_TIME_COST": "1"}
    done = tokengate(
        "users",
        "create",
        "--email",
        email,
        "--role",
        "admin",
        "--password-stdin",
        stdin=password + "\n",
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert password not in done.stdout + done.stderr
    rows = _fetch(
        migrated_dsn,
        "SELECT email, roles, password_hash FROM users WHERE id = $1::uuid",
        done.stdout.strip(),
    )
    assert rows[0]["email"] == email.lower()
    assert rows[0]["roles"] == ["user", "admin"]
    assert rows[0]["password_hash"].startswith("$argon2id$")

    duplicate = tokengate(
        "users", "create", "--email", email.upper(), "--password-stdin", stdin=password, env=env
    )
    assert duplicate.returncode == 1
    assert "already exists" in duplicate.stderr

    disabled = tokengate("users", "disable", "--email", email, env=env)
    assert disabled.returncode == 0
    rows = _fetch(
        migrated_dsn, "SELECT disabled_at FROM users WHERE lower(email) = $1", email.lower()
    )
    assert rows[0]["disabled_at"] is not None
    assert tokengate("users", "disable", "--email", email, env=env).returncode == 1


def test_short_password_is_refused(migrated_dsn: str) -> None:
    done = tokengate(
        "users",
        "create",
        "--email",
        "short@example.test",
        "--password-stdin",
        stdin="short\n",
        env={"DATABASE_URL": migrated_dsn},
    )
    assert done.returncode == 1
    assert "password: must be 8" in done.stderr


def test_missing_database_url_names_the_variable() -> None:
    done = tokengate("migrate", unset=("DATABASE_URL",))
    assert done.returncode == 2
    assert "DATABASE_URL" in done.stderr


def test_backend_refuses_a_private_key_as_its_public_key(tmp_path: object) -> None:
    from internal_auth import generate_private_key

    key = generate_private_key()
    done = tokengate(
        "backend",
        "--port",
        "1",
        env={
            "DATABASE_URL": "postgresql://postgres@127.0.0.1/postgres",
            "INTERNAL_JWT_PUBLIC_KEY": key.private_pem(),
        },
    )
    assert done.returncode == 2
    assert "INTERNAL_JWT_PUBLIC_KEY" in done.stderr
    assert "PRIVATE KEY" not in done.stderr


def test_migrate_sets_role_passwords_safely(migrated_dsn: str) -> None:
    # A password that would break out of naive string building must arrive as a literal.
    hostile = "x'; DROP TABLE users; --"
    done = tokengate(
        "migrate",
        "--set-role-passwords",
        env={
            "DATABASE_URL": migrated_dsn,
            "TOKENGATE_BACKEND_DB_PASSWORD": hostile,
            "TOKENGATE_GATEWAY_DB_PASSWORD": "another-password-for-the-gateway",
        },
    )
    assert done.returncode == 0, done.stderr
    assert "set password for role tokengate_backend" in done.stdout
    assert hostile not in done.stdout + done.stderr
    rows = _fetch(
        migrated_dsn,
        "SELECT rolname, rolpassword IS NOT NULL AS has_password FROM pg_authid"
        " WHERE rolname IN ('tokengate_backend', 'tokengate_gateway') ORDER BY 1",
    )
    assert [(r["rolname"], r["has_password"]) for r in rows] == [
        ("tokengate_backend", True),
        ("tokengate_gateway", True),
    ]
    assert _fetch(migrated_dsn, "SELECT to_regclass('users') IS NOT NULL AS ok")[0]["ok"]


def test_set_role_passwords_requires_both_variables(migrated_dsn: str) -> None:
    done = tokengate(
        "migrate", "--set-role-passwords", env={"DATABASE_URL": migrated_dsn}, unset=("TOKENGATE_",)
    )
    assert done.returncode == 2
    assert "TOKENGATE_BACKEND_DB_PASSWORD" in done.stderr
    assert "TOKENGATE_GATEWAY_DB_PASSWORD" in done.stderr  # both, in one run
