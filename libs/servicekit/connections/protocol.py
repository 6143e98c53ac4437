"""uvicorn's httptools protocol with the limits of :class:`ConnectionLimits`, counted as bytes
arrive and before llhttp or uvicorn buffer them (issue 21, findings 3 and 4).

httptools stays (h11 costs more CPU than the gateway's budget); this subclass counts what it is fed:

- **head bytes**: while a head is being read, at most ``max_request_head_bytes`` are fed to the
  parser; a head not complete by then is 431. Before this, 300 MiB of header lines were buffered
  whole (the gateway went from 67 to 416 MiB) and answered 200. The parser does not say where a
  request ended inside a read, so the bytes of a pipelined head that arrive in the same read as
  the end of the request before it are not counted: such a head may get one more read (at most
  the limit, or 256 KiB after a body) before it is refused.
- **header fields**: more than ``max_request_headers`` is 431; **the request target**: over
  ``max_request_line_bytes`` is 414 (RFC 9112 §3 asks servers for at least 8,000 octets). Both
  are counted after each read and when the head ends, not per field (a Python call per field
  would sit on every request's path), and the byte limit already bounds what one read adds.
- **head time**: a deadline from accept, or from the end of the previous response, to the end of
  the head, checked by one timer per connection that is re-armed only when it fires. A
  slowloris client that trickles a head gets 408; a connection that sends nothing is closed.
  uvicorn's own keep-alive timer is cancelled by any byte, so it stops neither.
- **connections**: a connection accepted while ``max_connections`` are open is answered 503 with
  ``Retry-After`` at once and closed. uvicorn's ``limit_concurrency`` is not used: it counts idle
  keep-alive connections and the asking one (so N lets N - 1 in), decides only when a head
  completes, so connections that never send one hold their descriptors for ever, and answers a
  ``text/plain`` 503 without ``Retry-After``.

Every refusal is the JSON error body with ``Connection: close``; the connection is then half
closed (our FIN after the answer) and read and discarded for at most :data:`LINGER_SECONDS` and
:data:`LINGER_BYTES` before it is closed, so a client still sending its head reads the answer
rather than a reset (RFC 9112 §9.6).
"""

from __future__ import annotations

import asyncio
import json
from asyncio import TimerHandle
from typing import Any

import httptools
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from servicekit.connections.limits import ConnectionLimits

__all__ = ["LINGER_BYTES", "LINGER_SECONDS", "LimitedHttpToolsProtocol"]

#: How long a refused connection is read and discarded before it is closed: long enough for the
#: client to read the answer, short enough that refused connections cannot pile up.
LINGER_SECONDS = 1.0
#: How much of it is read and discarded at most: a client pushing a 300 MiB head at loopback
#: speed would otherwise cost a second of reading per refusal.
LINGER_BYTES = 256 * 1024


class _Refused(Exception):
    """Raised from a parser callback to stop llhttp; the status is answered by data_received."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        limits: ConnectionLimits,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._limits = limits
        self._max_head_bytes = limits.max_request_head_bytes
        self._max_fields = limits.max_request_headers
        self._max_target = limits.max_request_line_bytes
        self.url = b""  # uvicorn sets it when a message begins; read before that here
        self._in_head = True
        self._head_bytes = 0
        self._heads = 0
        # When the head being waited for is due (loop time), or None while a request is being
        # answered. One timer per connection checks it, re-armed only when it fires, rather than
        # a timer armed and cancelled for every request.
        self._deadline: float | None = None
        self._head_timer: TimerHandle | None = None
        self._refusal: _Refused | None = None
        self._refused = False
        self._discarded = 0

    # -- connection -------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self._limits.max_connections:
            # Answered at once and not counted: a refused connection holds its descriptor for
            # LINGER_SECONDS at most, whether it sends a head or not.
            self.connections.discard(self)
            self._refuse(
                503,
                "server_busy",
                "too many connections; retry shortly",
                b"retry-after: 1\r\n",
            )
            return
        self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            # lingering after a refusal: read and dropped, up to a bound
            self._discarded += len(data)
            if self._discarded > LINGER_BYTES:
                self._close()
            return
        self._unset_keepalive_if_required()
        if self._in_head:
            if self._head_bytes + len(data) > self._max_head_bytes:
                self._feed_up_to_the_limit(data)
                return
            self._head_bytes += len(data)
        self._feed(data)
        # Fields and target counted per read, not per field (a Python call per field costs the
        # hot path): a head still arriving holds at most one read's worth over the count.
        if self._in_head and not self._refused and self.headers is not None:
            self._check_partial_head()

    def _feed_up_to_the_limit(self, data: bytes) -> None:
        # Feed a head no further than its limit: what llhttp is given, it (or uvicorn) keeps.
        limit = self._max_head_bytes
        while self._in_head and self._head_bytes + len(data) > limit:
            room = limit - self._head_bytes
            heads = self._heads
            self._head_bytes = limit
            if not self._feed(data[:room]):
                return
            data = data[room:]
            if self._heads == heads:  # the limit reached, the head still not complete
                self._refuse(431, "request_head_too_large", f"request head over {limit} bytes")
                return
            # A head ended within the limit (pipelined requests): what follows is counted for
            # the next one.
        if self._in_head:
            self._head_bytes += len(data)
        if self._feed(data) and self._in_head and self.headers is not None:
            self._check_partial_head()

    def _feed(self, data: bytes) -> bool:
        """Feed the parser; ``False`` when the connection was refused and nothing may follow."""
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return True
        except httptools.HttpParserError:
            refusal, self._refusal = self._refusal, None
            if refusal is None:
                refusal = _Refused(400, "bad_request", "invalid HTTP request")
            self._refuse(refusal.status, refusal.code, refusal.message)
            return False
        return not self._refused

    def _head_refusal(self) -> _Refused | None:
        if len(self.url) > self._max_target:
            return _Refused(414, "uri_too_long", f"request target over {self._max_target} bytes")
        if len(self.headers) > self._max_fields:
            message = f"more than {self._max_fields} header fields"
            return _Refused(431, "too_many_headers", message)
        return None

    def _check_partial_head(self) -> None:
        refusal = self._head_refusal()
        if refusal is not None:
            self._refuse(refusal.status, refusal.code, refusal.message)

    # -- parser callbacks -------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        refusal = self._head_refusal()
        if refusal is not None:
            self._refusal = refusal
            raise refusal  # stops llhttp; answered by _feed
        self._in_head = False
        self._heads += 1
        self._deadline = None
        super().on_headers_complete()
        # Trailers: llhttp reports a chunked body's trailer fields through the header callback,
        # and uvicorn appends them to the very list the ASGI scope holds as ``headers``, so a
        # client could add "headers" after the head was read and checked and they would reach
        # the backend as if sent up front (RFC 9110 §6.5.1: never merged unless known safe).
        # Nothing here reads trailers: from now on fields go to a list nobody reads. (An upgrade
        # request has no body, and uvicorn replays its head from this list: it is left alone.)
        if not self.parser.should_upgrade():
            self.headers = []

    def on_message_complete(self) -> None:
        super().on_message_complete()
        # What follows is the next request's head (pipelined, or after keep-alive).
        self._in_head = True
        self._head_bytes = 0

    def on_response_complete(self) -> None:
        pipelined = bool(self.pipeline)
        super().on_response_complete()
        if not pipelined and not self.transport.is_closing():
            # The next head's clock starts now (keep-alive), not when its first byte comes.
            self._await_head()

    # -- timers and refusals ----------------------------------------------------------------

    def _await_head(self) -> None:
        timeout = self._limits.request_head_timeout
        self._deadline = self.loop.time() + timeout
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(timeout, self._head_check)

    def _head_check(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or self._refused or self._deadline is None:
            return  # no head awaited: the next response's end arms the timer again
        left = self._deadline - self.loop.time()
        if left > 0:  # the deadline moved on since this timer was armed
            self._head_timer = self.loop.call_later(left, self._head_check)
            return
        if self._head_bytes == 0:
            # Nothing of a next request came: an idle connection, closed as nginx does.
            self.transport.close()
            return
        self._refuse(
            408,
            "request_timeout",
            f"request head not complete within {self._limits.request_head_timeout:g} s",
        )

    def _refuse(self, status: int, code: str, message: str, extra: bytes = b"") -> None:
        self._refused = True
        self._deadline = None
        self.headers = []  # what a refused head buffered is not kept while lingering
        self._unset_keepalive_if_required()
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined head refused while the previous answer is still being written: a
            # second answer would interleave with it, so the connection just ends.
            self.cycle.keep_alive = False
            self.transport.close()
            return
        body = json.dumps({"error": {"code": code, "message": message}}).encode()
        self.transport.write(
            b"".join(
                (
                    STATUS_LINE[status],
                    b"content-type: application/json\r\n",
                    b"content-length: %d\r\n" % len(body),
                    b"connection: close\r\n",
                    extra,
                    b"\r\n",
                    body,
                )
            )
        )
        if self.transport.can_write_eof():
            self.transport.write_eof()
            self.loop.call_later(LINGER_SECONDS, self._close)
        else:
            self.transport.close()

    def _close(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()
