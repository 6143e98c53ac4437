"""``DATABASE_URL`` with several hosts: a PostgreSQL primary and its standbys.

``postgresql://user@h1:5432,h2:5432/db?target_session_attrs=read-write`` is libpq's form, and
asyncpg (>= 0.29) connects to the first listed host that accepts writes: after a failover, new
connections reach the promoted standby without a restart. This module only reads the host list
(for the start-up check and for the bounded "which host" label of ``/readyz`` and the metrics);
the connecting itself is asyncpg's.

With several hosts and no ``target_session_attrs=read-write`` (or ``primary``), a connection
could land on a read-only standby and every write on it would fail: refused at start-up.

Bounded: at most :data:`MAX_HOSTS` hosts, the URL at most :data:`MAX_URL_LENGTH` characters.
"""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qsl

from servicekit.config import ConfigError

__all__ = ["MAX_HOSTS", "MAX_URL_LENGTH", "checked", "host_index", "hosts", "problems"]

MAX_HOSTS = 8
MAX_URL_LENGTH = 4096
_WRITABLE = {"read-write", "primary"}


def hosts(dsn: str, *, name: str = "DATABASE_URL") -> tuple[tuple[str, int], ...]:
    """The ``(host, port)`` pairs of a ``postgresql://`` URL, in order. :class:`ConfigError`
    (naming ``name``, never echoing the URL: it may hold a password) when malformed."""
    if len(dsn) > MAX_URL_LENGTH:
        raise ConfigError(f"{name} is longer than {MAX_URL_LENGTH} characters")
    scheme, sep, rest = dsn.partition("://")
    if not sep or scheme not in ("postgres", "postgresql"):
        raise ConfigError(f"{name} must be a postgresql:// URL")
    netloc, _, tail = rest.partition("/")
    query = tail.partition("?")[2] if "?" in tail else rest.partition("?")[2]
    netloc = netloc.partition("?")[0]
    hostlist = netloc.rpartition("@")[2]
    options = dict(parse_qsl(query, keep_blank_values=True))
    default_port = options.get("port", "5432")
    items = [h for h in hostlist.split(",")] if hostlist else []
    if not items and "host" in options:
        items = options["host"].split(",")
    if len(items) > MAX_HOSTS:
        raise ConfigError(f"{name} names more than {MAX_HOSTS} hosts")
    out: list[tuple[str, int]] = []
    for item in items or ["localhost"]:
        if item.startswith("["):
            host, _, port_text = item[1:].partition("]")
            port_text = port_text.removeprefix(":")
        else:
            host, _, port_text = item.partition(":")
        port_text = port_text or default_port
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(f"{name}: host {len(out) + 1} is not host[:port]")
        out.append((host, int(port_text)))
    if len(out) > 1 and options.get("target_session_attrs") not in _WRITABLE:
        raise ConfigError(
            f"{name} names {len(out)} hosts: add target_session_attrs=read-write, or a "
            "connection may land on a read-only standby"
        )
    return tuple(out)


def checked(dsn: str, *, name: str = "DATABASE_URL") -> str:
    """``dsn`` itself once :func:`hosts` accepts it (for settings and command lines)."""
    hosts(dsn, name=name)
    return dsn


def host_index(listed: tuple[tuple[str, int], ...], address: object) -> int:
    """The position in ``listed`` of the server a connection reached (asyncpg's ``(host,
    port)``), or -1 when unknown: a label bounded by the list's length."""
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = str(address[0]), address[1]
        for i, (h, p) in enumerate(listed):
            if p == port and h == host:
                return i
        # a name resolved to an address: match on the port alone when that is unambiguous
        same_port = [i for i, (_, p) in enumerate(listed) if p == port]
        if len(same_port) == 1:
            return same_port[0]
    return -1


def problems(environ: Mapping[str, str], name: str = "DATABASE_URL") -> list[str]:
    """Every problem with ``name``, for a start-up check that lists them all."""
    dsn = environ.get(name)
    if not dsn:
        return [f"{name} is not set"]
    try:
        hosts(dsn, name=name)
    except ConfigError as exc:
        return [str(exc)]
    return []
