"""Session-wide test resources: a fresh PostgreSQL database and a private Redis key prefix.

Tests talk to the real PostgreSQL and Redis on this machine. Each pytest session creates its own
database (dropped at the end) and its own Redis prefix, so two runs at once never see each other's
rows, keys or pub/sub channels.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Iterator

import asyncpg
import pytest
import redis
from hypothesis import HealthCheck, settings

# Property tests run on a shared 2-core machine: a slow example is load, not a bug, so no
# per-example deadline and no health check on generation speed. Each test sets its own bound.
settings.register_profile("tokengate", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("tokengate")

PG_ADMIN_DSN = os.environ.get("TOKENGATE_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_BASE_URL = os.environ.get("TOKENGATE_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _dsn_for(dbname: str) -> str:
    base, _, _ = PG_ADMIN_DSN.rpartition("/")
    return f"{base}/{dbname}"


async def _create_db(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


async def _drop_db(name: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """DSN (superuser) of an empty database that exists for this test session only."""
    name = f"tokengate_test_{os.getpid()}_{secrets.token_hex(4)}"
    asyncio.run(_create_db(name))
    try:
        yield _dsn_for(name)
    finally:
        asyncio.run(_drop_db(name))


@pytest.fixture(scope="session")
def new_database() -> Iterator[object]:
    """Factory for extra throw-away databases (migration tests want a pristine one each)."""
    created: list[str] = []

    def make() -> str:
        name = f"tokengate_test_{os.getpid()}_{secrets.token_hex(4)}"
        asyncio.run(_create_db(name))
        created.append(name)
        return _dsn_for(name)

    yield make
    for name in created:
        asyncio.run(_drop_db(name))


@pytest.fixture(scope="session")
def migrated_dsn(pg_dsn: str) -> str:
    """``pg_dsn`` with every migration in ``db/`` applied."""
    from tokengate.migrate import migrate

    asyncio.run(migrate(pg_dsn))
    return pg_dsn


@pytest.fixture(scope="session")
def redis_prefix() -> Iterator[str]:
    """A key and pub/sub channel prefix private to this session; its keys are deleted at the end."""
    prefix = f"tgtest:{os.getpid()}:{secrets.token_hex(4)}:"
    yield prefix
    client = redis.Redis.from_url(REDIS_BASE_URL)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_url() -> str:
    return REDIS_BASE_URL
