"""Migrations against real PostgreSQL: fresh apply, re-apply is a no-op, concurrent apply."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg

from tokengate.migrate import default_directory, migrate, migration_files

EXPECTED = [p.name for p in migration_files(default_directory())]


async def _schema(dsn: str) -> list[tuple[str, str, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'public' ORDER BY 1, 2"
        )
        return [(r[0], r[1], r[2]) for r in rows]
    finally:
        await conn.close()


def test_fresh_database_gets_the_full_schema(new_database: Callable[[], str]) -> None:
    dsn = new_database()
    applied = asyncio.run(migrate(dsn))
    assert applied == EXPECTED
    tables = {t for t, _, _ in asyncio.run(_schema(dsn))}
    assert {
        "users",
        "notes",
        "refresh_token_family",
        "refresh_session",
        "schema_migrations",
    } <= tables


def test_reapplying_changes_nothing(new_database: Callable[[], str]) -> None:
    dsn = new_database()
    asyncio.run(migrate(dsn))
    before = asyncio.run(_schema(dsn))
    assert asyncio.run(migrate(dsn)) == []
    assert asyncio.run(_schema(dsn)) == before


def test_files_are_idempotent_even_without_the_ledger(new_database: Callable[[], str]) -> None:
    """A database migrated by hand (or a lost schema_migrations row) is still safe."""
    dsn = new_database()
    asyncio.run(migrate(dsn))

    async def forget_and_rerun() -> list[str]:
        conn = await asyncpg.connect(dsn)
        await conn.execute("DELETE FROM schema_migrations")
        await conn.close()
        return await migrate(dsn)

    assert asyncio.run(forget_and_rerun()) == EXPECTED


def test_concurrent_runs_apply_each_file_once(new_database: Callable[[], str]) -> None:
    dsn = new_database()

    async def race() -> list[list[str]]:
        return list(await asyncio.gather(*(migrate(dsn) for _ in range(6))))

    results = asyncio.run(race())
    applied = [name for result in results for name in result]
    assert sorted(applied) == sorted(EXPECTED)

    async def ledger() -> list[str]:
        conn = await asyncpg.connect(dsn)
        try:
            return [r[0] for r in await conn.fetch("SELECT name FROM schema_migrations ORDER BY 1")]
        finally:
            await conn.close()

    assert asyncio.run(ledger()) == EXPECTED


def test_roles_reach_only_their_own_tables(migrated_dsn: str) -> None:
    async def privileges() -> dict[str, set[str]]:
        conn = await asyncpg.connect(migrated_dsn)
        try:
            rows = await conn.fetch(
                "SELECT grantee, table_name FROM information_schema.role_table_grants"
                " WHERE grantee IN ('tokengate_backend', 'tokengate_gateway')"
            )
        finally:
            await conn.close()
        out: dict[str, set[str]] = {"tokengate_backend": set(), "tokengate_gateway": set()}
        for r in rows:
            out[r[0]].add(r[1])
        return out

    grants = asyncio.run(privileges())
    # the audit tables: INSERT only for events, own rows only (row-level security,
    # tests/audit/test_audit_storage.py)
    assert grants["tokengate_backend"] == {"users", "notes", "audit_events", "audit_heads"}
    assert grants["tokengate_gateway"] == {
        "refresh_session",
        "refresh_token_family",
        "audit_events",
        "audit_heads",
    }


def test_backend_role_cannot_read_the_refresh_ledger(migrated_dsn: str) -> None:
    base, _, dbname = migrated_dsn.rpartition("/")
    host = base.split("@")[-1]
    backend_dsn = f"postgresql://tokengate_backend@{host}/{dbname}"

    async def attempt() -> str:
        conn = await asyncpg.connect(backend_dsn)
        try:
            await conn.fetch("SELECT 1 FROM users LIMIT 1")
            try:
                await conn.fetch("SELECT 1 FROM refresh_token_family LIMIT 1")
            except asyncpg.InsufficientPrivilegeError:
                return "denied"
            return "allowed"
        finally:
            await conn.close()

    assert asyncio.run(attempt()) == "denied"
