"""What one client connection may cost before the app sees a request, as settings.

Both services run uvicorn with httptools, which on its own buffers a request head of any size, keeps
a connection that never finishes a head (or never sends a byte) forever, and accepts connections
until the process runs out of file descriptors (issue 21, findings 3 and 4). The defaults are edge
grade, as nginx, Envoy and Node.js ship them; each is a variable in both services' environment.
"""

from __future__ import annotations

import resource
from collections.abc import Mapping
from dataclasses import dataclass

from servicekit.config import ConfigError, get_float, get_int

__all__ = ["BACKEND_DEFAULTS", "ConnectionLimits", "descriptor_budget", "ensure_descriptors"]

#: Descriptors a worker holds besides client connections and pools: the listening and metrics
#: sockets, the event loop's selector and self-pipe, log files, imported modules' files.
BASE_DESCRIPTORS = 64


@dataclass(frozen=True)
class ConnectionLimits:
    #: ``MAX_REQUEST_HEAD_BYTES``: request line and header fields together (431 beyond). 16 KiB is
    #: Node.js's default and half of nginx's ``large_client_header_buffers 4 8k``; our largest
    #: legitimate head (a DPoP proof of at most 4 KiB, an access token, the refresh cookie and a
    #: browser's usual fields) stays under 8 KiB.
    max_request_head_bytes: int = 16384
    #: ``MAX_REQUEST_HEADERS``: header fields per request (431 beyond); Apache's
    #: ``LimitRequestFields`` and Envoy's ``max_headers_count`` default to 100.
    max_request_headers: int = 100
    #: ``MAX_REQUEST_LINE_BYTES``: the request target (414 beyond); nginx's 8 KiB line buffer.
    max_request_line_bytes: int = 8192
    #: ``REQUEST_HEAD_TIMEOUT``: seconds from accept, or from the end of the previous response on
    #: a keep-alive connection, to the end of the head (408, or a silent close if nothing came).
    #: A third of nginx's ``client_header_timeout``: a head fits in one packet.
    request_head_timeout: float = 20.0
    #: ``KEEP_ALIVE_TIMEOUT``: seconds an idle keep-alive connection is kept (uvicorn's own).
    keep_alive_timeout: int = 5
    #: ``MAX_CONNECTIONS``: open client connections per worker; one more is answered 503.
    max_connections: int = 1024

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str], *, defaults: ConnectionLimits | None = None
    ) -> ConnectionLimits:
        """Every bad variable of these six named in one error, so one restart fixes them all;
        ``defaults`` for a service whose defaults differ (the backend's, below)."""
        errors: list[str] = []
        d = defaults or cls()

        def whole(name: str, default: int, minimum: int) -> int:
            try:
                return get_int(environ, name, default, minimum=minimum)
            except ConfigError as exc:
                errors.append(str(exc))
                return default

        def seconds(name: str, default: float, minimum: float) -> float:
            try:
                return get_float(environ, name, default, minimum=minimum)
            except ConfigError as exc:
                errors.append(str(exc))
                return default

        limits = cls(
            max_request_head_bytes=whole("MAX_REQUEST_HEAD_BYTES", d.max_request_head_bytes, 1024),
            max_request_headers=whole("MAX_REQUEST_HEADERS", d.max_request_headers, 8),
            max_request_line_bytes=whole("MAX_REQUEST_LINE_BYTES", d.max_request_line_bytes, 256),
            request_head_timeout=seconds("REQUEST_HEAD_TIMEOUT", d.request_head_timeout, 0.1),
            keep_alive_timeout=whole("KEEP_ALIVE_TIMEOUT", d.keep_alive_timeout, 1),
            max_connections=whole("MAX_CONNECTIONS", d.max_connections, 1),
        )
        if limits.max_request_line_bytes > limits.max_request_head_bytes:
            errors.append("MAX_REQUEST_LINE_BYTES must not exceed MAX_REQUEST_HEAD_BYTES")
        if errors:
            raise ConfigError("; ".join(errors))
        return limits


#: The backend's defaults: its heads are the gateway's plus what the gateway adds (the internal
#: token, about 1.2 KiB, request id, trace context, forwarded-for), so a head the gateway accepts
#: at its limit is never a 431 one hop later.
BACKEND_DEFAULTS = ConnectionLimits(max_request_head_bytes=32768, max_request_headers=128)


def descriptor_budget(limits: ConnectionLimits, pooled: int) -> int:
    """File descriptors one worker may need: every allowed connection, as many again to answer
    503 to connections over the cap (each is held about a second while its answer drains),
    ``pooled`` connections of its own (backend pool, PostgreSQL, Redis) and a base."""
    return 2 * limits.max_connections + pooled + BASE_DESCRIPTORS


def ensure_descriptors(needed: int) -> int:
    """Raise this process's soft ``RLIMIT_NOFILE`` to ``needed`` if it is lower (workers inherit
    it); a hard limit below ``needed`` is a configuration error naming ``MAX_CONNECTIONS``.

    Without it, a worker at its descriptor limit cannot accept: the connection waits in the
    backlog unanswered (asyncio retries ``accept`` a second later), refused in silence.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            raise ConfigError(
                f"MAX_CONNECTIONS needs about {needed} file descriptors per worker and the hard "
                f"limit is {hard}: raise it (ulimit -n, LimitNOFILE=, docker --ulimit nofile) "
                "or lower MAX_CONNECTIONS"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        soft = needed
    return soft
