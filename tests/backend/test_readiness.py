"""Readiness against a database that really goes away and comes back."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg
from internal_auth import KeySet, generate_private_key
from starlette.testclient import TestClient

from backend.app import create_app
from backend.passwords import Passwords
from tests.backend.conftest import FAST_ARGON2, make_settings
from tests.conftest import PG_ADMIN_DSN
from tokengate.migrate import migrate


async def _allow_connections(dbname: str, allowed: bool) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'ALTER DATABASE "{dbname}" ALLOW_CONNECTIONS {str(allowed).lower()}')
        if not allowed:
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                dbname,
            )
    finally:
        await conn.close()


def test_readyz_is_503_while_the_database_is_unreachable_and_recovers(
    new_database: Callable[[], str],
) -> None:
    dsn = new_database()
    dbname = dsn.rpartition("/")[2]
    asyncio.run(migrate(dsn))
    key = generate_private_key()
    app = create_app(make_settings(dsn, KeySet([key.public_key])), passwords=Passwords(FAST_ARGON2))
    with TestClient(app, raise_server_exceptions=False) as client:
        assert client.get("/readyz").status_code == 200
        asyncio.run(_allow_connections(dbname, False))
        try:
            down = client.get("/readyz")
            assert down.status_code == 503
            assert down.headers["Retry-After"] == "2"
            assert down.json()["checks"] == {"postgres": "unreachable"}
            assert client.get("/healthz").status_code == 200
        finally:
            asyncio.run(_allow_connections(dbname, True))
        deadline = time.monotonic() + 10
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "backend did not recover"
            time.sleep(0.2)
