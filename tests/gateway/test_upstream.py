"""``gateway.proxy.upstream.UpstreamPool`` against hostile and broken backends, over real sockets.

Every backend here is a raw ``asyncio.start_server`` on 127.0.0.1 that writes exact bytes and
records what it read and how many connections it was given, so each test states what crossed
the wire rather than what the pool believes it did. The invariants under attack are the ones the
module docstring promises: a connection is reused only after a clean, fully read answer; the
request head is the pool's and cannot be bent into a second request; response framing is exact;
every wait is bounded; one resend, only when it is safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
import string
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.proxy.upstream import (
    BackendDisconnected,
    BackendProtocolError,
    BackendUnreachable,
    ConnectTimeout,
    Origin,
    PoolTimeout,
    ReadTimeout,
    UpstreamError,
    UpstreamPool,
)

Header = tuple[bytes, bytes]
T = TypeVar("T")
Handler = Callable[["Peer"], Awaitable[None]]


# -- the raw backend ---------------------------------------------------------------------------


@dataclass
class Request:
    """One request as the backend read it off its socket."""

    connection: int
    method: bytes
    target: bytes
    headers: list[Header]
    head: bytes
    body: bytes = b""

    def values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.headers if key == name]


@dataclass
class Peer:
    """The backend's end of one accepted connection."""

    backend: Backend
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    number: int
    received: bytearray = field(default_factory=bytearray)
    eof: asyncio.Event = field(default_factory=asyncio.Event)

    async def read_request(self, *, read_body: bool = True) -> Request | None:
        """The next request, or None once the pool closed (or reset) the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            self.received += exc.partial
            self.eof.set()
            return None
        except ConnectionError:
            self.eof.set()
            return None
        self.received += head
        request_line, *lines = head[:-4].split(b"\r\n")
        # a desynced stream starts mid-request: keep it as a request with no method, so the
        # test's assertions (not this parser) say what went wrong
        method, _, target = request_line.rpartition(b" ")[0].partition(b" ")
        if not target:
            method, target = b"", request_line
        headers = []
        for line in lines:
            name, _, value = line.partition(b":")
            headers.append((name.lower(), value.strip()))
        request = Request(self.number, method, target, headers, head)
        self.backend.requests.append(request)
        if read_body:
            await self.read_body(request)
        return request

    async def read_body(self, request: Request) -> None:
        if request.values(b"transfer-encoding") == [b"chunked"]:
            body = bytearray()
            while True:
                size_line = await self._read(self.reader.readuntil(b"\r\n"))
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    await self._read(self.reader.readuntil(b"\r\n"))
                    break
                data = await self._read(self.reader.readexactly(size + 2))
                assert data.endswith(b"\r\n"), data
                body += data[:-2]
            request.body = bytes(body)
        elif lengths := request.values(b"content-length"):
            request.body = await self._read(self.reader.readexactly(int(lengths[0])))

    async def _read(self, read: Awaitable[bytes]) -> bytes:
        data = await read
        self.received += data
        return data

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send_slowly(self, pieces: Sequence[bytes], pause: float = 0.005) -> None:
        """Each piece in its own write, so the pool's parser sees them in separate reads."""
        for piece in pieces:
            await self.send(piece)
            await asyncio.sleep(pause)

    async def read_all(self) -> bytes:
        """Everything until the pool closes its end (a reset counts as a close)."""
        data = bytearray()
        with contextlib.suppress(ConnectionError):
            while chunk := await self.reader.read(65536):
                data += chunk
        self.received += data
        self.eof.set()
        return bytes(data)

    async def hang(self) -> None:
        """Never answer; wake only when the test ends."""
        await self.backend.stopping.wait()


class Backend:
    """A raw HTTP/1.1 server whose every connection runs ``handler``."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.peers: list[Peer] = []
        self.requests: list[Request] = []
        self.errors: list[BaseException] = []
        self.stopping = asyncio.Event()
        self.port = 0
        self._abort = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def connections(self) -> int:
        return len(self.peers)

    async def __aenter__(self) -> Backend:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self.finish()
        await self._server.wait_closed()
        if self.errors and exc_info[0] is None:
            raise self.errors[0]

    async def finish(self) -> None:
        """Let every connection handler end (a hanging one is woken) and close its socket."""
        self.stopping.set()
        if self._tasks:
            # time for handlers to read what the pool's close flushes; one still stuck (on a
            # test's gate, when the test failed) is then stopped
            _, pending = await asyncio.wait(self._tasks, timeout=2.0)
            if pending:
                self._abort.set()
                await asyncio.wait(pending)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = Peer(self, reader, writer, len(self.peers))
        self.peers.append(peer)
        # The handler runs as a task of its own: cancelling the connection's task itself would
        # make asyncio's stream machinery report the cancellation to the loop's handler.
        handler = asyncio.ensure_future(self.handler(peer))
        abort = asyncio.ensure_future(self._abort.wait())
        try:
            await asyncio.wait({handler, abort}, return_when=asyncio.FIRST_COMPLETED)
            abort.cancel()
            if not handler.done():
                handler.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await handler
                return
            await handler
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except Exception as exc:
            # a failed assertion inside a handler fails the test at __aexit__
            self.errors.append(exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


# -- helpers -------------------------------------------------------------------------------------


def answer(
    body: bytes = b"",
    status: int = 200,
    headers: Sequence[Header] = (),
) -> bytes:
    lines = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return b"HTTP/1.1 %d Reason\r\n%scontent-length: %d\r\n\r\n%s" % (
        status,
        lines,
        len(body),
        body,
    )


def echo_of(request: Request) -> bytes:
    return answer(request.method + b" " + request.target)


async def serve_echo(peer: Peer) -> None:
    """A well-behaved keep-alive backend: each answer's body names the request it answers."""
    while (request := await peer.read_request()) is not None:
        await peer.send(echo_of(request))


def gated(gate: asyncio.Event, target: bytes | None = None) -> Handler:
    """An echo backend that holds its answer to ``target`` (every request if None) at ``gate``."""

    async def handler(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            if target is None or request.target == target:
                await gate.wait()
            await peer.send(echo_of(request))

    return handler


@contextlib.asynccontextmanager
async def open_pool(
    url: str,
    *,
    connect_timeout: float = 2.0,
    read_timeout: float = 2.0,
    acquire_timeout: float = 2.0,
    limit: int = 8,
    keepalive: float = 30.0,
    max_head_bytes: int = 65536,
    max_interim: int = 8,
) -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool(
        url,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        acquire_timeout=acquire_timeout,
        limit=limit,
        keepalive=keepalive,
        max_head_bytes=max_head_bytes,
        max_interim=max_interim,
    )
    try:
        yield pool
    finally:
        await pool.close()


@dataclass
class Answer:
    status: int
    headers: list[Header]
    body: bytes


async def fetch(
    pool: UpstreamPool,
    method: str = "GET",
    target: bytes = b"/",
    headers: list[Header] | None = None,
    **kwargs: Any,
) -> Answer:
    response = await pool.request(method, target, headers or [], **kwargs)
    try:
        body = await response.read()
    finally:
        response.release()
    return Answer(response.status, list(response.raw_headers), body)


class Tasks:
    """Requests run alongside the test; on the way out (a failed assertion included) any still
    running is cancelled and every outcome collected, so none leaks into the next test."""

    def __init__(self) -> None:
        self._tasks: list[asyncio.Task[Any]] = []

    def start(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.create_task(coro)
        self._tasks.append(task)
        return task

    async def __aenter__(self) -> Tasks:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def bounded(awaitable: Awaitable[T], seconds: float = 3.0) -> T:
    """Await with a bound, so that a pool that never gives up fails the test, not hangs it."""
    async with asyncio.timeout(seconds):
        return await awaitable


async def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def seen_eof(peer: Peer, timeout: float = 2.0) -> bool:
    try:
        async with asyncio.timeout(timeout):
            await peer.eof.wait()
    except TimeoutError:
        return False
    return True


async def stream(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        await asyncio.sleep(0)
        yield chunk


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def split_at(data: bytes, cuts: Sequence[int]) -> list[bytes]:
    edges = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


@pytest.fixture(autouse=True)
async def no_loop_errors() -> AsyncIterator[None]:
    """An exception escaping a protocol callback goes to the loop's handler, not to any caller:
    record those, since a test's own assertions would never see them."""
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    yield
    loop.set_exception_handler(previous)
    assert not errors, errors


# -- 1. keep-alive -------------------------------------------------------------------------------


async def test_sequential_requests_share_one_connection() -> None:
    async with Backend(serve_echo) as backend, open_pool(backend.url) as pool:
        for n in range(4):
            got = await fetch(pool, target=b"/r%d" % n)
            assert (got.status, got.body) == (200, b"GET /r%d" % n)
        assert backend.connections == 1
        assert [r.connection for r in backend.requests] == [0, 0, 0, 0]


@pytest.mark.parametrize(
    "closing",
    [
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, Close\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
    ],
    ids=["connection-close", "close-token-in-list", "http-1.0"],
)
async def test_a_backend_asking_to_close_gets_a_new_connection_next_time(closing: bytes) -> None:
    # The backend keeps the socket open and would answer again: only the pool honouring the
    # header makes the second request go elsewhere.
    async def handler(peer: Peer) -> None:
        if peer.number == 0 and await peer.read_request() is not None:
            await peer.send(closing)
        await serve_echo(peer)

    async with Backend(handler) as backend, open_pool(backend.url) as pool:
        assert (await fetch(pool)).body == b"ok"
        assert (await fetch(pool, target=b"/two")).body == b"GET /two"
        assert backend.connections == 2
        assert await seen_eof(backend.peers[0])


async def test_an_idle_connection_the_backend_closed_is_replaced_without_a_resend() -> None:
    async def handler(peer: Peer) -> None:
        request = await peer.read_request()
        assert request is not None
        await peer.send(echo_of(request))

    retries: list[int] = []

    def retry() -> list[Header]:
        retries.append(1)
        return []

    async with Backend(handler) as backend, open_pool(backend.url) as pool:
        assert (await fetch(pool, target=b"/a")).body == b"GET /a"
        await asyncio.sleep(0.1)  # the backend's FIN reaches the idle connection
        got = await fetch(pool, target=b"/b", retry_headers=retry)
        assert got.body == b"GET /b"
        assert backend.connections == 2
        assert retries == []


async def test_an_idle_connection_older_than_keepalive_is_not_reused() -> None:
    async with Backend(serve_echo) as backend, open_pool(backend.url, keepalive=0.1) as pool:
        await fetch(pool)
        await asyncio.sleep(0.2)
        assert (await fetch(pool, target=b"/later")).body == b"GET /later"
        assert backend.connections == 2
        assert await seen_eof(backend.peers[0])


async def test_an_idle_connection_is_closed_after_keepalive_without_further_traffic() -> None:
    # The docstring: "closes idle ones after keepalive seconds"; a quiet pool must not hold
    # the backend's sockets open until the next request happens to come along.
    async with Backend(serve_echo) as backend, open_pool(backend.url, keepalive=0.1) as pool:
        await fetch(pool)
        assert await seen_eof(backend.peers[0], timeout=1.5)


async def test_at_most_limit_connections_are_opened() -> None:
    async def slow_echo(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            await asyncio.sleep(0.01)
            await peer.send(echo_of(request))

    async with Backend(slow_echo) as backend, open_pool(backend.url, limit=3) as pool:
        answers = await asyncio.gather(*(fetch(pool, target=b"/%d" % n) for n in range(15)))
        assert [a.body for a in answers] == [b"GET /%d" % n for n in range(15)]
        assert backend.connections <= 3


# -- 2. response framing ----------------------------------------------------------------------


async def test_a_content_length_body_split_across_writes() -> None:
    body = bytes(range(256)) * 40

    async def handler(peer: Peer) -> None:
        if await peer.read_request() is not None:
            wire = answer(body, headers=[(b"x-kind", b"length")])
            await peer.send_slowly(split_at(wire, [5, 30, 40, 1000, 5000]))
        await serve_echo(peer)

    async with Backend(handler) as backend, open_pool(backend.url) as pool:
        got = await fetch(pool)
        assert got.body == body
        assert (b"x-kind", b"length") in got.headers
        assert (await fetch(pool, target=b"/next")).body == b"GET /next"
        assert backend.connections == 1


async def test_a_chunked_body_with_extensions_and_a_trailer_split_across_writes() -> None:
    async def handler(peer: Peer) -> None:
        if await peer.read_request() is not None:
            wire = (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
                b"5;name=value\r\nhello\r\n"
                b'1;quoted="a b"\r\n \r\n'
                b"a\r\n0123456789\r\n"
                b"0;last\r\nx-trailer: t\r\n\r\n"
            )
            await peer.send_slowly(split_at(wire, [10, 48, 52, 60, 70, 71, 90, 100]))
        await serve_echo(peer)

    async with Backend(handler) as backend, open_pool(backend.url) as pool:
        response = await pool.request("GET", b"/", [])
        try:
            assert response.content_length is None
            chunks = [chunk async for chunk in response.iter_chunks()]
        finally:
            response.release()
        assert b"".join(chunks) == b"hello 0123456789"
        assert (await fetch(pool, target=b"/next")).body == b"GET /next"
        assert backend.connections == 1


async def test_trailer_fields_never_join_the_response_headers() -> None:
    # Head, body and trailer in one write: the trailer is parsed before request() returns, and
    # must not look like a header the backend sent up front (the proxy forwards raw_headers).
    async def handler(peer: Peer) -> None:
        if await peer.read_request() is not None:
            await peer.send(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-head: h\r\n\r\n"
                b"3\r\nabc\r\n0\r\nx-trailer: t\r\n\r\n"
            )
        await serve_echo(peer)

    async with Backend(handler) as backend, open_pool(backend.url) as pool:
        response = await pool.request("GET", b"/", [])
        try:
            before = list(response.raw_headers)
            assert await response.read() == b"abc"
            after = list(response.raw_headers)
        finally:
            response.release()
        expected = [(b"transfer-encoding", b"chunked"), (b"x-head", b"h")]
        assert before == expected
        assert after == expected


async def test_a_close_delimited_body_ends_at_the_close() -> None:
    async def handler(peer: Peer) -> None:
        if peer.number == 0:
            await peer.read_request()
            await peer.send_slowly([b"HTTP/1.1 200 OK\r\nx-a: 1\r\n\r\n", b"part one, ", b"two"])
            return
        await serve_echo(peer)

    async with Backend(handler) as backend, open_pool(backend.url) as pool:
        got = await fetch(pool)
        assert (got.status, got.body) == (200, b"part one, two")
        assert (await fetch(pool, target=b"/next")).body == b"GET /next"
        assert backend.connections == 2


@pytest.mark.parametrize(
    "framing",
    [b"content-length: 1234\r\n", b"transfer-encoding: chunked\r\n"],
    ids=["content-length", "chunked"],
)
async def test_a_head_answer_ends_at_its_headers_and_the_connection_is_reused(
    framing: bytes,
) -> None:
    async def handler(peer: Peer) -> None:
        if await peer.read_request() is not None:
            await peer.send(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n")
        await serve_echo(peer)

    async with Backend(handler) as backend, open_pool(backend.url, read_timeout=1.0) as pool:
        got = await fetch(pool, "HEAD")
        assert (got.status, got.body) == (200, b"")
        name, _, value = framing.partition(b": ")
        assert (name, value.strip()) in got.headers
        assert (await fetch(pool, target=b"/next")).body == b"GET /next"
        assert backend.connections == 1
        assert [r.method for r in backend.requests] == [b"HEAD", b"GET"]


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 204 No Content\r\nx-a: 1\r\n\r\n",
        b'HTTP/1.1 304 Not Modified\r\ncontent-length: 4321\r\netag: "v1"\r\n\r\n',
    ],
    ids=["204", "304-with-length"],
)
async def test_204_and_304_have_no_body(head: bytes) -> None:
    async def handler(peer: Peer) -> None:
        if await peer.read_request() is not None:
            await peer.send(head)
        await serve_echo(peer)

    async with Backend(handler) as backend, open_pool(backend.url, read_timeout=1.0) as pool:
        response = await pool.request("GET", b"/", [])
        try:
            assert response.content_length == 0
            assert await response.read() == b""
        finally:
            response.release()
        assert (await fetch(pool, target=b"/next")).body == b"GET /next"
        assert backend.connections == 1


@pytest.mark.parametrize("split", [False, True], ids=["one-write", "separate-writes"])
async def test_interim_answers_are_skipped(split: bool) -> None:
    interims = [
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 103 Early Hints\r\nlink: </a.css>; rel=preload\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
    ]
    final = answer(b"final", 201, [(b"x-final", b"1")])

    async def handler(peer: Peer) -> None:
        if await peer.read_request() is not None:
            if split:
                await peer.send_slowly([*interims, final])
            else:
                await peer.send(b"".join(interims) + final)
        await serve_echo(peer)

    async with Backend(handler) as backend, open_pool(backend.url) as pool:
        got = await fetch(pool)
        assert (got.status, got.body) == (201, b"final")
        assert got.headers == [(b"x-final", b"1"), (b"content-length", b"5")]
        assert (await fetch(pool, target=b"/next")).body == b"GET /next"
        assert backend.connections == 1


async def test_switching_protocols_is_a_protocol_error() -> None:
    async def handler(peer: Peer) -> None:
        if peer.number == 0 and await peer.read_request() is not None:
            await peer.send(
                b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\n"
                b"upgrade: websocket\r\n\r\n\x81\x05hello"
            )
        await serve_echo(peer)

    async with Backend(handler) as backend, open_pool(backend.url) as pool:
        with pytest.raises(BackendProtocolError):
            await fetch(pool)
        assert (await fetch(pool, target=b"/next")).body == b"GET /next"
        assert backend.connections == 2


# -- 3. desync and smuggling --------------------------------------------------------------------

SMUGGLED = answer(b"SMUGGLED", headers=[(b"x-smuggled", b"1")])
# bodiless: nothing but the head parser can notice it
SMUGGLED_HEAD = b"HTTP/1.1 204 No Content\r\nx-smuggled: 1\r\n\r\n"


@pytest.mark.parametrize("extra", [SMUGGLED, SMUGGLED_HEAD], ids=["with-body", "bodiless"])
@pytest.mark.parametrize("when", ["same-write", "while-held", "while-idle"])
async def test_bytes_after_an_answer_are_never_the_next_answer(when: str, extra: bytes) -> None:
    trigger = asyncio.Event()

    async def handler(peer: Peer) -> None:
        if peer.number == 0 and (request := await peer.read_request()) is not None:
            if when == "same-write":
                await peer.send(echo_of(request) + extra)
            else:
                await peer.send(echo_of(request))
                await trigger.wait()
                await peer.send(extra)
        await serve_echo(peer)

    async with Backend(handler) as backend, open_pool(backend.url) as pool:
        response = await pool.request("GET", b"/one", [])
        try:
            assert await response.read() == b"GET /one"
            assert response.status == 200
            assert response.raw_headers == [(b"content-length", b"8")]
            if when == "while-held":
                trigger.set()
                await asyncio.sleep(0.1)
        finally:
            response.release()
        if when == "while-idle":
            trigger.set()
            await asyncio.sleep(0.1)
        got = await fetch(pool, target=b"/two")
        assert got.body == b"GET /two"
        assert (b"x-smuggled", b"1") not in got.headers
        assert backend.connections == 2
        assert [(r.connection, r.target) for r in backend.requests] == [(0, b"/one"), (1, b"/two")]


async def test_a_stray_byte_after_a_complete_answer_drops_the_connection() -> None:
    # Even a lone CRLF, which the parser would skip: the pool cannot tell a harmless byte
    # from the first of something it would misread, so the connection is not trusted again.
    trigger = asyncio.Event()

    async def handler(peer: Peer) -> None:
        if peer.number == 0 and (request := await peer.read_request()) is not None:
            await peer.send(echo_of(request))
            await trigger.wait()
            await peer.send(b"\r\n")
        await serve_echo(peer)

    async with Backend(handler) as backend, open_pool(backend.url) as pool:
        response = await pool.request("GET", b"/one", [])
        try:
            assert await response.read() == b"GET /one"
            trigger.set()
            await asyncio.sleep(0.1)
        finally:
            response.release()
        assert (await fetch(pool, target=b"/two")).body == b"GET /two"
        assert backend.connections == 2


@pytest.mark.parametrize(
    ("method", "wire"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(SMUGGLED), SMUGGLED)),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n" + SMUGGLED),
        ("GET", b"HTTP/1.1 304 Not Modified\r\n\r\n" + SMUGGLED),
    ],
    ids=["head-with-body", "204-with-body", "304-with-body"],
)
async def test_a_body_where_none_belongs_is_never_the_next_answer(method: str, wire: bytes) -> None:
    async def handler(peer: Peer) -> None:
        if peer.number == 0 and await peer.read_request() is not None:
            await peer.send(wire)
        await serve_echo(peer)

    async with Backend(handler) as backend, open_pool(backend.url) as pool:
        with contextlib.suppress(BackendProtocolError):
            got = await fetch(pool, method)
            assert got.body == b""
        await asyncio.sleep(0.05)
        assert (await fetch(pool, target=b"/two")).body == b"GET /two"
        assert backend.connections == 2


MALFORMED = {
    "no-status-code": b"HTTP/1.1 OK\r\ncontent-length: 0\r\n\r\n",
    "not-http": b"HTTQ/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
    "two-digit-status": b"HTTP/1.1 20 OK\r\ncontent-length: 0\r\n\r\n",
    # RFC 9110 §15: valid codes are 100..599, llhttp takes any three digits; the proxy would
    # pass a 99 to its client as is, and a 0 would read as "no head yet" until the read timeout
    "status-000": b"HTTP/1.1 000 Zero\r\ncontent-length: 0\r\n\r\n",
    "status-099": b"HTTP/1.1 099 Low\r\ncontent-length: 0\r\n\r\n",
    "status-600": b"HTTP/1.1 600 High\r\ncontent-length: 0\r\n\r\n",
    "bare-lf": b"HTTP/1.1 200 OK\ncontent-length: 0\n\n",
    "length-not-a-number": b"HTTP/1.1 200 OK\r\ncontent-length: abc\r\n\r\n",
    "length-negative": b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\nx",
    "length-list": b"HTTP/1.1 200 OK\r\ncontent-length: 3, 3\r\n\r\nabc",
    "length-twice": b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
    "length-overflow": b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999999999999999\r\n\r\n",
    "length-then-chunked": (
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    ),
    "chunked-then-length": (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    ),
    "folded-header": b"HTTP/1.1 200 OK\r\nx-a: a\r\n b\r\ncontent-length: 0\r\n\r\n",
    "nul-in-header": b"HTTP/1.1 200 OK\r\nx-a: a\x00b\r\ncontent-length: 0\r\n\r\n",
    "space-before-colon": b"HTTP/1.1 200 OK\r\ncontent-length : 0\r\n\r\n",
    "bad-chunk-size": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
    "chunk-longer-than-declared": (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n"
    ),
}


async def _malformed_then_clean(wire: bytes) -> None:
    # The backend keeps the broken connection open and would serve the next request on it:
    # only the pool discarding it sends that request to a new connection.
    async def handler(peer: Peer) -> None:
        if peer.number == 0 and await peer.read_request() is not None:
            await peer.send(wire)
        await serve_echo(peer)

    async with Backend(handler) as backend, open_pool(backend.url, read_timeout=1.0) as pool:
        started = asyncio.get_running_loop().time()
        with pytest.raises(BackendProtocolError):
            # bounded here so that a pool that never gives up fails the test instead of hanging
            async with asyncio.timeout(3):
                await fetch(pool)
        # refused on sight, not after waiting for more bytes
        assert asyncio.get_running_loop().time() - started < 0.5
        assert (await fetch(pool, target=b"/next")).body == b"GET /next"
        assert backend.connections == 2
        assert await seen_eof(backend.peers[0])


@pytest.mark.parametrize("wire", list(MALFORMED.values()), ids=list(MALFORMED))
async def test_a_malformed_answer_is_a_protocol_error_and_the_connection_is_dropped(
    wire: bytes,
) -> None:
    await _malformed_then_clean(wire)


# -- 4. truncation -------------------------------------------------------------------------------

TRUNCATED = {
    "short-content-length": b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabcd",
    "no-last-chunk": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n",
    "cut-inside-chunk": b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n8\r\nabcd",
    "cut-before-trailer-end": (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n"
    ),
}


@pytest.mark.parametrize("reader", ["read", "iter_chunks"])
@pytest.mark.parametrize("abort", [False, True], ids=["fin", "reset"])
@pytest.mark.parametrize("wire", list(TRUNCATED.values()), ids=list(TRUNCATED))
async def test_a_truncated_body_is_a_disconnect(wire: bytes, abort: bool, reader: str) -> None:
    async def handler(peer: Peer) -> None:
        if peer.number > 0:
            await serve_echo(peer)
        elif await peer.read_request() is not None:
            await peer.send(wire)
            if abort:
                await asyncio.sleep(0.05)  # let the pool read the bytes before the reset
                peer.writer.transport.abort()

    async with Backend(handler) as backend, open_pool(backend.url) as pool:
        response = await pool.request("GET", b"/", [])
        received: list[bytes] = []
        try:
            with pytest.raises(BackendDisconnected):
                if reader == "read":
                    await response.read()
                else:
                    async for chunk in response.iter_chunks():
                        received.append(chunk)
        finally:
            response.release()
        assert b"".join(received) in (b"", b"abcd")
        assert (await fetch(pool, target=b"/next")).body == b"GET /next"
        assert backend.connections == 2


async def test_a_head_cut_short_is_a_disconnect() -> None:
    async def handler(peer: Peer) -> None:
        if await peer.read_request() is not None:
            await peer.send(b"HTTP/1.1 200 OK\r\ncontent-le")

    async with Backend(handler) as backend, open_pool(backend.url) as pool:
        with pytest.raises(BackendDisconnected):
            await pool.request("GET", b"/", [])
        assert backend.connections == 1


# -- 5. time bounds ------------------------------------------------------------------------------


async def times_out(pool: UpstreamPool, target: bytes, kind: type[UpstreamError]) -> None:
    """A GET of ``target`` fails with ``kind`` (a TimeoutError) after the pool's own bound."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(kind) as info:
        async with asyncio.timeout(3):
            await pool.request("GET", target, [])
    assert isinstance(info.value, TimeoutError)
    assert 0.15 < loop.time() - started < 1.5


async def test_a_backend_that_never_answers_is_a_read_timeout_and_is_hung_up_on() -> None:
    async def handler(peer: Peer) -> None:
        if await peer.read_request() is not None:
            await peer.read_all()

    async with Backend(handler) as backend, open_pool(backend.url, read_timeout=0.2) as pool:
        await times_out(pool, b"/", ReadTimeout)
        assert await seen_eof(backend.peers[0])


async def test_a_body_that_stalls_is_a_read_timeout_and_is_hung_up_on() -> None:
    async def handler(peer: Peer) -> None:
        if await peer.read_request() is not None:
            await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabcd")
            await peer.read_all()

    async with Backend(handler) as backend, open_pool(backend.url, read_timeout=0.2) as pool:
        response = await pool.request("GET", b"/", [])
        try:
            with pytest.raises(ReadTimeout):
                async with asyncio.timeout(3):
                    await response.read()
        finally:
            response.release()
        assert await seen_eof(backend.peers[0])


async def test_waiting_for_a_busy_pool_is_bounded() -> None:
    gate = asyncio.Event()
    handler = gated(gate, b"/slow")

    async with (
        Backend(handler) as backend,
        open_pool(backend.url, limit=1, acquire_timeout=0.2) as pool,
        Tasks() as tasks,
    ):
        slow = tasks.start(fetch(pool, target=b"/slow"))
        await wait_until(lambda: len(backend.requests) == 1)
        # the pool's own wait, not the backend's: a kind of its own (503, not 504, upstream)
        await times_out(pool, b"/fast", PoolTimeout)
        gate.set()
        assert (await bounded(slow)).body == b"GET /slow"
        assert (await fetch(pool, target=b"/fast")).body == b"GET /fast"
        assert backend.connections == 1


async def test_a_waiter_gets_the_connection_when_it_comes_back() -> None:
    gate = asyncio.Event()
    handler = gated(gate, b"/slow")

    async with (
        Backend(handler) as backend,
        open_pool(backend.url, limit=1) as pool,
        Tasks() as tasks,
    ):
        slow = tasks.start(fetch(pool, target=b"/slow"))
        await wait_until(lambda: len(backend.requests) == 1)
        queued = tasks.start(fetch(pool, target=b"/queued"))
        await asyncio.sleep(0.05)
        assert not queued.done()
        gate.set()
        assert (await bounded(slow)).body == b"GET /slow"
        assert (await bounded(queued)).body == b"GET /queued"
        assert backend.connections == 1


async def test_a_cancelled_waiter_does_not_strand_the_next_one() -> None:
    # The connection comes back and wakes the first waiter, whose task is cancelled before it
    # runs (its client went away): the free connection must still reach the second waiter.
    async with (
        Backend(serve_echo) as backend,
        open_pool(backend.url, limit=1, acquire_timeout=1.0) as pool,
        Tasks() as tasks,
    ):
        first = await pool.request("GET", b"/first", [])
        assert await first.read() == b"GET /first"
        cancelled = tasks.start(fetch(pool, target=b"/cancelled"))
        waiting = tasks.start(fetch(pool, target=b"/waiting"))
        await asyncio.sleep(0.05)
        first.release()
        cancelled.cancel()
        with pytest.raises(asyncio.CancelledError):
            await bounded(cancelled)
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert (await bounded(waiting)).body == b"GET /waiting"
        assert loop.time() - started < 0.5
        assert backend.connections == 1


async def test_a_refused_connection_is_unreachable() -> None:
    async with open_pool(f"http://127.0.0.1:{free_port()}") as pool:
        with pytest.raises(BackendUnreachable) as info:
            await pool.request("GET", b"/", [])
        assert isinstance(info.value, ConnectionError)


async def test_a_connect_that_hangs_is_a_connect_timeout() -> None:
    # A listener whose accept queue is full drops further SYNs: the connect just hangs.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        fillers = [socket.socket() for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(listener.getsockname())
            await asyncio.sleep(0.05)
            port = listener.getsockname()[1]
            async with open_pool(f"http://127.0.0.1:{port}", connect_timeout=0.2) as pool:
                with pytest.raises(ConnectTimeout) as info:
                    async with asyncio.timeout(3):
                        await pool.request("GET", b"/", [])
                assert isinstance(info.value, TimeoutError)
        finally:
            for filler in fillers:
                filler.close()


async def test_a_backend_that_stops_reading_an_upload_is_bounded() -> None:
    # "every wait is bounded": a backend that accepts but never reads fills the socket buffers,
    # and the pool then waits for the transport to drain. That wait must end too.
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    async def handler(peer: Peer) -> None:
        await peer.hang()

    piece = b"x" * 65536

    async def endless() -> AsyncIterator[bytes]:
        for _ in range(2048):  # 128 MiB: far more than any socket buffer holds
            yield piece

    backend = Backend(handler)
    server = await asyncio.start_server(backend._serve, sock=listener)
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        async with open_pool(url, read_timeout=0.3) as pool:
            with pytest.raises(UpstreamError) as info:
                async with asyncio.timeout(3):
                    await pool.request("PUT", b"/upload", [], body=endless())
            assert isinstance(info.value, TimeoutError)
    finally:
        server.close()
        await backend.finish()
        await server.wait_closed()


# -- 6. the request side ----------------------------------------------------------------------


async def _recorder(peer: Peer) -> None:
    await peer.read_all()


INJECTIONS: dict[str, tuple[bytes, list[Header]]] = {
    "lf-in-value": (b"/", [(b"x-a", b"1\nx-injected: 1")]),
    "crlf-in-value": (b"/", [(b"x-a", b"1\r\nx-injected: 1")]),
    "cr-in-value": (b"/", [(b"x-a", b"1\rx-injected: 1")]),
    "crlf-crlf-in-value": (b"/", [(b"x-a", b"1\r\n\r\nGET /smuggled HTTP/1.1\r\nhost: x")]),
    "crlf-in-name": (b"/", [(b"x-a: 1\r\nx-injected", b"1")]),
    "crlf-in-target": (b"/a HTTP/1.1\r\nx-injected: 1\r\nx-b:", []),
    "lf-in-target": (b"/a\n", []),
    "cr-in-target": (b"/a\r", []),
    "space-in-target": (b"/a b", []),
    "request-line-in-target": (b"/a HTTP/1.1", []),
}


@pytest.mark.parametrize(("target", "headers"), list(INJECTIONS.values()), ids=list(INJECTIONS))
async def test_a_line_break_or_space_in_the_head_is_refused_before_a_byte_is_sent(
    target: bytes, headers: list[Header]
) -> None:
    async with Backend(_recorder) as backend:
        async with open_pool(backend.url) as pool:
            with pytest.raises(ValueError):
                await pool.request("GET", target, headers)
            with pytest.raises(ValueError):
                await pool.request("POST", target, headers, body=b"body")
        await backend.finish()
        assert all(peer.received == b"" for peer in backend.peers)
        assert backend.requests == []


async def test_host_is_the_origin_and_the_framing_is_the_pools() -> None:
    async with Backend(serve_echo) as backend, open_pool(backend.url) as pool:
        await fetch(pool, "GET", b"/g", [(b"x-a", b"1")])
        await fetch(pool, "POST", b"/p", [(b"x-b", b"2")], body=b"hello")
        await fetch(pool, "POST", b"/empty", [], body=b"")
        get, post, empty = backend.requests
        host = f"127.0.0.1:{backend.port}".encode()
        assert get.head == b"GET /g HTTP/1.1\r\nhost: " + host + b"\r\nx-a: 1\r\n\r\n"
        assert post.values(b"host") == [host]
        assert post.values(b"content-length") == [b"5"]
        assert post.values(b"transfer-encoding") == []
        assert post.body == b"hello"
        assert empty.values(b"content-length") == [b"0"]
        assert empty.body == b""


@pytest.mark.parametrize(
    "header",
    [
        (b"host", b"evil.example"),
        (b"Host", b"evil.example"),
        (b"content-length", b"0"),
        (b"transfer-encoding", b"chunked"),
    ],
    ids=["host", "Host", "content-length", "transfer-encoding"],
)
async def test_headers_cannot_add_a_second_host_or_framing_header(header: Header) -> None:
    # Either refused outright (nothing sent), or the backend sees one Host, the origin's, and
    # one framing header, the one that matches the body: a second one is how requests get
    # smuggled past a front end.
    async def handler(peer: Peer) -> None:
        request = await peer.read_request(read_body=False)
        if request is not None:
            await peer.send(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n")
            await peer.read_all()

    async with Backend(handler) as backend:
        async with open_pool(backend.url) as pool:
            try:
                await fetch(pool, "POST", b"/", [header], body=b"hello")
            except ValueError:
                refused = True
            else:
                refused = False
        await backend.finish()
        if refused:
            assert all(peer.received == b"" for peer in backend.peers)
            return
        (request,) = backend.requests
        assert request.values(b"host") == [f"127.0.0.1:{backend.port}".encode()]
        framing = request.values(b"content-length") + request.values(b"transfer-encoding")
        assert framing == [b"5"]


async def test_a_streamed_body_of_unknown_length_is_sent_chunked() -> None:
    parts = (b"first ", b"", b"\r\n0\r\n\r\n", b"x" * 70000, b"last")
    async with Backend(serve_echo) as backend, open_pool(backend.url) as pool:
        await fetch(pool, "POST", b"/up", body=stream(*parts))
        await fetch(pool, "POST", b"/empty", body=stream())
        upload, empty = backend.requests
        assert upload.values(b"transfer-encoding") == [b"chunked"]
        assert upload.values(b"content-length") == []
        assert upload.body == b"".join(parts)
        assert empty.values(b"transfer-encoding") == [b"chunked"]
        assert empty.body == b""
        assert backend.connections == 1


async def test_a_streamed_body_of_known_length_is_sent_as_is() -> None:
    parts = (b"abc", b"", b"defgh", b"\r\n0\r\n\r\n")
    size = sum(map(len, parts))
    async with Backend(serve_echo) as backend, open_pool(backend.url) as pool:
        await fetch(pool, "PUT", b"/up", body=stream(*parts), length=size)
        assert (await fetch(pool, target=b"/next")).body == b"GET /next"
        upload, _ = backend.requests
        assert upload.values(b"content-length") == [str(size).encode()]
        assert upload.values(b"transfer-encoding") == []
        assert upload.body == b"".join(parts)
        assert backend.connections == 1


async def test_a_streamed_body_longer_than_its_length_never_reaches_the_backend_as_a_request() -> (
    None
):
    smuggled = b"GET /smuggled HTTP/1.1\r\nhost: x\r\n\r\n"
    async with Backend(serve_echo) as backend:
        async with open_pool(backend.url) as pool:
            with contextlib.suppress(ValueError, UpstreamError):
                await fetch(pool, "POST", b"/up", body=stream(b"hello", smuggled), length=5)
            await asyncio.sleep(0.05)
        await backend.finish()
        assert [r.target for r in backend.requests] == [b"/up"]
        assert all(smuggled not in peer.received for peer in backend.peers)


async def test_a_streamed_body_shorter_than_its_length_does_not_desync_the_connection() -> None:
    # A backend that answers as soon as it has the head (as many do for a 401 or a 413) then
    # reads the declared body: if the pool sent less and pooled the connection, the next
    # request would be swallowed as the rest of that body.
    async def handler(peer: Peer) -> None:
        while (request := await peer.read_request(read_body=False)) is not None:
            await peer.send(echo_of(request))
            await peer.read_body(request)

    async with Backend(handler) as backend, open_pool(backend.url, read_timeout=0.5) as pool:
        with contextlib.suppress(ValueError, UpstreamError):
            await fetch(pool, "PUT", b"/up", body=stream(b"hello"), length=10)
        assert (await fetch(pool, target=b"/next")).body == b"GET /next"
        assert [(r.method, r.target) for r in backend.requests] == [
            (b"PUT", b"/up"),
            (b"GET", b"/next"),
        ]


@pytest.mark.parametrize("prefix", ["/prefix", "/prefix/", "/a/b"])
async def test_the_origin_path_prefixes_every_target(prefix: str) -> None:
    async with Backend(serve_echo) as backend, open_pool(backend.url + prefix) as pool:
        await fetch(pool, target=b"/v1/items?x=1")
        (request,) = backend.requests
        assert request.target == prefix.rstrip("/").encode() + b"/v1/items?x=1"
        assert pool.prefix == prefix.rstrip("/").encode()


# -- 7. the one resend -------------------------------------------------------------------------


async def _answer_once_then_drop(peer: Peer) -> None:
    if await peer.read_request() is None:
        return
    await peer.send(answer(b"answer on %d" % peer.number))
    # the next request is read and the connection closed without a byte of answer
    await peer.read_request()


class Retries:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> list[Header]:
        self.calls += 1
        return [(b"x-attempt", b"resend")]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "OPTIONS"])
async def test_an_idempotent_request_on_a_dead_reused_connection_is_resent_once(
    method: str,
) -> None:
    body = b"payload" if method == "PUT" else None
    retries = Retries()
    async with Backend(_answer_once_then_drop) as backend, open_pool(backend.url) as pool:
        assert (await fetch(pool)).body == b"answer on 0"
        got = await fetch(
            pool, method, b"/again", [(b"x-attempt", b"first")], body=body, retry_headers=retries
        )
        assert (got.status, got.body) == (200, b"answer on 1")
        assert retries.calls == 1
        assert backend.connections == 2
        _, dropped, resent = backend.requests
        assert (dropped.connection, dropped.values(b"x-attempt")) == (0, [b"first"])
        assert (resent.connection, resent.values(b"x-attempt")) == (1, [b"resend"])
        assert resent.method == method.encode()
        assert resent.body == dropped.body == (body or b"")


@pytest.mark.parametrize(
    ("method", "streamed"),
    [("POST", False), ("PATCH", False), ("PUT", True)],
    ids=["post", "patch", "put-streamed"],
)
async def test_a_request_that_cannot_be_replayed_is_not_resent(method: str, streamed: bool) -> None:
    retries = Retries()
    body: bytes | AsyncIterator[bytes] = stream(b"once") if streamed else b"once"
    async with Backend(_answer_once_then_drop) as backend, open_pool(backend.url) as pool:
        await fetch(pool)
        with pytest.raises(BackendDisconnected):
            await fetch(pool, method, b"/again", body=body, retry_headers=retries)
        assert retries.calls == 0
        assert backend.connections == 1


async def test_a_first_use_connection_that_dies_is_not_resent() -> None:
    async def handler(peer: Peer) -> None:
        await peer.read_request()

    retries = Retries()
    async with Backend(handler) as backend, open_pool(backend.url) as pool:
        with pytest.raises(BackendDisconnected):
            await fetch(pool, retry_headers=retries)
        assert retries.calls == 0
        assert backend.connections == 1


async def test_a_resend_that_dies_too_is_not_resent_again() -> None:
    async def handler(peer: Peer) -> None:
        if peer.number == 0:
            await _answer_once_then_drop(peer)
        else:
            await peer.read_request()

    retries = Retries()
    async with Backend(handler) as backend, open_pool(backend.url) as pool:
        await fetch(pool)
        with pytest.raises(BackendDisconnected):
            await fetch(pool, retry_headers=retries)
        assert retries.calls == 1
        assert backend.connections == 2


@pytest.mark.parametrize(
    "second",
    ["partial-answer", "silence"],
)
async def test_a_reused_connection_that_started_answering_or_timed_out_is_not_resent(
    second: str,
) -> None:
    async def handler(peer: Peer) -> None:
        if await peer.read_request() is None:
            return
        await peer.send(answer(b"first"))
        if await peer.read_request() is None:
            return
        if second == "partial-answer":
            await peer.send(b"HTTP/1.1 200 OK\r\n")
        else:
            await peer.read_all()

    retries = Retries()
    async with Backend(handler) as backend, open_pool(backend.url, read_timeout=0.2) as pool:
        await fetch(pool)
        expected = BackendDisconnected if second == "partial-answer" else ReadTimeout
        with pytest.raises(expected):
            async with asyncio.timeout(3):
                await fetch(pool, retry_headers=retries)
        assert retries.calls == 0
        assert backend.connections == 1


# -- 8. big bodies and early release -----------------------------------------------------------

BIG = random.Random(20240601).randbytes(5 * 1024 * 1024)


def _big_answer(chunked: bool) -> list[bytes]:
    if not chunked:
        head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(BIG)
        return [head, *(BIG[i : i + 1_000_000] for i in range(0, len(BIG), 1_000_000))]
    pieces = [b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"]
    for i in range(0, len(BIG), 100_000):
        part = BIG[i : i + 100_000]
        pieces.append(b"%x\r\n%s\r\n" % (len(part), part))
    pieces.append(b"0\r\n\r\n")
    return pieces


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_a_big_streamed_body_arrives_exactly_with_bounded_buffering(chunked: bool) -> None:
    async def handler(peer: Peer) -> None:
        if await peer.read_request() is not None:
            for piece in _big_answer(chunked):
                await peer.send(piece)
        await serve_echo(peer)

    async with Backend(handler) as backend, open_pool(backend.url) as pool:
        response = await pool.request("GET", b"/big", [])
        received = bytearray()
        try:
            # A slow consumer: without flow control the pool would read all 5 MB into memory
            # while it waits; with it, reading pauses near the 256 KiB high-water mark.
            await asyncio.sleep(0.3)
            assert response._buffered < 1024 * 1024
            count = 0
            async for chunk in response.iter_chunks():
                received += chunk
                count += 1
                if count % 8 == 0:
                    await asyncio.sleep(0.001)
                assert response._buffered < 1024 * 1024
        finally:
            response.release()
        assert bytes(received) == BIG
        assert (await fetch(pool, target=b"/next")).body == b"GET /next"
        assert backend.connections == 1


async def test_read_returns_a_body_bigger_than_the_high_water_mark() -> None:
    # read() is documented for small bodies, but a bigger one must still arrive (or fail
    # fast), not stall until the read timeout because reading was paused behind read()'s back.
    body = BIG[: 1024 * 1024]

    async def handler(peer: Peer) -> None:
        if await peer.read_request() is not None:
            await peer.send(answer(body))
        await serve_echo(peer)

    async with Backend(handler) as backend, open_pool(backend.url, read_timeout=1.0) as pool:
        assert (await fetch(pool)).body == body


async def test_a_connection_read_with_read_past_the_high_water_mark_is_still_usable() -> None:
    # Exactly one byte over the mark: the last byte pauses reading and completes the answer
    # in the same call, so read() returns and the connection goes back to the pool; it must
    # not go back with its reading still paused.
    body = BIG[: 256 * 1024 + 1]

    async def handler(peer: Peer) -> None:
        if await peer.read_request() is not None:
            await peer.send(answer(body))
        await serve_echo(peer)

    async with Backend(handler) as backend, open_pool(backend.url, read_timeout=0.5) as pool:
        assert (await fetch(pool)).body == body
        assert (await fetch(pool, target=b"/next")).body == b"GET /next"


@pytest.mark.parametrize("arrived", [False, True], ids=["body-pending", "body-arrived"])
async def test_a_response_released_before_its_body_was_read_closes_the_connection(
    arrived: bool,
) -> None:
    async def handler(peer: Peer) -> None:
        if peer.number == 0 and await peer.read_request() is not None:
            if arrived:
                await peer.send(answer(b"x" * 100))
            else:
                await peer.send(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n" + b"x" * 10)
            await peer.read_all()
            return
        await serve_echo(peer)

    async with Backend(handler) as backend, open_pool(backend.url) as pool:
        response = await pool.request("GET", b"/", [])
        await asyncio.sleep(0.05)
        response.release()
        assert await seen_eof(backend.peers[0])
        assert (await fetch(pool, target=b"/next")).body == b"GET /next"
        assert backend.connections == 2


# -- closing the pool --------------------------------------------------------------------------


async def test_closing_the_pool_fails_waiters_and_closes_connections_as_they_come_back() -> None:
    gate = asyncio.Event()
    handler = gated(gate)

    async with Backend(handler) as backend, Tasks() as tasks:
        pool = UpstreamPool(
            backend.url, connect_timeout=1.0, read_timeout=2.0, acquire_timeout=2.0, limit=1
        )
        busy = tasks.start(fetch(pool, target=b"/busy"))
        await wait_until(lambda: len(backend.requests) == 1)
        waiting = tasks.start(fetch(pool, target=b"/waiting"))
        await asyncio.sleep(0.02)
        await pool.close()
        with pytest.raises(BackendUnreachable):
            await bounded(waiting)
        gate.set()
        assert (await bounded(busy)).body == b"GET /busy"
        assert await seen_eof(backend.peers[0])
        with pytest.raises(BackendUnreachable):
            await fetch(pool)
        assert backend.connections == 1


# -- 8b. bounded heads, FIFO waiters, release by structure (issue 22) --------------------------


async def endless_head(peer: Peer, *, interim: bool = False) -> None:
    """Answer with a head that never ends: one endless header line, or 1xx answers for ever."""
    if await peer.read_request() is None:
        return
    try:
        if interim:
            while True:
                await peer.send(b"HTTP/1.1 100 Continue\r\n\r\n" * 64)
        await peer.send(b"HTTP/1.1 200 OK\r\nx-flood: ")
        while True:
            await peer.send(b"a" * 65536)
    except ConnectionError:
        peer.eof.set()  # the pool hung up: what seen_eof() waits for


async def test_an_endless_backend_head_is_refused_within_its_bound() -> None:
    # The attack grew the gateway to 4 GB in 20 s: httptools keeps an unfinished header line in
    # memory, so the bound must stop the bytes before they reach it.
    async with (
        Backend(endless_head) as backend,
        open_pool(backend.url, read_timeout=5.0, max_head_bytes=65536) as pool,
    ):
        with pytest.raises(BackendProtocolError, match="head is too large"):
            await bounded(fetch(pool))
        assert await seen_eof(backend.peers[0])


@pytest.mark.parametrize("extra", [0, 1], ids=["at-the-bound", "one-byte-over"])
async def test_the_head_bound_is_exact(extra: int) -> None:
    bound = 4096
    status_line = b"HTTP/1.1 200 OK\r\n"
    tail = b"content-length: 2\r\n\r\n"
    filler = bound + extra - len(status_line) - len(tail) - len(b"x-fill: \r\n")
    head = status_line + b"x-fill: " + b"f" * filler + b"\r\n" + tail
    assert len(head) == bound + extra

    async def handler(peer: Peer) -> None:
        if await peer.read_request() is not None:
            # in small writes, so the bound is checked across reads, not in one
            await peer.send_slowly(
                [head[i : i + 1000] for i in range(0, len(head), 1000)] + [b"ok"]
            )
        await serve_echo(peer)

    async with Backend(handler) as backend, open_pool(backend.url, max_head_bytes=bound) as pool:
        if extra:
            with pytest.raises(BackendProtocolError):
                await fetch(pool)
        else:
            assert (await fetch(pool)).body == b"ok"


@pytest.mark.parametrize("count", [8, 9], ids=["at-the-bound", "one-over"])
async def test_interim_answers_are_bounded(count: int) -> None:
    async def handler(peer: Peer) -> None:
        if await peer.read_request() is not None:
            await peer.send(b"HTTP/1.1 103 Early Hints\r\n\r\n" * count + answer(b"final"))
        await serve_echo(peer)

    async with Backend(handler) as backend, open_pool(backend.url, max_interim=8) as pool:
        if count > 8:
            with pytest.raises(BackendProtocolError, match="interim"):
                await fetch(pool)
        else:
            assert (await fetch(pool)).body == b"final"


async def test_endless_interim_answers_end_in_a_protocol_error() -> None:
    async def handler(peer: Peer) -> None:
        await endless_head(peer, interim=True)

    async with Backend(handler) as backend, open_pool(backend.url, read_timeout=5.0) as pool:
        with pytest.raises(BackendProtocolError):
            await bounded(fetch(pool))
        assert await seen_eof(backend.peers[0])


async def test_waiters_are_served_in_arrival_order_even_before_the_releaser() -> None:
    # One connection, three queued waiters; the holder releases and asks again at once, as a
    # busy client loop does. A pool that parks the connection in its idle list and then wakes
    # a waiter lets the releaser take it back first: waiters starve behind whoever releases.
    async with (
        Backend(serve_echo) as backend,
        open_pool(backend.url, limit=1) as pool,
        Tasks() as tasks,
    ):
        held = await pool.request("GET", b"/held", [])
        assert await held.read() == b"GET /held"
        waiters = []
        for n in range(3):
            waiters.append(tasks.start(fetch(pool, target=b"/w%d" % n)))
            await asyncio.sleep(0.01)  # each one queued before the next
        held.release()
        # asked for in the same step as the release (no task switch in between)
        again = await bounded(fetch(pool, target=b"/again"))
        await bounded(asyncio.gather(*waiters))
        assert again.body == b"GET /again"
        order = [request.target for request in backend.requests]
        assert order == [b"/held", b"/w0", b"/w1", b"/w2", b"/again"]
        assert backend.connections == 1


async def test_a_freed_slot_goes_to_the_oldest_waiter() -> None:
    # A connection that closes instead of coming back frees a slot: the oldest waiter opens
    # the next connection, not a later arrival.
    async def handler(peer: Peer) -> None:
        request = await peer.read_request()
        if request is not None:
            await peer.send(answer(request.target, headers=[(b"connection", b"close")]))

    async with (
        Backend(handler) as backend,
        open_pool(backend.url, limit=1) as pool,
        Tasks() as tasks,
    ):
        held = await pool.request("GET", b"/held", [])
        first = tasks.start(fetch(pool, target=b"/first"))
        await asyncio.sleep(0.01)
        await held.read()
        held.release()
        await bounded(fetch(pool, target=b"/late"))  # in the same step as the release
        await bounded(first)
        assert [r.target for r in backend.requests] == [b"/held", b"/first", b"/late"]


class Boom(Exception):
    pass


@pytest.mark.parametrize("how", ["exception", "cancel", "early-return"])
async def test_leaving_a_stream_block_any_way_frees_the_slot(how: str) -> None:
    big = b"x" * 300_000  # over the high-water mark: the body is unread when the block ends

    async def handler(peer: Peer) -> None:
        while await peer.read_request() is not None:
            await peer.send(answer(big))

    async def use(pool: UpstreamPool) -> bytes:
        async with pool.stream("GET", b"/", []) as response:
            if how == "exception":
                raise Boom()
            if how == "cancel":
                await asyncio.sleep(10)
            return response.raw_headers[0][0]

    async with Backend(handler) as backend, open_pool(backend.url, limit=1) as pool:
        task = asyncio.create_task(use(pool))
        if how == "cancel":
            await wait_until(lambda: len(backend.requests) == 1)
            await asyncio.sleep(0.02)
            task.cancel()
        with contextlib.suppress(Boom, asyncio.CancelledError):
            await bounded(task)
        assert pool._open == 0  # the half-read connection was closed, its slot freed
        assert await seen_eof(backend.peers[0])
        # and the one slot serves the next request at once
        assert (await bounded(fetch(pool, target=b"/next"), 1.0)).body == big
        assert backend.connections == 2


# -- 9. Origin -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://backend/",
        "unix:///run/backend.sock",
        "backend:8080",
        "http://",
        "http:///path",
        "http://user@backend/",
        "http://user:secret@backend/",
        "http://backend/?q=1",
        "http://backend/#fragment",
        "http://backend:99999/",
    ],
)
def test_origin_refuses_what_it_cannot_honour(url: str) -> None:
    with pytest.raises(ValueError):
        Origin(url)


@pytest.mark.parametrize(
    ("url", "host", "port", "prefix", "host_header", "tls"),
    [
        ("http://backend", "backend", 80, b"", b"backend", False),
        ("https://backend", "backend", 443, b"", b"backend", True),
        ("http://backend:8080/api/", "backend", 8080, b"/api", b"backend:8080", False),
        ("https://backend:8443/a/b", "backend", 8443, b"/a/b", b"backend:8443", True),
        ("http://[::1]:9000", "::1", 9000, b"", b"[::1]:9000", False),
    ],
)
def test_origin_parts(
    url: str, host: str, port: int, prefix: bytes, host_header: bytes, tls: bool
) -> None:
    origin = Origin(url)
    assert (origin.host, origin.port, origin.prefix, origin.host_header, origin.tls) == (
        host,
        port,
        prefix,
        host_header,
        tls,
    )


# -- 10. properties ------------------------------------------------------------------------------

_TOKEN = string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~"
# names whose meaning llhttp acts on; the framing header is the strategy's own choice
_SPECIAL = {
    b"content-length",
    b"transfer-encoding",
    b"connection",
    b"proxy-connection",
    b"keep-alive",
    b"upgrade",
}
_names = st.text(_TOKEN, min_size=1, max_size=16).map(str.encode)
_names = _names.filter(lambda name: name.lower() not in _SPECIAL)
_values = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=24).map(
    str.encode
)
_statuses = st.integers(200, 599).filter(lambda status: status not in (204, 304))


@dataclass
class Scripted:
    status: int
    headers: list[Header]
    body: bytes
    writes: list[bytes]


@st.composite
def _scripted(draw: st.DrawFn) -> Scripted:
    status = draw(_statuses)
    headers = draw(st.lists(st.tuples(_names, _values), max_size=8))
    body = draw(st.binary(max_size=3000))
    if draw(st.booleans()):
        cuts = draw(st.lists(st.integers(0, len(body)), max_size=5))
        payload = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in split_at(body, cuts))
        payload += b"0\r\n\r\n"
        framing: Header = (b"transfer-encoding", b"chunked")
    else:
        payload = body
        framing = (b"content-length", str(len(body)).encode())
    lines = b"".join(name + b": " + value + b"\r\n" for name, value in [*headers, framing])
    wire = b"HTTP/1.1 %d Whatever\r\n%s\r\n%s" % (status, lines, payload)
    write_cuts = draw(st.lists(st.integers(0, len(wire)), max_size=6))
    return Scripted(status, [*headers, framing], body, split_at(wire, write_cuts))


@settings(max_examples=40, deadline=None)
@given(scripted=_scripted())
async def test_any_well_framed_answer_arrives_exactly_and_keeps_the_connection(
    scripted: Scripted,
) -> None:
    async def handler(peer: Peer) -> None:
        if await peer.read_request() is not None:
            await peer.send_slowly(scripted.writes, pause=0.001)
        await serve_echo(peer)

    async with Backend(handler) as backend, open_pool(backend.url) as pool:
        got = await fetch(pool)
        assert (got.status, got.headers, got.body) == (
            scripted.status,
            scripted.headers,
            scripted.body,
        )
        assert (await fetch(pool, target=b"/next")).body == b"GET /next"
        assert backend.connections == 1


_PREFIXES = [
    b"",
    b"HTTP/1.1 ",
    b"HTTP/1.1 200 OK\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n",
    b"HTTP/1.1 204 No Content\r\n\r\n",
]


@settings(max_examples=40, deadline=None)
@given(
    junk=st.builds(bytes.__add__, st.sampled_from(_PREFIXES), st.binary(max_size=120)),
    close=st.booleans(),
)
async def test_arbitrary_bytes_are_an_answer_or_an_upstream_error_within_the_timeout(
    junk: bytes, close: bool
) -> None:
    async def handler(peer: Peer) -> None:
        if await peer.read_request() is not None:
            await peer.send(junk)
            if not close:
                await peer.read_all()

    async with Backend(handler) as backend, open_pool(backend.url, read_timeout=0.05) as pool:
        async with asyncio.timeout(2):
            with contextlib.suppress(UpstreamError):
                await fetch(pool)
        # whatever happened, the pool is still usable for the next backend connection
        assert backend.connections == 1


_header_bytes = st.binary(max_size=12) | st.sampled_from([b"\r", b"\n", b"\r\n", b"a\r\nb"])


@settings(max_examples=40, deadline=None)
@given(
    target=st.builds(bytes.__add__, st.just(b"/"), _header_bytes),
    headers=st.lists(st.tuples(_names, _header_bytes), max_size=4),
)
async def test_a_head_is_sent_line_for_line_or_refused_whole(
    target: bytes, headers: list[Header]
) -> None:
    async with Backend(serve_echo) as backend:
        async with open_pool(backend.url) as pool:
            try:
                await fetch(pool, "GET", target, headers)
            except ValueError:
                refused = True
            else:
                refused = False
        await backend.finish()
        unsafe = any(c in blob for blob in [target, *(v for _, v in headers)] for c in b"\r\n")
        if refused:
            assert unsafe or b" " in target
            assert all(peer.received == b"" for peer in backend.peers)
            return
        assert not unsafe
        (request,) = backend.requests
        lines = request.head[:-4].split(b"\r\n")
        assert lines[0] == b"GET " + target + b" HTTP/1.1"
        assert len(lines) == 2 + len(headers)
        assert [line.partition(b": ")[::2] for line in lines[2:]] == headers
