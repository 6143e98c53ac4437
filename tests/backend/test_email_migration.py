"""db/003: the email normal form is stored and unique; colliding rows stop the migration."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import asyncpg
import pytest

from tokengate.migrate import MigrationError, default_directory, migrate

LONG_S = "\u017f"


def _before_003(tmp_path: Path) -> Path:
    """A migrations folder holding only the files before 003 (a database of an older release)."""
    folder = tmp_path / "old"
    folder.mkdir()
    for path in default_directory().iterdir():
        if path.suffix == ".sql" and path.name[:3] < "003":
            shutil.copy(path, folder / path.name)
    return folder


async def _exec(dsn: str, *statements: tuple[str, tuple[object, ...]]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for sql, args in statements:
            await conn.execute(sql, *args)
    finally:
        await conn.close()


async def _fetch(dsn: str, sql: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def _old_user(email: str) -> tuple[str, tuple[object, ...]]:
    return (
        "INSERT INTO users (id, email, password_hash) VALUES (gen_random_uuid(), $1, 'x')",
        (email,),
    )


def test_existing_rows_get_their_normal_form(
    new_database: Callable[[], str], tmp_path: Path
) -> None:
    dsn = new_database()
    asyncio.run(migrate(dsn, _before_003(tmp_path)))
    # what the old backend stored: trimmed and casefolded, but not NFKC
    asyncio.run(_exec(dsn, _old_user("\uff53\uff41\uff4d@example.test"), _old_user("bob@x.test")))
    asyncio.run(migrate(dsn))
    rows = asyncio.run(_fetch(dsn, "SELECT email, email_normal FROM users ORDER BY email"))
    assert [(r["email"], r["email_normal"]) for r in rows] == [
        ("bob@x.test", "bob@x.test"),
        ("\uff53\uff41\uff4d@example.test", "sam@example.test"),
    ]
    # the database itself now refuses a second row with the same normal form
    with pytest.raises(asyncpg.UniqueViolationError):
        asyncio.run(
            _exec(
                dsn,
                (
                    "INSERT INTO users (id, email, email_normal, password_hash)"
                    " VALUES (gen_random_uuid(), 'SAM@example.test', 'sam@example.test', 'x')",
                    (),
                ),
            )
        )
    # and a row without a normal form at all (another tool writing users) is refused too
    with pytest.raises(asyncpg.NotNullViolationError):
        asyncio.run(_exec(dsn, _old_user("carol@x.test")))


def test_colliding_rows_stop_the_migration_and_are_listed(
    new_database: Callable[[], str], tmp_path: Path
) -> None:
    dsn = new_database()
    asyncio.run(migrate(dsn, _before_003(tmp_path)))
    asyncio.run(_exec(dsn, _old_user(f"{LONG_S}am@example.test"), _old_user("sam@example.test")))
    with pytest.raises(MigrationError) as caught:
        asyncio.run(migrate(dsn))
    message = str(caught.value)
    assert "003_accounts.sql" in message
    assert f"{LONG_S}am@example.test" in message and "'sam@example.test'" in message
    # nothing half done: the file's transaction rolled back, 003 is still pending
    columns = asyncio.run(
        _fetch(
            dsn,
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'users'",
        )
    )
    assert "email_normal" not in {r[0] for r in columns}
    applied = asyncio.run(_fetch(dsn, "SELECT name FROM schema_migrations"))
    assert "003_accounts.sql" not in {r[0] for r in applied}

    # the command line says the same and exits 1
    done = subprocess.run(
        [sys.executable, "-m", "tokengate.cli", "migrate", "--database-url", dsn],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert f"{LONG_S}am@example.test" in done.stderr

    # the operator keeps one account; migrating again then succeeds
    asyncio.run(_exec(dsn, ("DELETE FROM users WHERE email = $1", (f"{LONG_S}am@example.test",))))
    assert "003_accounts.sql" in asyncio.run(migrate(dsn))
    rows = asyncio.run(_fetch(dsn, "SELECT email_normal FROM users"))
    assert [r[0] for r in rows] == ["sam@example.test"]
