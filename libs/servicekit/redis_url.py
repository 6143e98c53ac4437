"""``REDIS_URL``: one parser and one client factory for every Redis client of both services and
the command line (rate limits, the revocation channel, the DPoP replay cache, epochs).

Two forms:

- a plain server: ``redis://[user:pass@]host:port[/db]``, ``rediss://...`` (TLS), ``unix://...``;
- Redis Sentinel: ``redis+sentinel://[user:pass@]h1:26379,h2:26379/<service>[?db=N]`` or
  ``rediss+sentinel://...`` (TLS to the sentinels and to the master). ``user:pass`` are the
  *master's* credentials; the sentinels' own password is separate
  (``REDIS_SENTINEL_PASSWORD`` or ``REDIS_SENTINEL_PASSWORD_FILE``), because sending the data
  password to the sentinels (or none at all) is the trap other gateways shipped.

Whatever the form, a connection that answers ``READONLY`` is talking to a replica: a demoted
master (Sentinel failover) or a virtual IP that now points at one. Left alone, every write on it
fails forever (the "READONLY storm"), so every connection class made here turns that answer into a
connection error: the connection is dropped and the next one asks Sentinel (or the name) again.
redis-py's ``SentinelManagedConnection`` does this only for Sentinel master pools; the plain
classes below add it for a plain URL too.

Every client made here reads and writes the master only: nothing in tokengate may trust a
replica's copy (a rate-limit count read from a lagging replica lets a burst through).

Bounded: the URL at most :data:`MAX_URL_LENGTH` characters, at most :data:`MAX_SENTINELS` hosts,
a service name of at most 64 characters from a small alphabet; each sentinel is asked in turn
with the caller's socket timeouts, so finding the master takes at most hosts x timeout.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
import redis.asyncio as aioredis
import redis.asyncio.connection as aconn
import redis.asyncio.sentinel as asentinel
import redis.connection as sconn
import redis.sentinel as ssentinel
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ReadOnlyError, ResponseError

from servicekit.config import ConfigError, env_or_file

__all__ = [
    "MAX_SENTINELS",
    "MAX_URL_LENGTH",
    "RedisTarget",
    "async_client",
    "current_master",
    "from_env",
    "is_master",
    "parse",
    "problems",
    "sync_pool",
]

MAX_URL_LENGTH = 2048
MAX_SENTINELS = 16
SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
PLAIN_SCHEMES = {"redis", "rediss", "unix"}
_SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MAX_DB = 1_000_000  # Redis' "databases" is an int; anything larger is a typo


@dataclass(frozen=True)
class RedisTarget:
    """A parsed ``REDIS_URL``. The ``repr`` and :meth:`describe` never show a password."""

    url: str = field(repr=False)
    #: ``(host, port)`` of each sentinel, in the URL's order; empty for a plain server
    sentinels: tuple[tuple[str, int], ...] = ()
    service: str | None = None
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_password: str | None = field(default=None, repr=False)

    @property
    def is_sentinel(self) -> bool:
        return bool(self.sentinels)

    def describe(self) -> str:
        """For logs and errors: the form and the hosts, never a credential."""
        if not self.is_sentinel:
            parts = urlsplit(self.url)
            host = parts.hostname or parts.path or "?"
            return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")
        hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        return f"{scheme}://{hosts}/{self.service}"


def _host_port(item: str, default_port: int) -> tuple[str, int]:
    if item.startswith("["):  # IPv6 literal
        host, sep, rest = item[1:].partition("]")
        if not sep or not host:
            raise ValueError("an IPv6 host must be written [addr]:port")
        port_text = rest[1:] if rest.startswith(":") else rest
        if rest and not rest.startswith(":"):
            raise ValueError("an IPv6 host must be written [addr]:port")
    else:
        host, _, port_text = item.partition(":")
        if not host or ":" in port_text:
            raise ValueError(f"{item!r} is not host[:port]")
    if not port_text:
        return host, default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{item!r} has an invalid port")
    return host, int(port_text)


def _parse_sentinel(url: str, tls: bool, sentinel_password: str | None) -> RedisTarget:
    rest = url.split("://", 1)[1]
    netloc, slash, tail = rest.partition("/")
    path, _, query = tail.partition("?")
    userinfo, at, hostlist = netloc.rpartition("@")
    if not at:
        hostlist, userinfo = netloc, ""
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon and secret else None
    items = [h.strip() for h in hostlist.split(",")]
    if not hostlist or any(not h for h in items):
        raise ValueError("name at least one sentinel host:port, comma-separated")
    if len(items) > MAX_SENTINELS:
        raise ValueError(f"at most {MAX_SENTINELS} sentinel hosts")
    sentinels = tuple(_host_port(item, 26379) for item in items)
    service = unquote(path)
    if not slash or not _SERVICE.fullmatch(service):
        raise ValueError(
            "the path must be the Sentinel service name (letters, digits, '.', '_', '-')"
        )
    db = 0
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key != "db":
            raise ValueError(f"unknown option {key!r} (only db=N)")
        if not value.isdigit() or int(value) > _MAX_DB:
            raise ValueError("db must be a whole number")
        db = int(value)
    return RedisTarget(
        url=url,
        sentinels=sentinels,
        service=service,
        db=db,
        tls=tls,
        username=username,
        password=password,
        sentinel_password=sentinel_password,
    )


def parse(url: str, *, sentinel_password: str | None = None) -> RedisTarget:
    """Parse a ``REDIS_URL``; :class:`ConfigError` naming the variable, never echoing the URL
    (it may hold a password)."""
    if len(url) > MAX_URL_LENGTH:
        raise ConfigError(f"REDIS_URL is longer than {MAX_URL_LENGTH} characters")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in SENTINEL_SCHEMES:
        try:
            return _parse_sentinel(url, SENTINEL_SCHEMES[scheme], sentinel_password)
        except ValueError as exc:
            raise ConfigError(f"REDIS_URL ({scheme}): {exc}") from None
    if scheme not in PLAIN_SCHEMES:
        raise ConfigError(
            "REDIS_URL must start with redis://, rediss://, unix://, redis+sentinel:// or "
            "rediss+sentinel:// (Redis Cluster is not supported)"
        )
    if sentinel_password is not None:
        raise ConfigError("REDIS_SENTINEL_PASSWORD is set but REDIS_URL is not a Sentinel URL")
    try:
        # redis-py's own parser, so a plain URL means exactly what it always meant
        sconn.parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise ConfigError(f"REDIS_URL: {exc}") from None
    return RedisTarget(url=url, tls=scheme == "rediss")


def from_env(environ: Mapping[str, str]) -> RedisTarget:
    """``REDIS_URL`` with ``REDIS_SENTINEL_PASSWORD`` (or ``..._FILE``)."""
    url = environ.get("REDIS_URL")
    if not url:
        raise ConfigError("REDIS_URL is not set")
    password = env_or_file(environ, "REDIS_SENTINEL_PASSWORD", required=False)
    return parse(url, sentinel_password=password)


def problems(environ: Mapping[str, str]) -> list[str]:
    """Every problem with the Redis settings, for a start-up check that lists them all."""
    try:
        from_env(environ)
    except ConfigError as exc:
        return [str(exc)]
    return []


# -- connections that drop themselves on READONLY ------------------------------------------------


def _readonly_dropped() -> RedisConnectionError:
    return RedisConnectionError("READONLY: this server is a replica now; connection dropped")


class _AsyncDropOnReadOnly(aconn.AbstractConnection):
    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except ReadOnlyError:
            # a replica behind our address (failover behind a virtual IP): never write here again
            await self.disconnect()
            raise _readonly_dropped() from None


class AsyncConnection(_AsyncDropOnReadOnly, aconn.Connection):
    pass


class AsyncSSLConnection(_AsyncDropOnReadOnly, aconn.SSLConnection):
    pass


class AsyncUnixConnection(_AsyncDropOnReadOnly, aconn.UnixDomainSocketConnection):
    pass


class _SyncDropOnReadOnly(sconn.AbstractConnection):
    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[no-untyped-call]
        except ReadOnlyError:
            self.disconnect()  # type: ignore[no-untyped-call]
            raise _readonly_dropped() from None


class SyncConnection(_SyncDropOnReadOnly, sconn.Connection):
    pass


class SyncSSLConnection(_SyncDropOnReadOnly, sconn.SSLConnection):
    pass


class SyncUnixConnection(_SyncDropOnReadOnly, sconn.UnixDomainSocketConnection):
    pass


def _plain_class(url: str, *, asynchronous: bool) -> type[Any]:
    scheme = url.split("://", 1)[0].lower()
    if asynchronous:
        return {"rediss": AsyncSSLConnection, "unix": AsyncUnixConnection}.get(
            scheme, AsyncConnection
        )
    return {"rediss": SyncSSLConnection, "unix": SyncUnixConnection}.get(scheme, SyncConnection)


def _sentinel_kwargs(target: RedisTarget, options: Mapping[str, Any]) -> dict[str, Any]:
    """How to talk to the sentinels: their own password, the caller's socket timeouts, TLS."""
    out = {k: v for k, v in options.items() if k.startswith("socket_")}
    if target.sentinel_password is not None:
        out["password"] = target.sentinel_password
    if target.tls:
        out["ssl"] = True
    return out


#: where a Sentinel-managed connection points before Sentinel named the master. redis-py 7.4's
#: asyncio ``send_packed_command`` connects a disconnected connection itself, bypassing
#: ``SentinelManagedConnection.connect`` (which asks Sentinel): left at redis-py's default
#: (localhost:6379) that would silently talk to whatever Redis runs on the machine. A name that
#: cannot resolve (RFC 6761 ``.invalid``) makes that path a connection error instead: fail closed,
#: and the retry reconnects through Sentinel.
UNRESOLVED_MASTER = "sentinel-master-not-resolved.invalid"


def _master_kwargs(target: RedisTarget, options: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(options)
    out["host"] = UNRESOLVED_MASTER
    out["db"] = target.db
    if target.username is not None:
        out["username"] = target.username
    if target.password is not None:
        out["password"] = target.password
    if target.tls:
        out["ssl"] = True
    return out


def _pool(target: RedisTarget, options: Mapping[str, Any], *, asynchronous: bool) -> Any:
    sentinels: Any = asentinel if asynchronous else ssentinel
    if target.is_sentinel:
        sentinel = sentinels.Sentinel(
            list(target.sentinels), sentinel_kwargs=_sentinel_kwargs(target, options)
        )
        return sentinels.SentinelConnectionPool(
            target.service, sentinel, is_master=True, **_master_kwargs(target, options)
        )
    plain: Any = aioredis.ConnectionPool if asynchronous else redis.ConnectionPool
    connection_class = _plain_class(target.url, asynchronous=asynchronous)
    return plain.from_url(target.url, connection_class=connection_class, **options)


def async_pool(target: RedisTarget, **options: Any) -> aioredis.ConnectionPool:
    """A connection pool to the master (found through Sentinel, or the URL's server)."""
    pool: aioredis.ConnectionPool = _pool(target, options, asynchronous=True)
    return pool


def async_client(target: RedisTarget, **options: Any) -> aioredis.Redis:
    """An asyncio client on :func:`async_pool` (``options``: socket timeouts and the like)."""
    return aioredis.Redis(connection_pool=async_pool(target, **options))


def sync_pool(target: RedisTarget, **options: Any) -> redis.ConnectionPool:
    """The blocking twin of :func:`async_pool` (``limits``' synchronous storage)."""
    pool: redis.ConnectionPool = _pool(target, options, asynchronous=False)
    return pool


async def is_master(client: aioredis.Redis) -> bool:
    """Whether ``client`` reaches a master that takes writes (``ROLE``; readiness).

    A server that refuses ``ROLE`` (an ACL, a managed service) is judged by ``PING`` alone.
    """
    try:
        role = await client.execute_command("ROLE")  # type: ignore[no-untyped-call]
    except ResponseError:
        return bool(await client.execute_command("PING"))  # type: ignore[no-untyped-call]
    first = role[0] if isinstance(role, list | tuple) and role else b""
    return first in (b"master", "master")


def current_master(pool: aioredis.ConnectionPool | redis.ConnectionPool) -> str | None:
    """``host:port`` of the master the pool talks to now, or ``None`` before Sentinel named one.

    A plain URL's is its own host; a Sentinel pool's is the last master Sentinel named.
    """
    address = getattr(pool, "master_address", None)
    if isinstance(pool, asentinel.SentinelConnectionPool | ssentinel.SentinelConnectionPool):
        if address is None:
            return None
        host, port = address
        return f"{host}:{port}"
    kwargs = pool.connection_kwargs
    if "path" in kwargs:
        return f"unix:{kwargs['path']}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"
