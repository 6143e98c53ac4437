"""Apply the numbered SQL migrations in ``db/`` in order, each once, each in its own transaction.

``tokengate migrate`` calls :func:`migrate`. Concurrent runs (two replicas starting at once) are
serialised by a PostgreSQL advisory lock, so the second one finds everything applied and does
nothing. The files themselves are idempotent too, so a database migrated by hand is safe.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from servicekit import config, pg_url
from servicekit.commands import NotFound

from tokengate import email_backfill

# Any fixed 64-bit number works; it only has to be the same for every migrate run.
_LOCK_ID = 0x746F6B656E67  # "tokeng"
_NAME = re.compile(r"^(\d{3})_[a-z0-9_]+\.sql$")


class MigrationError(Exception):
    """A migration file could not be applied; the message names it."""


#: Steps that SQL cannot express, run right after their file in the same transaction (so a
#: failure rolls the file back too). They must be idempotent like the files.
PYTHON_STEPS: dict[str, Callable[[asyncpg.Connection], Awaitable[None]]] = {
    email_backfill.MIGRATION: email_backfill.backfill,
}


def default_directory() -> Path:
    configured = os.environ.get("TOKENGATE_MIGRATIONS_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parent.parent / "db"


def migration_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise MigrationError(
            f"migrations folder {str(directory)!r} not found (set TOKENGATE_MIGRATIONS_DIR)"
        )
    files = sorted(p for p in directory.iterdir() if _NAME.match(p.name))
    numbers = [p.name[:3] for p in files]
    if len(set(numbers)) != len(numbers):
        raise MigrationError("two migration files share a number in " + repr(str(directory)))
    return files


async def migrate(dsn: str, directory: Path | None = None) -> list[str]:
    """Apply pending migrations; return the names applied by this call (empty when up to date)."""
    files = migration_files(directory or default_directory())
    conn = await asyncpg.connect(dsn)
    applied: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_ID)
        try:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
            done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
            for path in files:
                if path.name in done:
                    continue
                sql = path.read_text(encoding="utf-8")
                try:
                    async with conn.transaction():
                        await conn.execute(sql)
                        step = PYTHON_STEPS.get(path.name)
                        if step is not None:
                            await step(conn)
                        await conn.execute(
                            "INSERT INTO schema_migrations (name) VALUES ($1)", path.name
                        )
                except (asyncpg.PostgresError, email_backfill.EmailCollision) as exc:
                    raise MigrationError(f"{path.name}: {exc}") from exc
                applied.append(path.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_ID)
    finally:
        await conn.close()
    return applied


ROLE_PASSWORD_VARIABLES = {
    "tokengate_backend": "TOKENGATE_BACKEND_DB_PASSWORD",
    "tokengate_gateway": "TOKENGATE_GATEWAY_DB_PASSWORD",
}


async def set_role_passwords(dsn: str, passwords: dict[str, str]) -> list[str]:
    """Give each service role its login password; return the roles changed.

    ``ALTER ROLE`` takes no bind parameters, so PostgreSQL itself quotes the name and the
    password (``format('%I', '%L')``) rather than this code building SQL from strings.
    """
    unknown = set(passwords) - set(ROLE_PASSWORD_VARIABLES)
    if unknown:
        raise MigrationError(f"not a tokengate role: {sorted(unknown)[0]}")
    conn = await asyncpg.connect(dsn)
    changed: list[str] = []
    try:
        for role, password in sorted(passwords.items()):
            statement = await conn.fetchval(
                "SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)", role, password
            )
            try:
                await conn.execute(statement)
            except asyncpg.UndefinedObjectError:
                raise MigrationError(
                    f"role {role} does not exist (run migrations as a user "
                    "that may create roles, or create it yourself)"
                ) from None
            changed.append(role)
    finally:
        await conn.close()
    return changed


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser("migrate", help="apply pending database migrations from db/")
    parser.add_argument("--database-url", help="PostgreSQL DSN (default: $DATABASE_URL)")
    parser.add_argument(
        "--set-role-passwords",
        action="store_true",
        help="also set the service roles' passwords from TOKENGATE_BACKEND_DB_PASSWORD and "
        "TOKENGATE_GATEWAY_DB_PASSWORD (or their _FILE forms)",
    )
    parser.set_defaults(func=_migrate)


def _migrate(args: argparse.Namespace) -> int:
    if args.database_url:
        dsn = pg_url.checked(args.database_url, name="--database-url")
    else:
        dsn = pg_url.checked(config.get_str(config.environ(), "DATABASE_URL"))
    passwords: dict[str, str] = {}
    if args.set_role_passwords:
        problems = config.Problems()  # both variables named when both are missing
        for role, variable in ROLE_PASSWORD_VARIABLES.items():
            passwords[role] = problems.take(
                functools.partial(config.env_or_file, config.environ(), variable), ""
            )
        problems.check()
    try:
        applied = asyncio.run(migrate(dsn))
        changed = asyncio.run(set_role_passwords(dsn, passwords)) if passwords else []
    except MigrationError as exc:
        # a file the database refused (exit 1); a database down or a role lacking rights goes
        # to the command line's one mapping (3, 4)
        raise NotFound(str(exc)) from None
    for name in applied:
        print(f"applied {name}")
    if not applied:
        print("database is up to date")
    for role in changed:
        print(f"set password for role {role}")
    return 0
