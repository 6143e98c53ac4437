"""PostgreSQL for both services: one bounded pool, and one answer to "is the database down?".

:data:`UNAVAILABLE` is every exception class that means the connection or the server went away,
or did not answer in time; each service maps exactly these to 503 with ``Retry-After`` (never to a
500), and nothing else. The classes are the ones the fault-injection test
(``tests/faults/test_faults.py``) provokes by killing, restarting and stalling PostgreSQL under
load:

- the server refuses or resets connections: :class:`OSError` (``ConnectionRefusedError``, ...);
- a fast shutdown ends sessions: ``AdminShutdownError`` (57P01), ``CannotConnectNowError``
  (57P03) while it starts or stops, ``CrashShutdownError`` (57P02), all
  :class:`asyncpg.OperatorInterventionError`;
- a query in flight is cut: ``ConnectionDoesNotExistError`` (a
  :class:`asyncpg.PostgresConnectionError`), :class:`asyncpg.InternalClientError` (the protocol
  saw the socket close mid-message), :class:`asyncpg.InterfaceError` ("connection is closed",
  "pool is closing");
- too slow: :class:`TimeoutError` (pool acquire timeout, ``command_timeout``) and
  ``QueryCanceledError`` (57014, a server-side ``statement_timeout``);
- :class:`asyncpg.TooManyConnectionsError`;
- a failover (``DATABASE_URL`` naming a primary and its standbys, :mod:`servicekit.pg_url`):
  ``ReadOnlySQLTransactionError`` (25006) from a server that is a standby now, and
  ``TargetServerAttributeNotMatched`` (an :class:`asyncpg.InternalClientError`) while no listed
  host accepts writes yet.

On any of these :class:`Database` also expires every pooled connection: after a failover the
idle ones point at the old primary (dead, or a standby now), and each would otherwise cost one
more request its 503. The next acquire connects afresh, and asyncpg's
``target_session_attrs=read-write`` picks the new primary.

Every mapped occurrence is logged at ERROR with its class and counted (:class:`Outages`), so a
real bug that happens to raise one of these is not silently turned into a stream of 503s.
``InterfaceError`` subclasses that are also ``ValueError`` (bad query arguments, bad client
configuration) are caller bugs, not outages: :func:`is_unavailable` refuses them.

:class:`Database` wraps an asyncpg pool so that *waiting* is bounded too: asyncpg's own
``Pool.fetch`` and friends acquire a connection with no timeout, so under a stalled database
requests would queue for a free connection forever.
"""

from __future__ import annotations

import collections
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg
from starlette.requests import Request
from starlette.responses import Response

from servicekit import pg_url
from servicekit.config import ConfigError, Problems, get_float, get_int
from servicekit.http_errors import error_response
from servicekit.logs import log_event

ExceptionHandler = Callable[[Request, Exception], Awaitable[Response]]

UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.OperatorInterventionError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    # a write reached a standby: the primary failed over under this pool
    asyncpg.ReadOnlySQLTransactionError,
)


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means PostgreSQL is unreachable, gone or too slow right now."""
    if isinstance(exc, asyncpg.InterfaceError) and isinstance(exc, ValueError):
        return False
    return isinstance(exc, UNAVAILABLE)


class Outages:
    """Counts database failures answered with 503, by exception class, and logs each one."""

    def __init__(
        self, logger: logging.Logger, *, on_record: Callable[[str], None] | None = None
    ) -> None:
        self._logger = logger
        # on_record(exception class name): the metrics counter (servicekit.metrics)
        self._on_record = on_record
        self.counts: collections.Counter[str] = collections.Counter()

    def record(self, exc: BaseException, **fields: Any) -> None:
        name = type(exc).__name__
        self.counts[name] += 1
        if self._on_record is not None:
            self._on_record(name)
        # ERROR, not WARNING: a 503 from the database is either an outage an operator must see
        # or a bug hiding behind one of these classes.
        log_event(
            self._logger,
            "database_unavailable",
            logging.ERROR,
            exc_type=name,
            count=self.counts[name],
            **fields,
        )


def exception_handlers(
    *, retry_after: int, message: str, otherwise: ExceptionHandler
) -> dict[type[BaseException], ExceptionHandler]:
    """The app's handlers for :data:`UNAVAILABLE`: 503 ``service_unavailable`` with
    ``Retry-After``, recorded in ``app.state.db_outages`` (an :class:`Outages`); an exception of
    these classes that is not an outage (:func:`is_unavailable`) goes to ``otherwise``."""

    async def database_unavailable(request: Request, exc: Exception) -> Response:
        if not is_unavailable(exc):
            return await otherwise(request, exc)
        request.app.state.db_outages.record(exc, path=request.url.path)
        return error_response(
            503, "service_unavailable", message, {"Retry-After": str(retry_after)}
        )

    return dict.fromkeys(UNAVAILABLE, database_unavailable)


@dataclass(frozen=True)
class PoolSettings:
    """``DB_POOL_MIN``, ``DB_POOL_MAX`` and the three timeouts, read alike by both services."""

    min_size: int = 0
    max_size: int = 10
    #: seconds to open one connection
    connect_timeout: float = 3.0
    #: seconds a request waits for a free pooled connection
    acquire_timeout: float = 2.0
    #: seconds one statement may run (asyncpg cancels it on the server after that)
    command_timeout: float = 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str], *, min_size: int = 0) -> PoolSettings:
        p = Problems()
        low = p.take(lambda: get_int(environ, "DB_POOL_MIN", min_size), min_size)
        high = p.take(lambda: get_int(environ, "DB_POOL_MAX", 10, minimum=1), max(low, 1))
        if low > high:
            p.messages.append("DB_POOL_MIN must not exceed DB_POOL_MAX")
        settings = cls(
            min_size=low,
            max_size=high,
            connect_timeout=p.take(lambda: _positive(environ, "DB_CONNECT_TIMEOUT", 3.0), 1.0),
            acquire_timeout=p.take(lambda: _positive(environ, "DB_ACQUIRE_TIMEOUT", 2.0), 1.0),
            command_timeout=p.take(lambda: _positive(environ, "DB_COMMAND_TIMEOUT", 5.0), 1.0),
        )
        p.check()
        return settings


def _positive(environ: Mapping[str, str], name: str, default: float) -> float:
    value = get_float(environ, name, default)
    if value <= 0:
        raise ConfigError(f"{name} must be more than 0 seconds, got {value}")
    return value


class Database:
    """An asyncpg pool whose every wait is bounded: connect, acquire and each statement.

    It offers the pool methods the stores use (``acquire``, ``fetch``, ``fetchrow``, ``fetchval``,
    ``execute``), so a store takes either. Every use goes through :meth:`acquire`, which expires
    the whole pool when the database answers with one of :data:`UNAVAILABLE` (see the module
    docstring), and remembers which listed host the last connection reached
    (:attr:`host_index`, -1 before the first).
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: PoolSettings,
        hosts: tuple[tuple[str, int], ...] = (),
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.hosts = hosts
        self.host_index = -1
        #: times the pool was expired after a failure (a failover, a restart)
        self.expirations = 0

    @classmethod
    async def connect(cls, dsn: str, settings: PoolSettings) -> Database:
        hosts = pg_url.hosts(dsn)
        pool = await asyncpg.create_pool(
            dsn,
            min_size=settings.min_size,
            max_size=settings.max_size,
            timeout=settings.connect_timeout,
            command_timeout=settings.command_timeout,
        )
        return cls(pool, settings, hosts)

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        try:
            async with self.pool.acquire(timeout=self.settings.acquire_timeout) as conn:
                # asyncpg's (host, port) of the server this connection reached
                self.host_index = pg_url.host_index(self.hosts, getattr(conn, "_addr", None))
                yield conn
        except BaseException as exc:
            if is_unavailable(exc) and not isinstance(exc, TimeoutError):
                # not on a timeout: a stalled server is not a failover, and reconnecting every
                # connection to it would only add load
                await self.expire()
            raise

    async def expire(self) -> None:
        """Close every pooled connection at its next release; new ones connect afresh."""
        self.expirations += 1
        with contextlib.suppress(Exception):
            await self.pool.expire_connections()

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async with self.acquire() as conn:
            return list(await conn.fetch(query, *args))

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        async with self.acquire() as conn:
            return await conn.fetchrow(query, *args)

    async def fetchval(self, query: str, *args: Any) -> Any:
        async with self.acquire() as conn:
            return await conn.fetchval(query, *args)

    async def execute(self, query: str, *args: Any) -> str:
        async with self.acquire() as conn:
            return str(await conn.execute(query, *args))

    async def close(self) -> None:
        await self.pool.close()
