"""The backend hop: a keep-alive pool of HTTP/1.1 connections to one origin.

The gateway sends every proxied request to one backend, over a connection it keeps open, and
nothing else. That is all this module does: asyncio connections (uvloop's, under the gateway's
server) whose responses are read by ``httptools`` (llhttp, the parser uvicorn serves the gateway's
own requests with). It replaced ``aiohttp.ClientSession`` on this path, because that client's
general machinery (per-request timers and middleware chain, multidicts, a stream reader that
re-feeds its parser on every read, redirects, cookies, proxies) was the largest share of the
gateway's CPU per proxied request: the figures are in ``bench/README.md``.

What it does, and the invariants it keeps:

- **one exchange per connection at a time**, and a connection goes back to the pool only after
  its response was read to the end, the backend did not ask to close it, and no byte arrived that
  the exchange did not account for; anything else closes it, so a half-read body can never be
  taken for the start of the next response;
- **request framing is the gateway's**: ``Host`` and ``Content-Length`` or chunked
  ``Transfer-Encoding`` are written here, never copied from the client, and a head whose line
  breaks do not match its header count (a CR or LF inside a value) is refused before a byte is
  sent;
- **response framing is llhttp's** (Content-Length, chunked, close-delimited, bodiless statuses,
  ``1xx`` interim answers skipped); a ``HEAD`` response ends at its headers; an upgrade or a
  malformed answer is a :class:`BackendProtocolError`;
- **the backend's head is bounded**: every head of one exchange, interim ones included, may
  take ``max_head_bytes`` in all (counted before llhttp sees the bytes: httptools buffers a
  header line whole, so a 16 MiB line would otherwise sit in memory), and at most
  ``max_interim`` ``1xx`` answers may come before the real one; beyond either it is a
  :class:`BackendProtocolError` (a 502) and the connection is dropped;
- **every wait is bounded**: connecting (``connect_timeout``), waiting for a free connection when
  all ``limit`` are busy (``acquire_timeout``, a :class:`PoolTimeout`: the gateway is busy, the
  backend did nothing wrong), and every wait for response bytes (``read_timeout``); each raises a
  :class:`TimeoutError` subclass and closes the connection;
- **waiters are served in arrival order**: a connection that comes back (or a free slot) is
  handed to the oldest waiter directly, so a coroutine that releases and asks again at once
  cannot overtake the ones already queued;
- **release is structural**: :meth:`UpstreamPool.stream` is an ``async with``; leaving the block
  on any path (an exception, a cancellation, a return) ends the exchange, and a connection whose
  answer was not read to the end is closed, never pooled;
- **one resend**, on a fresh connection, only when a *reused* connection died before any byte of
  the answer came back and the request is idempotent with a body that can be sent again
  (RFC 9112 §9.3.1); the resend asks ``retry_headers()`` for its headers, which is how the
  gateway gives it a fresh single-use internal token;
- the pool keeps at most ``limit`` connections and closes idle ones after ``keepalive`` seconds;
  ``keepalive`` must stay below the backend's own idle timeout, so that the gateway, not the
  backend, is the side that closes an idle connection (a backend closing one just as the pool
  reuses it loses that request: README, "The backend pool").
- **one place connects**: :meth:`UpstreamPool._connect`; an ``https://`` origin needs the
  ``ssl_context`` given (its own CA; refused without one).

Out of scope on purpose: redirects, cookies, proxies, decompression (bytes pass through
untouched), HTTP/2, upgrades.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import cast
from urllib.parse import urlsplit

import httptools

Header = tuple[bytes, bytes]

# RFC 9110 §9.2.2; the methods a dead keep-alive connection may resend.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
# Response bytes buffered beyond what the reader took before the socket stops being read.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
# Request headers the pool writes itself; a caller's copy is never sent.
_FRAMING = frozenset({b"host", b"content-length", b"transfer-encoding"})


class UpstreamError(Exception):
    """The exchange with the backend failed; nothing of its answer reached the caller."""


class BackendUnreachable(UpstreamError, ConnectionError):
    """No connection to the backend could be opened (refused, unresolvable, unroutable)."""


class BackendDisconnected(UpstreamError, ConnectionError):
    """The backend closed or reset the connection before its answer was complete."""


class BackendProtocolError(UpstreamError):
    """The backend's answer is not HTTP/1.1 the gateway can pass on."""


class ConnectTimeout(UpstreamError, TimeoutError):
    """Opening a connection took longer than allowed."""


class PoolTimeout(UpstreamError, TimeoutError):
    """Every pooled connection stayed busy for the whole acquire timeout: the gateway is
    overloaded (a 503), which is not the backend failing to answer (a 504)."""


class ReadTimeout(UpstreamError, TimeoutError):
    """The backend sent nothing for longer than the read timeout."""


class _StaleConnection(BackendDisconnected):
    """A reused connection died before any byte of the answer: the backend may never have seen
    the request, and it can be sent again if it is idempotent."""


class InvalidRequest(ValueError):
    """The request cannot be written as given (a line break in a header, a body that does not
    match its length); nothing of it, or nothing more of it, reaches the backend."""


class Origin:
    """Where the backend is: scheme, host, port, an optional path prefix and the ``Host`` value."""

    __slots__ = ("host", "host_header", "port", "prefix", "tls")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("the backend URL must be http:// or https:// with a host")
        if parts.username or parts.password or parts.query or parts.fragment:
            raise ValueError("the backend URL may not carry credentials, a query or a fragment")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        self.prefix = parts.path.rstrip("/").encode("ascii")
        self.host_header = parts.netloc.encode("idna" if not parts.netloc.isascii() else "ascii")


class Response:
    """One exchange's answer: status and headers at once, the body read whole or streamed.

    Returned by :meth:`UpstreamPool.request` once the head has arrived. The caller must end it
    with :meth:`release` (a ``finally``): a fully read body hands the connection back to the
    pool, anything else closes it.
    """

    __slots__ = (
        "_buffered",
        "_chunks",
        "_complete",
        "_conn",
        "_error",
        "_head_only",
        "_head_room",
        "_headers",
        "_interim",
        "_interims",
        "_keep_alive",
        "_length_header",
        "_pool",
        "_reading_all",
        "_waiter",
        "content_length",
        "parser",
        "raw_headers",
        "received",
        "status",
    )

    def __init__(self, pool: UpstreamPool, conn: _Connection, head_only: bool) -> None:
        self._pool = pool
        self._conn = conn
        self._head_only = head_only
        self.parser = httptools.HttpResponseParser(self)
        self.status = 0
        self.raw_headers: list[Header] = []
        self.content_length: int | None = None
        self.received = False
        self._headers: list[Header] = []
        self._interim = False
        self._interims = 0
        # bytes every head of this exchange may still take (interim ones included)
        self._head_room = pool.max_head_bytes
        self._length_header = False
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._keep_alive = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reading_all = False

    # -- llhttp callbacks (called from feed_data, inside data_received) --------------------------

    def on_message_begin(self) -> None:
        if self._complete:
            # keep-alive parsing would take these bytes for a second answer to one request
            raise BackendProtocolError("the backend sent bytes after its answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.status:
            # a trailer field after a chunked body: not passed on (nothing here reads trailers,
            # and one must never pose as a header the backend did not send up front)
            return
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if not 100 <= status <= 599:
            # RFC 9110 §15: three digits, 1xx to 5xx; llhttp takes any three
            raise BackendProtocolError("the backend answered with an invalid status code")
        if status < 200:
            if status == 101:
                raise BackendProtocolError("the backend switched protocols")
            # an interim answer (100 Continue, 103 Early Hints): the real one follows, but a
            # backend sending them without end would keep this exchange (and its memory) forever
            self._interims += 1
            if self._interims > self._pool.max_interim:
                raise BackendProtocolError("the backend sent too many interim answers")
            self._headers = []
            self._interim = True
            return
        self.status = status
        self.raw_headers = self._headers
        for name, value in self._headers:
            if len(name) == 14 and name.lower() == b"content-length":
                # llhttp already refused a malformed or conflicting one
                self.content_length = int(value)
                self._length_header = True
            elif len(name) == 17 and name.lower() == b"transfer-encoding":
                self._length_header = True
        if self._head_only or status in (204, 304):
            self.content_length = 0
            self._finish(keep_alive=self.parser.should_keep_alive())
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self._complete:
            raise BackendProtocolError("the backend sent a body where none belongs")
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._reading_all:
            self._conn.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if not self._complete:
            self._finish(keep_alive=self.parser.should_keep_alive())
        self._wake()

    # -- the connection's events ---------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.received = True
        if self._complete:
            # the answer was over (a HEAD, a 204): these bytes belong to nothing
            raise BackendProtocolError("the backend sent bytes after its answer")
        if self.status:
            self.parser.feed_data(data)
            return
        # Still in the head. llhttp holds an unfinished header line in memory (httptools joins
        # its pieces), so the bound is applied to the bytes before they reach it: only what is
        # left of ``max_head_bytes`` is fed, and a head not finished within it is refused.
        room = self._head_room
        if len(data) <= room:
            self._head_room = room - len(data)
            self.parser.feed_data(data)
            return
        self._head_room = 0
        self.parser.feed_data(data[:room])
        if not self.status:
            raise BackendProtocolError("the backend's response head is too large")
        self.parser.feed_data(data[room:])

    def eof(self, exc: BaseException | None) -> None:
        """The connection ended: the end of a close-delimited body, or a failure."""
        if self._complete:
            return
        if exc is None and self.status and not self._length_header and not self._interim:
            self._finish(keep_alive=False)
        else:
            self.fail(BackendDisconnected("the backend closed the connection mid-answer"))
        self._wake()

    def fail(self, error: BaseException) -> None:
        if self._error is None and not self._complete:
            self._error = error
        self._wake()

    def _finish(self, *, keep_alive: bool) -> None:
        self._complete = True
        self._keep_alive = keep_alive

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        """Until something happens on the connection, at most ``read_timeout`` seconds."""
        loop = self._pool.loop
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(self._pool.read_timeout, self._timed_out, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self._waiter = None

    def _timed_out(self, waiter: asyncio.Future[None]) -> None:
        self.fail(ReadTimeout("the backend sent nothing within the read timeout"))

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    async def head(self) -> None:
        """Wait for the status line and headers."""
        while not self.status:
            self._check()
            await self._wait()
        self._check()

    # -- the caller's side ---------------------------------------------------------------------

    async def read(self) -> bytes:
        """The whole body (meant for small ones; the caller checked ``content_length``)."""
        self._reading_all = True
        self._conn.resume_reading()
        while not self._complete:
            self._check()
            await self._wait()
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return data

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        """The body in the pieces it arrives in."""
        while True:
            while self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._buffered < _LOW_WATER:
                    self._conn.resume_reading()
                yield chunk
            if self._complete:
                return
            self._check()
            await self._wait()

    def abort(self, error: BaseException) -> None:
        """Stop the exchange from outside (the client went away): every wait on it raises
        ``error`` and the connection cannot go back to the pool."""
        self.fail(error)
        self._conn.close()

    def release(self) -> None:
        """End the exchange: the connection goes back to the pool if it is clean, else closes."""
        conn = self._conn
        if conn.exchange is not self:
            return
        conn.exchange = None
        reusable = self._complete and self._keep_alive and not self._chunks
        if reusable:
            # the answer's last bytes may have paused reading as they completed it
            conn.resume_reading()
        self._pool.release(conn, reusable=reusable and self._error is None)


class Exchange:
    """One request on the pool as an ``async with`` block (:meth:`UpstreamPool.stream`).

    Entering sends the request and waits for the answer's head; leaving releases the exchange
    whatever the way out, so no path (an error while relaying, a cancellation, an early return)
    can keep a connection slot.
    """

    __slots__ = ("_args", "_pool", "_response")

    def __init__(
        self,
        pool: UpstreamPool,
        method: str,
        target: bytes,
        headers: list[Header],
        body: bytes | AsyncIterator[bytes] | None,
        length: int | None,
        retry_headers: Callable[[], list[Header]] | None,
    ) -> None:
        self._pool = pool
        self._args = (method, target, headers, body, length, retry_headers)
        self._response: Response | None = None

    async def __aenter__(self) -> Response:
        method, target, headers, body, length, retry_headers = self._args
        self._response = await self._pool.request(
            method, target, headers, body=body, length=length, retry_headers=retry_headers
        )
        return self._response

    async def __aexit__(self, *exc_info: object) -> None:
        if self._response is not None:
            self._response.release()


class _Connection(asyncio.Protocol):
    """One TCP (or TLS) connection to the backend; feeds the current exchange's parser."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.exchange: Response | None = None
        self.closed = False
        self.reused = False
        self.idle_since = 0.0
        self._write_paused = False
        self._drain: asyncio.Future[None] | None = None
        self._reading_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # create_connection() makes stream transports only
        self.transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            # bytes nobody asked for on an idle connection: it cannot be trusted again
            self.close()
            return
        try:
            exchange.feed(data)
        except Exception as exc:
            # llhttp's errors, an upgrade, our own callbacks' refusals: the answer cannot be
            # trusted and neither can the bytes after it
            if not isinstance(exc, BackendProtocolError):
                # httptools wraps what a callback raised; keep our own refusal's reason
                cause = exc.__cause__ or exc.__context__
                exc = (
                    cause
                    if isinstance(cause, BackendProtocolError)
                    else BackendProtocolError("the backend's answer is malformed")
                )
            exchange.fail(exc)
            self.close()

    def eof_received(self) -> bool:
        if self.exchange is not None:
            self.exchange.eof(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.exchange is not None:
            self.exchange.eof(exc)
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_exception(BackendDisconnected("the backend closed the connection"))

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        drain, self._drain = self._drain, None
        if drain is not None and not drain.done():
            drain.set_result(None)

    def pause_reading(self) -> None:
        if not self._reading_paused and self.transport is not None:
            self._reading_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None and not self.closed:
            self._reading_paused = False
            self.transport.resume_reading()

    async def drain(self, stall: float) -> None:
        """Until the transport takes more bytes; a backend that stops reading for ``stall``
        seconds is a :class:`ReadTimeout` like one that stops answering."""
        if self.closed:
            raise BackendDisconnected("the backend closed the connection")
        if self._write_paused:
            drain = self._drain = self.loop.create_future()
            timer = self.loop.call_later(stall, _expire_drain, drain)
            try:
                await drain
            finally:
                timer.cancel()

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise BackendDisconnected("the backend closed the connection")
        self.transport.write(data)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            # abort: nothing buffered for a connection we give up on is worth sending
            self.transport.abort()


class UpstreamPool:
    """Keep-alive connections to one backend origin; :meth:`stream` is the API.

    Opened by the gateway's lifespan (:meth:`close` at shutdown); made inside the running loop.
    """

    def __init__(
        self,
        url: str,
        *,
        connect_timeout: float,
        read_timeout: float,
        acquire_timeout: float,
        limit: int = 256,
        keepalive: float = 4.0,
        ssl_context: ssl.SSLContext | None = None,
        max_head_bytes: int = 65536,
        max_interim: int = 8,
    ) -> None:
        self.origin = Origin(url)
        if ssl_context is not None and not self.origin.tls:
            raise ValueError("a TLS context needs an https:// URL")
        if self.origin.tls and ssl_context is None:
            # fail closed: an https:// service is verified against its own CA, never the
            # system store (gateway.proxy.tls.client_context)
            raise ValueError("an https:// backend needs its TLS context (a CA file)")
        self.loop = asyncio.get_running_loop()
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.acquire_timeout = acquire_timeout
        self.limit = limit
        self.keepalive = keepalive
        # the handshake (SNI = the URL's host, verified) runs inside connect_timeout
        self._ssl = ssl_context if self.origin.tls else None
        self.max_head_bytes = max_head_bytes
        self.max_interim = max_interim
        self._idle: deque[_Connection] = deque()
        # connections open or being opened, plus slots handed to waiters that will open one
        self._open = 0
        # each waiter's future is given a pooled connection, or None for a slot to open one in
        self._waiters: deque[asyncio.Future[_Connection | None]] = deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False

    @property
    def prefix(self) -> bytes:
        return self.origin.prefix

    def stream(
        self,
        method: str,
        target: bytes,
        headers: list[Header],
        *,
        body: bytes | AsyncIterator[bytes] | None = None,
        length: int | None = None,
        retry_headers: Callable[[], list[Header]] | None = None,
    ) -> Exchange:
        """``async with pool.stream(...) as response``: :meth:`request`, and the exchange ends
        (its connection pooled or closed) however the block is left."""
        return Exchange(self, method, target, headers, body, length, retry_headers)

    async def request(
        self,
        method: str,
        target: bytes,
        headers: list[Header],
        *,
        body: bytes | AsyncIterator[bytes] | None = None,
        length: int | None = None,
        retry_headers: Callable[[], list[Header]] | None = None,
    ) -> Response:
        """Send one request and return its answer once the head has arrived.

        ``target`` is the origin-form request target (path and query, already encoded) without
        the origin's prefix; ``headers`` are end-to-end headers only (this writes ``Host`` and the
        framing). ``body`` is bytes (sent with a ``Content-Length``) or an async iterator, sent
        with ``length`` as its ``Content-Length`` when given and chunked otherwise.
        """
        head_only = method == "HEAD"
        replayable = method in IDEMPOTENT_METHODS and not isinstance(body, AsyncIterator)
        conn = await self._acquire()
        try:
            return await self._exchange(conn, method, target, headers, body, length, head_only)
        except _StaleConnection as exc:
            if not replayable:
                raise BackendDisconnected(*exc.args) from None
        fresh = retry_headers() if retry_headers is not None else headers
        conn = await self._acquire(fresh=True)
        return await self._exchange(conn, method, target, fresh, body, length, head_only)

    async def _exchange(
        self,
        conn: _Connection,
        method: str,
        target: bytes,
        headers: list[Header],
        body: bytes | AsyncIterator[bytes] | None,
        length: int | None,
        head_only: bool,
    ) -> Response:
        response = Response(self, conn, head_only)
        conn.exchange = response
        try:
            head = self._head(method, target, headers, body, length)
            if isinstance(body, bytes):
                conn.write(head + body)
            elif body is None:
                conn.write(head)
            else:
                conn.write(head)
                await _send_stream(conn, body, length, self.read_timeout)
            await response.head()
        except BackendDisconnected as exc:
            conn.exchange = None
            self.release(conn, reusable=False)
            if conn.reused and not response.received:
                raise _StaleConnection(*exc.args) from None
            raise
        except BaseException:
            conn.exchange = None
            self.release(conn, reusable=False)
            raise
        return response

    def _head(
        self,
        method: str,
        target: bytes,
        headers: list[Header],
        body: bytes | AsyncIterator[bytes] | None,
        length: int | None,
    ) -> bytes:
        lines = [
            method.encode("ascii"),
            b" ",
            self.origin.prefix,
            target,
            b" HTTP/1.1\r\nhost: ",
            self.origin.host_header,
            b"\r\n",
        ]
        written = 0
        for name, value in headers:
            if name.lower() in _FRAMING:
                # the pool's own Host and framing are the only ones the backend may see
                continue
            lines += (name, b": ", value, b"\r\n")
            written += 1
        if isinstance(body, bytes):
            lines += (b"content-length: ", str(len(body)).encode("ascii"), b"\r\n")
        elif body is not None:
            if length is None:
                lines.append(b"transfer-encoding: chunked\r\n")
            else:
                lines += (b"content-length: ", str(length).encode("ascii"), b"\r\n")
        lines.append(b"\r\n")
        head = b"".join(lines)
        # Every line break must be one this function wrote: a CR or LF inside a name, value or
        # target would let it smuggle a header or a second request to the backend.
        breaks = written + (3 if body is None else 4)
        if head.count(b"\n") != breaks or head.count(b"\r") != breaks or b" " in target:
            raise InvalidRequest("a request header or the target holds a line break or a space")
        return head

    # -- the pool ------------------------------------------------------------------------------

    async def _acquire(self, *, fresh: bool = False) -> _Connection:
        if not fresh:
            now = self.loop.time()
            idle = self._idle
            while idle:
                conn = idle.pop()
                if not conn.closed and now - conn.idle_since < self.keepalive:
                    conn.reused = True
                    return conn
                self._discard(conn)
        if self._closed:
            raise BackendUnreachable("the gateway is shutting down")
        if self._open < self.limit:
            self._open += 1
            return await self._open_in_slot()
        if self._idle:
            # a fresh connection is wanted and every slot is open: an idle one makes room
            self._idle.popleft().close()
            return await self._open_in_slot()
        # Wait in line. Whoever frees a connection or a slot hands it to the oldest waiter
        # (``release``/``_free_slot``), so the order is the order of arrival: nobody who asks
        # later, not even the coroutine that just released, can take it first.
        waiter: asyncio.Future[_Connection | None] = self.loop.create_future()
        self._waiters.append(waiter)
        timer = self.loop.call_later(self.acquire_timeout, _expire, waiter)
        try:
            handed = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # handed a connection or a slot, then cancelled: it goes to the next in line
                self._pass_on(waiter.result())
            else:
                # timed out, cancelled in line, or the pool closed (which emptied the line)
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise
        finally:
            timer.cancel()
        if handed is None:
            return await self._open_in_slot()
        if fresh or handed.closed:
            # the slot is ours either way; what is in it is not what we need
            handed.close()
            return await self._open_in_slot()
        handed.reused = True
        return handed

    async def _open_in_slot(self) -> _Connection:
        """Connect in a slot already counted in ``_open``; a failure frees the slot."""
        try:
            return await self._connect()
        except BaseException:
            self._open -= 1
            self._free_slot()
            raise

    async def _connect(self) -> _Connection:
        origin = self.origin
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: _Connection(self.loop),
                    origin.host,
                    origin.port,
                    ssl=self._ssl,
                )
        except TimeoutError:
            raise ConnectTimeout("connecting to the backend timed out") from None
        except ssl.SSLError as exc:
            # refused handshake: another CA, another host name, no client certificate
            reason = getattr(exc, "reason", None) or type(exc).__name__
            raise BackendUnreachable(f"the backend's TLS handshake failed: {reason}") from None
        except OSError as exc:
            raise BackendUnreachable(f"cannot connect to the backend: {exc.strerror}") from None
        return conn

    def release(self, conn: _Connection, *, reusable: bool) -> None:
        if reusable and not conn.closed and not self._closed:
            waiters = self._waiters
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    # straight to the oldest waiter: it never passes through the idle list,
                    # where a later arrival could take it first
                    waiter.set_result(conn)
                    return
            conn.idle_since = self.loop.time()
            self._idle.append(conn)
            self._expire_idle(conn.idle_since)
            if self._sweep is None:
                # one timer for the whole pool, so a quiet gateway lets idle sockets go too
                self._sweep = self.loop.call_at(conn.idle_since + self.keepalive, self._sweep_idle)
        else:
            conn.close()
            self._open -= 1
            self._free_slot()

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._open -= 1
        self._free_slot()

    def _free_slot(self) -> None:
        """A slot came free: the oldest waiter gets it (and opens a connection in it)."""
        waiters = self._waiters
        while waiters and not self._closed:
            waiter = waiters.popleft()
            if not waiter.done():
                self._open += 1
                waiter.set_result(None)
                return

    def _pass_on(self, handed: _Connection | None) -> None:
        """What a cancelled waiter was handed goes to the next one (or back to the pool)."""
        if handed is None:
            self._open -= 1
            self._free_slot()
        else:
            self.release(handed, reusable=True)

    def _expire_idle(self, now: float) -> None:
        idle = self._idle
        while idle and (idle[0].closed or now - idle[0].idle_since >= self.keepalive):
            self._discard(idle.popleft())

    def _sweep_idle(self) -> None:
        self._sweep = None
        now = self.loop.time()
        self._expire_idle(now)
        if self._idle:
            due = max(self._idle[0].idle_since + self.keepalive, now + 0.05)
            self._sweep = self.loop.call_at(due, self._sweep_idle)

    async def close(self) -> None:
        """Close every idle connection; those in use close when their exchange ends."""
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        while self._idle:
            self._discard(self._idle.popleft())
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(BackendUnreachable("the gateway is shutting down"))
        self._waiters.clear()


def _expire(waiter: asyncio.Future[_Connection | None]) -> None:
    if not waiter.done():
        waiter.set_exception(PoolTimeout("no free connection to the backend in time"))


def _expire_drain(drain: asyncio.Future[None]) -> None:
    if not drain.done():
        drain.set_exception(ReadTimeout("the backend stopped reading the request body"))


async def _send_stream(
    conn: _Connection, body: AsyncIterator[bytes], length: int | None, stall: float
) -> None:
    """Write a streamed body: chunked when ``length`` is None, else exactly ``length`` bytes.

    A body that turns out longer or shorter than it declared is an :class:`InvalidRequest` and
    the connection is not reused: the excess would be read by the backend as a request of its
    own, and a shortfall would make it take the next request for the rest of this body.
    """
    sent = 0
    async for chunk in body:
        if not chunk:
            continue
        if length is None:
            conn.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            sent += len(chunk)
            if sent > length:
                raise InvalidRequest("the request body is longer than its Content-Length")
            conn.write(chunk)
        await conn.drain(stall)
    if length is None:
        conn.write(b"0\r\n\r\n")
    elif sent != length:
        raise InvalidRequest("the request body is shorter than its Content-Length")
