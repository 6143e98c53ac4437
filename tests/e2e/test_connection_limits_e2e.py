"""Issue 21, findings 3 and 4, attacked on the real processes: both services (``tokengate gateway``
and ``tokengate backend``, uvicorn with httptools) bound a client connection before the app sees a
request: the head's size and fields (431) and target (414), the time to send a head (408, or a
silent close for a connection that sends nothing), keep-alive idleness, and the number of
connections per worker (503 with ``Retry-After``). Short settings keep each attack to seconds.

Each test talks raw HTTP/1.1 over a socket, as an attacker does; no client library would send
these heads.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.e2e

HEAD_TIMEOUT = 2.0
KEEP_ALIVE = 1
CAP = 8
HEAD_BYTES = 16384  # the gateway's default MAX_REQUEST_HEAD_BYTES (the backend's is 32768)
FIELDS = 100  # the gateway's default MAX_REQUEST_HEADERS (the backend's is 128)
LINE = 8192  # the default MAX_REQUEST_LINE_BYTES
LIMITS = {
    "MAX_REQUEST_HEAD_BYTES": str(HEAD_BYTES),
    "MAX_REQUEST_HEADERS": str(FIELDS),
    "REQUEST_HEAD_TIMEOUT": str(HEAD_TIMEOUT),
    "KEEP_ALIVE_TIMEOUT": str(KEEP_ALIVE),
    "MAX_CONNECTIONS": str(CAP),
}


@pytest.fixture(scope="module")
def stack(migrated_dsn: str, redis_url: str, redis_prefix: str) -> Iterator[Stack]:
    with running_stack(
        database_url=migrated_dsn,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        gateway_env=LIMITS,
        backend_env=LIMITS,
    ) as running:
        yield running


@pytest.fixture(params=["gateway", "backend"])
def service(request: pytest.FixtureRequest, stack: Stack) -> tuple[str, int, int]:
    """(name, port, pid) of one service of the stack."""
    name = str(request.param)
    url = stack.gateway_url if name == "gateway" else stack.backend_url
    pid = stack.gateway_pid if name == "gateway" else stack.backend_pid
    assert pid is not None
    return name, int(url.rsplit(":", 1)[1]), pid


def _connect(port: int, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_until_closed(sock: socket.socket) -> bytes:
    data = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data.extend(chunk)
    return bytes(data)


def _read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response (Content-Length framed, as every answer here is) off a kept socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a response head: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status, headers = _parse_head(head)
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk
        rest += chunk
    return status, headers, rest[:length]


def _parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def _parse(raw: bytes) -> tuple[int, dict[str, str], dict[str, object]]:
    head, _, body = raw.partition(b"\r\n\r\n")
    status, headers = _parse_head(head)
    return status, headers, json.loads(body) if body else {}


def _assert_refused(raw: bytes, status: int, code: str) -> dict[str, str]:
    got, headers, body = _parse(raw)
    assert got == status, raw[:300]
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    assert body == {"error": {"code": code, "message": body["error"]["message"]}}  # type: ignore[index]
    return headers


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _request(extra: bytes = b"", target: bytes = b"/healthz") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: localhost\r\n" + extra + b"\r\n"


class _Sender(threading.Thread):
    """Sends ``data`` in 64 KiB pieces until the server stops taking it; ``sent`` counts them."""

    def __init__(self, sock: socket.socket, data: bytes) -> None:
        super().__init__(daemon=True)
        self.sock, self.data, self.sent = sock, memoryview(data), 0
        self.start()

    def run(self) -> None:
        with contextlib.suppress(OSError):  # the server stops reading once it has refused
            while self.sent < len(self.data):
                self.sock.sendall(self.data[self.sent : self.sent + 65536])
                self.sent += 65536


def _assert_served(sock: socket.socket, request: bytes) -> None:
    sock.sendall(request)
    status, _, _ = _read_response(sock)
    assert status == 200


def _trickle(sock: socket.socket, data: bytes) -> bytes:
    """Send ``data`` a byte every 0.2 s (it would take 20 s and more) until the server ends it;
    what the server answered."""
    with contextlib.suppress(OSError):
        for byte in data:
            sock.sendall(bytes([byte]))
            time.sleep(0.2)
    return _read_until_closed(sock)


# -- heads ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    ["many-lines", "one-line"],  # 64 MiB of 1 KiB fields, or one field of 64 MiB
)
def test_a_head_of_megabytes_is_431_at_once_and_never_buffered(
    service: tuple[str, int, int], shape: str
) -> None:
    """The reproduction buffered 300 MiB of header lines whole (67 -> 416 MiB RSS) and answered
    200; now the answer is 431 once 16 KiB have come, the process does not grow, and it stops
    reading the rest after its short linger (LINGER_BYTES, LINGER_SECONDS)."""
    _, port, pid = service
    size = 64 * 1024 * 1024
    if shape == "many-lines":
        lines = b"".join(b"X-Pad-%05d: %s\r\n" % (i, b"a" * 1000) for i in range(size // 1024))
    else:
        lines = b"X-Pad: " + b"a" * size + b"\r\n"
    before = _rss_kib(pid)
    start = time.monotonic()
    with _connect(port) as sock:
        sender = _Sender(sock, _request(lines))
        raw = _read_until_closed(sock)
        elapsed = time.monotonic() - start
        sender.join(10)
    _assert_refused(raw, 431, "request_head_too_large")
    assert elapsed < 5.0  # the answer comes at once; the close after at most a second's linger
    assert _rss_kib(pid) - before < 4096, (before, _rss_kib(pid))
    # what was sent beyond the limit is the linger's 256 KiB and the kernel's socket buffers
    assert sender.sent < size // 2, sender.sent


def test_too_many_header_fields_is_431_and_the_limit_itself_is_served(
    service: tuple[str, int, int],
) -> None:
    _, port, _ = service
    # Host is one field: Host + 99 = the limit, Host + 100 = one too many.
    at_limit = b"".join(b"X-F-%d: 1\r\n" % i for i in range(FIELDS - 1))
    with _connect(port) as sock:
        _assert_served(sock, _request(at_limit))
        # the same keep-alive connection: the count starts again for each request
        sock.sendall(_request(at_limit + b"X-F-last: 1\r\n"))
        _assert_refused(_read_until_closed(sock), 431, "too_many_headers")


def test_fields_arriving_read_by_read_are_refused_before_the_head_ends(
    service: tuple[str, int, int],
) -> None:
    """Fields are counted after every read: a head that never ends is refused once it holds
    too many, not kept (with all its fields) until the head timeout."""
    _, port, _ = service
    start = time.monotonic()
    with _connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        with contextlib.suppress(OSError):
            for i in range(FIELDS + 20):
                sock.sendall(b"X-F-%d: 1\r\n" % i)
                time.sleep(0.005)
        raw = _read_until_closed(sock)
    _assert_refused(raw, 431, "too_many_headers")
    assert time.monotonic() - start < HEAD_TIMEOUT  # refused, not timed out


def test_a_request_target_over_the_limit_is_414(service: tuple[str, int, int]) -> None:
    _, port, _ = service
    base = b"/healthz?q="
    with _connect(port) as sock:
        _assert_served(sock, _request(target=base + b"a" * (LINE - len(base))))
        sock.sendall(_request(target=base + b"a" * (LINE - len(base) + 1)))
        _assert_refused(_read_until_closed(sock), 414, "uri_too_long")


def test_the_head_size_is_counted_again_for_each_request_on_a_keep_alive_connection(
    service: tuple[str, int, int],
) -> None:
    _, port, _ = service
    fits = b"X-Pad: " + b"a" * (HEAD_BYTES - 200) + b"\r\n"
    with _connect(port) as sock:
        for _ in range(3):  # three heads just under the limit: 48 KiB on one connection
            _assert_served(sock, _request(fits))
        sock.sendall(_request(fits + b"X-More: " + b"a" * 400 + b"\r\n"))
        _assert_refused(_read_until_closed(sock), 431, "request_head_too_large")


def test_pipelined_requests_are_each_answered_and_each_counted(
    service: tuple[str, int, int],
) -> None:
    """Requests sent back to back in one write are answered in order; the head count restarts
    for each, so three heads that together exceed the limit are all served."""
    _, port, _ = service
    fits = b"X-Pad: " + b"a" * (HEAD_BYTES // 2) + b"\r\n"
    with _connect(port) as sock:
        sock.sendall(_request(fits) * 2 + _request(fits + b"Connection: close\r\n"))
        answers = _read_until_closed(sock)
    assert answers.count(b"HTTP/1.1 200 ") == 3, answers[:300]
    assert answers.count(b"HTTP/1.1 ") == 3


# -- time -------------------------------------------------------------------------------------


def test_a_slowloris_head_is_cut_by_the_head_timeout(service: tuple[str, int, int]) -> None:
    """A byte every 0.2 s keeps uvicorn's keep-alive timer from ever firing; the head timer
    counts from accept, whatever trickles in."""
    _, port, _ = service
    start = time.monotonic()
    with _connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n")
        raw = _trickle(sock, b"X-Slow: " + b"a" * 100)
    elapsed = time.monotonic() - start
    _assert_refused(raw, 408, "request_timeout")
    assert HEAD_TIMEOUT - 0.5 < elapsed < HEAD_TIMEOUT + 4, elapsed


def test_a_connection_that_sends_nothing_is_closed_by_the_head_timeout(
    service: tuple[str, int, int],
) -> None:
    _, port, _ = service
    start = time.monotonic()
    with _connect(port) as sock:
        raw = _read_until_closed(sock)
    elapsed = time.monotonic() - start
    assert raw == b""
    assert HEAD_TIMEOUT - 0.5 < elapsed < HEAD_TIMEOUT + 3, elapsed


def test_an_idle_keep_alive_connection_is_closed_by_the_keep_alive_timeout(
    service: tuple[str, int, int],
) -> None:
    _, port, _ = service
    with _connect(port) as sock:
        _assert_served(sock, _request())
        start = time.monotonic()
        assert _read_until_closed(sock) == b""
    elapsed = time.monotonic() - start
    assert KEEP_ALIVE - 0.5 < elapsed < HEAD_TIMEOUT, elapsed


def test_the_head_timer_restarts_after_each_response_on_a_keep_alive_connection(
    service: tuple[str, int, int],
) -> None:
    """A second head trickled on a kept connection: its first byte stops the keep-alive timer,
    and the head timer, started when the first response ended, cuts it."""
    _, port, _ = service
    with _connect(port) as sock:
        _assert_served(sock, _request())
        start = time.monotonic()
        raw = _trickle(sock, _request(b"X-Slow: " + b"a" * 100))
    elapsed = time.monotonic() - start
    _assert_refused(raw, 408, "request_timeout")
    assert HEAD_TIMEOUT - 0.5 < elapsed < HEAD_TIMEOUT + 4, elapsed


# -- connections ------------------------------------------------------------------------------


def test_connections_over_the_cap_are_answered_503_with_retry_after(
    service: tuple[str, int, int],
) -> None:
    """250 idle sockets locked every client out of a 200-descriptor gateway; here the cap (8 in
    this test) holds the descriptors and the next client gets an answer it can act on."""
    _, port, _ = service
    idle = [_connect(port) for _ in range(CAP)]
    try:
        time.sleep(0.3)  # accepted by the worker, so counted
        start = time.monotonic()
        with _connect(port) as sock:
            sock.sendall(_request())
            raw = _read_until_closed(sock)
        assert time.monotonic() - start < 3.0
        headers = _assert_refused(raw, 503, "server_busy")
        assert headers["retry-after"] == "1"
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.3)  # the worker sees them go
    with _connect(port) as sock:
        _assert_served(sock, _request())
