"""The backend pool and slow clients through the gateway's public surface (issues 21 and 22).

The gateway is served by uvicorn on a free port and driven over raw sockets, so each test states
the bytes a client sends and what comes back on the same connection; the backend is the raw
socket server of ``test_upstream.py``, which records every request head it read. Each test
reproduces one finding of the second outside attack and fails on the code before the fix:

- a client that stops sending its body is a 408 on every path that reads one (buffered,
  streamed, the auth routes), after ``BODY_READ_TIMEOUT``;
- unfinished uploads hold only their share of the pool (per user, per address, in all), and a
  request without a body is answered at once whatever they hold;
- a full pool is a 503 "gateway busy" with ``Retry-After`` and its own failure kind, not a 504;
- a backend's endless head or endless 1xx answers are a 502;
- a 304 or 204 with ``Content-Length`` keeps the client's keep-alive connection;
- a chunked request's trailer fields never reach the backend as header fields;
- a client that disconnects stops the gateway reading the backend's answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from servicekit.config import ConfigError
from servicekit.connections import ConnectionLimits, uvicorn_options
from starlette.applications import Starlette

from gateway.app import create_app
from gateway.metrics import REGISTRY  # the gateway's own registry, the one its listener serves
from gateway.settings import Settings
from tests.gateway.test_proxy_live import _free_port
from tests.gateway.test_upstream import Backend, Handler, Peer, answer, endless_head, serve_echo
from tests.support.asgi_server import serve

pytestmark = pytest.mark.fault


@dataclass
class Live:
    app: Starlette
    port: int
    backend: Backend

    def token(self, sub: str | None = None) -> str:
        token, _ = self.app.state.tokens.issue_access(
            sub=sub or str(uuid.uuid4()), sid=str(uuid.uuid4()), roles=("user",)
        )
        return str(token)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


@contextlib.asynccontextmanager
async def live(
    env: dict[str, str], handler: Handler = serve_echo, **overrides: str
) -> AsyncIterator[Live]:
    async with Backend(handler) as backend:
        settings = Settings.from_env({**env, "BACKEND_URL": backend.url, **overrides})
        app = create_app(settings)
        port = _free_port()
        # served with the protocol servicekit.serve gives uvicorn (the trailer test depends on
        # it), and a bounded shutdown: a request the code under test never ends fails the
        # test, not the whole run
        options = uvicorn_options(ConnectionLimits())
        async with serve(app, port, timeout_graceful_shutdown=1, **options):
            yield Live(app, port, backend)


def head(method: str, path: str, token: str, *extra: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "host: gateway.test", f"authorization: Bearer {token}"]
    return ("\r\n".join([*lines, *extra]) + "\r\n\r\n").encode()


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, dict[str, str]]:
        value: dict[str, dict[str, str]] = json.loads(self.body)
        return value


async def read_reply(reader: asyncio.StreamReader, timeout: float = 3.0) -> Reply:
    async with asyncio.timeout(timeout):
        raw = await reader.readuntil(b"\r\n\r\n")
        status_line, *lines = raw[:-4].decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        status = int(status_line.split(" ")[1])
        size = int(headers.get("content-length", "0"))
        bodyless = status in (204, 304) or 100 <= status < 200
        body = b"" if bodyless else await reader.readexactly(size)
    return Reply(status, headers, body)


async def get(live: Live, path: str, token: str) -> Reply:
    reader, writer = await live.connect()
    try:
        writer.write(head("GET", path, token))
        return await read_reply(reader)
    finally:
        writer.close()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- 408: a body that stops arriving -------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "framing", "first"),
    [
        ("/api/v1/notes", "content-length: 100", b"0123456789"),  # buffered whole
        ("/api/v1/notes", "content-length: 1048576", b"0123456789"),  # streamed to the backend
        ("/api/v1/notes", "transfer-encoding: chunked", b"a\r\n0123456789\r\n"),  # chunked
        ("/api/v1/auth/login", "content-length: 100", b'{"email": "'),  # the gateway's own
    ],
    ids=["buffered", "streamed", "chunked", "login"],
)
async def test_a_body_that_stops_arriving_is_408_and_the_connection_closes(
    env: dict[str, str], path: str, framing: str, first: bytes
) -> None:
    async with live(env, BODY_READ_TIMEOUT="0.3") as gw:
        reader, writer = await gw.connect()
        loop = asyncio.get_running_loop()
        started = loop.time()
        extra = [
            framing,
            "content-type: application/json",
            "origin: " + env["CORS_ALLOWED_ORIGINS"],
        ]
        writer.write(head("POST", path, gw.token(), *extra) + first)
        reply = await read_reply(reader)
        waited = loop.time() - started
        assert reply.status == 408, reply
        assert reply.json()["error"]["code"] == "request_timeout"
        assert reply.headers["connection"] == "close"
        assert 0.3 <= waited < 2.0
        assert await asyncio.wait_for(reader.read(), 2.0) == b""  # closed, not kept alive
        writer.close()
        # the streamed one held a backend connection; it is given back (closed: half a body)
        await asyncio.sleep(0.05)
        assert gw.app.state.proxy.default.pool._open <= 1


# -- uploads: a bounded share of the pool --------------------------------------------------------


async def hold_upload(gw: Live, token: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """An upload too big to buffer that sends one byte and stops."""
    reader, writer = await gw.connect()
    writer.write(head("PUT", "/api/v1/upload", token, "content-length: 10485760") + b"x")
    return reader, writer


@pytest.mark.parametrize(
    ("limits", "refused", "code"),
    [
        ({"PROXY_UPLOADS_PER_USER": "2"}, ["a", "a", "a"], (429, "rate_limited")),
        ({"PROXY_UPLOADS_PER_IP": "2"}, ["a", "b", "c"], (429, "rate_limited")),
        ({"PROXY_UPLOADS_MAX": "2"}, ["a", "b", "c"], (503, "gateway_busy")),
    ],
    ids=["per-user", "per-ip", "in-all"],
)
async def test_unfinished_uploads_hold_only_their_share_and_bodiless_requests_pass(
    env: dict[str, str], limits: dict[str, str], refused: list[str], code: tuple[int, str]
) -> None:
    async def handler(peer: Peer) -> None:
        await serve_echo(peer)  # reads each upload's body: it waits as long as the client

    settings = {"PROXY_POOL_SIZE": "8", "PROXY_UPLOADS_MAX": "7", **limits}
    async with live(env, handler, **settings) as gw, contextlib.AsyncExitStack() as held:
        tokens = {name: gw.token() for name in "abc"}
        sockets = []
        for name in refused[:2]:
            sockets.append(await hold_upload(gw, tokens[name]))
        await asyncio.wait_for(_until(lambda: uploads(gw) == 2), 3.0)
        reader, writer = await hold_upload(gw, tokens[refused[2]])
        held.callback(writer.close)
        reply = await read_reply(reader, timeout=1.0)  # refused at once, not after a timeout
        assert (reply.status, reply.json()["error"]["code"]) == code
        assert reply.headers["retry-after"] == "1"
        assert uploads(gw) == 2  # nothing of it reached the backend
        # the same user's request without a body is answered at once
        loop = asyncio.get_running_loop()
        started = loop.time()
        me = await get(gw, "/api/v1/me", tokens[refused[0]])
        assert me.status == 200 and me.body == b"GET /v1/me"
        assert loop.time() - started < 1.0
        for _, w in sockets:
            w.close()
        # the places come back when the uploads end
        await asyncio.wait_for(_until(lambda: gw.app.state.proxy.uploads.active == 0), 3.0)


def uploads(gw: Live) -> int:
    return sum(request.target == b"/v1/upload" for request in gw.backend.requests)


async def _until(condition: object) -> None:
    assert callable(condition)
    while not condition():
        await asyncio.sleep(0.01)


async def test_a_body_up_to_the_buffer_size_never_takes_a_connection_while_it_uploads(
    env: dict[str, str],
) -> None:
    size = 200_000  # over the 64 KiB that was buffered before, under PROXY_BUFFER_BYTES
    async with live(env) as gw:
        reader, writer = await gw.connect()
        writer.write(head("POST", "/api/v1/notes", gw.token(), f"content-length: {size}") + b"x")
        await asyncio.sleep(0.2)
        assert (
            gw.app.state.proxy.default.pool._open == 0
        )  # still uploading: no backend connection yet
        writer.write(b"y" * (size - 1))
        reply = await read_reply(reader)
        assert reply.status == 200 and reply.body == b"POST /v1/notes"
        (request,) = [r for r in gw.backend.requests if r.target == b"/v1/notes"]
        assert request.values(b"content-length") == [str(size).encode()]
        writer.close()


# -- 503: the pool is full ----------------------------------------------------------------------


async def test_a_full_pool_is_503_busy_with_retry_after_not_504(env: dict[str, str]) -> None:
    gate = asyncio.Event()

    async def handler(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            if request.target.startswith(b"/v1/busy"):
                await gate.wait()
            await peer.send(answer(request.target))

    before = sample("tokengate_gateway_backend_failures_total", service="backend", kind="pool")
    timeouts = sample("tokengate_gateway_backend_failures_total", service="backend", kind="timeout")
    settings = {"PROXY_POOL_SIZE": "2", "PROXY_UPLOADS_MAX": "1", "PROXY_POOL_TIMEOUT": "0.2"}
    async with live(env, handler, **settings) as gw:
        token = gw.token()
        busy = [asyncio.create_task(get(gw, f"/api/v1/busy{n}", token)) for n in range(2)]
        try:
            await asyncio.wait_for(_until(lambda: gw.app.state.proxy.default.pool._open == 2), 3.0)
            reply = await get(gw, "/api/v1/me", token)
            assert reply.status == 503, reply
            assert reply.json()["error"]["code"] == "gateway_busy"
            assert reply.headers["retry-after"] == "1"
        finally:
            gate.set()
            answers = await asyncio.gather(*busy)
    assert [a.status for a in answers] == [200, 200]
    assert (
        sample("tokengate_gateway_backend_failures_total", service="backend", kind="pool")
        == before + 1
    )
    assert (
        sample("tokengate_gateway_backend_failures_total", service="backend", kind="timeout")
        == timeouts
    )


# -- 502: a backend's head without end ----------------------------------------------------------


@pytest.mark.parametrize("interim", [False, True], ids=["endless-header", "endless-1xx"])
async def test_an_endless_backend_head_is_a_502(env: dict[str, str], interim: bool) -> None:
    async def handler(peer: Peer) -> None:
        await endless_head(peer, interim=interim)

    async with live(env, handler, PROXY_BACKEND_MAX_HEAD_BYTES="65536") as gw:
        reply = await get(gw, "/api/v1/flood", gw.token())
        assert reply.status == 502
        assert reply.json()["error"]["code"] == "bad_gateway"
        assert gw.app.state.proxy.default.pool._open == 0


# -- 304/204 with Content-Length ------------------------------------------------------------


@pytest.mark.parametrize(
    "wire",
    [
        b'HTTP/1.1 304 Not Modified\r\ncontent-length: 4321\r\netag: "v1"\r\n\r\n',
        b"HTTP/1.1 204 No Content\r\ncontent-length: 7\r\n\r\n",
    ],
    ids=["304", "204"],
)
async def test_a_bodiless_answer_with_a_length_keeps_the_client_connection(
    env: dict[str, str], wire: bytes
) -> None:
    async def handler(peer: Peer) -> None:
        while (request := await peer.read_request()) is not None:
            await peer.send(wire if request.target == b"/v1/cached" else answer(request.target))

    async with live(env, handler) as gw:
        token = gw.token()
        reader, writer = await gw.connect()
        writer.write(head("GET", "/api/v1/cached", token))
        first = await read_reply(reader)
        writer.write(head("GET", "/api/v1/after", token))
        after = await read_reply(reader)  # on the same client connection
        writer.close()
    assert first.status in (204, 304) and first.body == b""
    assert "content-length" not in first.headers
    if first.status == 304:
        assert first.headers["etag"] == '"v1"'
    assert (after.status, after.body) == (200, b"/v1/after")


# -- trailers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [5, 300_000], ids=["buffered", "streamed"])
async def test_request_trailers_never_reach_the_backend_as_headers(
    env: dict[str, str], size: int
) -> None:
    async with live(env) as gw:
        reader, writer = await gw.connect()
        body = b"b" * size
        writer.write(
            head("POST", "/api/v1/notes", gw.token(), "transfer-encoding: chunked")
            + b"%x\r\n%s\r\n0\r\nx-trailer-probe: smuggled\r\nx-request-id: forged\r\n\r\n"
            % (len(body), body)
        )
        reply = await read_reply(reader)
        writer.close()
    assert reply.status == 200
    (request,) = [r for r in gw.backend.requests if r.target == b"/v1/notes"]
    assert request.body == body
    assert b"x-trailer-probe" not in request.head.lower()
    assert b"smuggled" not in request.head and b"forged" not in request.head


# -- a client that leaves mid-download -----------------------------------------------------------


async def test_a_client_that_disconnects_stops_the_download(env: dict[str, str]) -> None:
    stopped = asyncio.Event()

    async def endless_download(peer: Peer) -> None:
        if await peer.read_request() is None:
            return
        try:
            await peer.send(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            chunk = b"10000\r\n" + b"d" * 65536 + b"\r\n"
            while True:
                await peer.send(chunk)
        except ConnectionError:
            stopped.set()

    async with live(env, endless_download) as gw:
        reader, writer = await gw.connect()
        writer.write(head("GET", "/api/v1/download", gw.token()))
        async with asyncio.timeout(3):
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(200_000)
        writer.transport.abort()
        # the gateway stops reading and closes its pooled connection: the backend's next
        # write fails instead of the download going on for ever
        await asyncio.wait_for(stopped.wait(), 3.0)
        await asyncio.wait_for(_until(lambda: gw.app.state.proxy.default.pool._open == 0), 2.0)


# -- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"PROXY_POOL_SIZE": "64", "PROXY_UPLOADS_MAX": "64"}, "PROXY_UPLOADS_MAX"),
        ({"BODY_READ_TIMEOUT": "0"}, "BODY_READ_TIMEOUT"),
        ({"PROXY_POOL_TIMEOUT": "-1"}, "PROXY_POOL_TIMEOUT"),
        ({"PROXY_POOL_KEEPALIVE": "0"}, "PROXY_POOL_KEEPALIVE"),
        ({"PROXY_BACKEND_MAX_HEAD_BYTES": "10"}, "PROXY_BACKEND_MAX_HEAD_BYTES"),
    ],
)
def test_pool_and_body_bounds_refuse_values_that_turn_them_off(
    env: dict[str, str], overrides: dict[str, str], named: str
) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env({**env, **overrides})


def test_the_pool_defaults(env: dict[str, str]) -> None:
    settings = Settings.from_env(env)
    assert settings.proxy_pool_size == 256
    assert settings.proxy_uploads_max < settings.proxy_pool_size
    assert settings.body_read_timeout <= 10
    # below uvicorn's 5 s keep-alive, so the gateway is the side that closes idle connections
    assert settings.proxy_pool_keepalive < 5
    assert settings.proxy_pool_timeout < settings.proxy_read_timeout
