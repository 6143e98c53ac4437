"""servicekit.db against the real PostgreSQL: what counts as "down", and that every wait ends."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import asyncpg
import pytest
from servicekit.config import ConfigError
from servicekit.db import Database, Outages, PoolSettings, is_unavailable
from servicekit.logs import JsonFormatter


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(),
        ConnectionResetError(),
        TimeoutError(),
        asyncpg.InternalClientError("unexpected message"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.CrashShutdownError("crash"),
        asyncpg.QueryCanceledError("canceling statement due to statement timeout"),
        asyncpg.TooManyConnectionsError("too many clients"),
        asyncpg.InterfaceError("connection is closed"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_connection_and_server_failures_are_unavailable(exc: BaseException) -> None:
    assert is_unavailable(exc)


@pytest.mark.parametrize(
    "exc",
    [
        # bugs in the caller, not outages: they must stay 500s so someone notices
        asyncpg.exceptions._base.DataError("invalid input for query argument $1"),
        asyncpg.ClientConfigurationError("bad option"),
        asyncpg.UniqueViolationError("duplicate key"),
        asyncpg.UndefinedTableError("relation does not exist"),
        ValueError("x"),
        RuntimeError("x"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_bugs_are_not_unavailable(exc: BaseException) -> None:
    assert not is_unavailable(exc)


def test_outages_count_by_class_and_log_at_error(caplog: pytest.LogCaptureFixture) -> None:
    outages = Outages(logging.getLogger("test.db"))
    with caplog.at_level(logging.INFO, logger="test.db"):
        outages.record(asyncpg.InternalClientError("x"), path="/v1/me")
        outages.record(asyncpg.InternalClientError("y"))
        outages.record(TimeoutError())
    assert outages.counts == {"InternalClientError": 2, "TimeoutError": 1}
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    assert [(line["level"], line["event"], line["exc_type"], line["count"]) for line in lines] == [
        ("error", "database_unavailable", "InternalClientError", 1),
        ("error", "database_unavailable", "InternalClientError", 2),
        ("error", "database_unavailable", "TimeoutError", 1),
    ]
    assert lines[0]["path"] == "/v1/me"


def test_pool_settings_from_env() -> None:
    settings = PoolSettings.from_env(
        {
            "DB_POOL_MAX": "4",
            "DB_ACQUIRE_TIMEOUT": "0.5",
            "DB_COMMAND_TIMEOUT": "2",
            "DB_CONNECT_TIMEOUT": "1",
        }
    )
    assert settings == PoolSettings(
        min_size=0, max_size=4, connect_timeout=1.0, acquire_timeout=0.5, command_timeout=2.0
    )
    assert PoolSettings.from_env({}) == PoolSettings()


@pytest.mark.parametrize(
    ("environ", "names"),
    [
        ({"DB_POOL_MIN": "5", "DB_POOL_MAX": "2"}, "DB_POOL_MIN"),
        ({"DB_ACQUIRE_TIMEOUT": "0"}, "DB_ACQUIRE_TIMEOUT"),
        ({"DB_COMMAND_TIMEOUT": "soon"}, "DB_COMMAND_TIMEOUT"),
        ({"DB_POOL_MAX": "0"}, "DB_POOL_MAX"),
    ],
)
def test_pool_settings_errors_name_the_variable(environ: dict[str, str], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        PoolSettings.from_env(environ)


async def test_waiting_for_a_free_connection_is_bounded(pg_dsn: str) -> None:
    database = await Database.connect(
        pg_dsn, PoolSettings(max_size=1, acquire_timeout=0.3, command_timeout=5)
    )
    try:
        async with database.acquire():
            started = time.monotonic()
            with pytest.raises(TimeoutError) as caught:
                await database.fetchval("SELECT 1")
            assert time.monotonic() - started < 2
            assert is_unavailable(caught.value)
        assert await database.fetchval("SELECT 1") == 1
    finally:
        await database.close()


async def test_a_statement_that_runs_too_long_is_cancelled(pg_dsn: str) -> None:
    database = await Database.connect(pg_dsn, PoolSettings(max_size=1, command_timeout=0.3))
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            await database.execute("SELECT pg_sleep(5)")
        assert time.monotonic() - started < 2
        # the connection went back to the pool usable: the statement was cancelled server-side
        assert await database.fetchrow("SELECT 1 AS one") is not None
        assert await database.fetch("SELECT 1") and await database.fetchval("SELECT 2") == 2
    finally:
        await database.close()


async def test_the_pool_starts_with_the_server_down_and_connects_when_asked() -> None:
    database = await Database.connect(
        "postgresql://postgres@127.0.0.1:1/postgres", PoolSettings(connect_timeout=0.5)
    )
    try:
        with pytest.raises(OSError) as caught:
            await asyncio.wait_for(database.fetchval("SELECT 1"), 5)
        assert is_unavailable(caught.value)
    finally:
        await database.close()
