"""The backend pool over TLS (``gateway/proxy/upstream.py`` with ``gateway/proxy/tls.py``'s
context), against in-process asyncio TLS servers: one handshake per pooled connection, SNI and
the host name checked, a refused handshake never resent, and a stalled handshake bounded by the
connect timeout (``PROXY_CONNECT_TIMEOUT``)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from servicekit.tls import HANDSHAKE_FAILURES

from gateway.proxy.tls import client_context
from gateway.proxy.upstream import BackendUnreachable, ConnectTimeout, UpstreamPool
from tests.support.hop_tls import HopTLS

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


@pytest.fixture(scope="module")
def hop(tmp_path_factory: pytest.TempPathFactory) -> HopTLS:
    return HopTLS.issue(tmp_path_factory.mktemp("hop"), dns=("localhost",), ips=("127.0.0.1",))


class Server:
    def __init__(self) -> None:
        self.connections = 0
        self.server_names: list[str | None] = []
        self.port = 0


@asynccontextmanager
async def tls_server(hop: HopTLS, folder: Path | None = None) -> AsyncIterator[Server]:
    """An HTTP/1.1 keep-alive server over mutual TLS that answers every request ``ok``."""
    state = Server()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    source = HopTLS(folder) if folder is not None else hop
    context.load_cert_chain(source.cert("backend"), source.key("backend"))
    context.load_verify_locations(hop.ca)
    context.verify_mode = ssl.CERT_REQUIRED

    def sni(obj: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
        state.server_names.append(name)  # one per ClientHello: each handshake attempt

    context.sni_callback = sni

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(ANSWER)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()


def _pool(url: str, context: ssl.SSLContext, connect_timeout: float = 2.0) -> UpstreamPool:
    return UpstreamPool(
        url,
        connect_timeout=connect_timeout,
        read_timeout=2.0,
        acquire_timeout=2.0,
        limit=4,
        ssl_context=context,
    )


async def test_one_handshake_per_connection_and_the_host_sent_as_sni(hop: HopTLS) -> None:
    async with tls_server(hop) as server:
        pool = _pool(f"https://localhost:{server.port}", hop.client())
        try:
            for _ in range(20):
                response = await pool.request("GET", b"/v1/me", [])
                assert (response.status, await response.read()) == (200, b"ok")
                response.release()
        finally:
            await pool.close()
    assert server.connections == 1
    assert server.server_names == ["localhost"]


async def test_a_certificate_from_another_ca_is_refused_once(hop: HopTLS, tmp_path: Path) -> None:
    impostor = HopTLS.issue(tmp_path / "other", dns=("localhost",))
    refused = HANDSHAKE_FAILURES.labels("gateway", "untrusted_certificate")
    before = refused._value.get()
    async with tls_server(hop, impostor.folder) as server:
        pool = _pool(f"https://localhost:{server.port}", hop.client())
        try:
            with pytest.raises(BackendUnreachable, match="TLS handshake"):
                await pool.request("GET", b"/v1/me", [])
        finally:
            await pool.close()
    # one handshake attempt, refused; the pool did not try again; the gateway counted it
    assert server.connections == 0 and server.server_names == ["localhost"]
    assert refused._value.get() == before + 1


async def test_a_host_name_the_certificate_lacks_is_refused(hop: HopTLS, tmp_path: Path) -> None:
    other_name = HopTLS.issue(tmp_path / "named", dns=("backend.internal",), ips=())
    async with tls_server(hop, other_name.folder) as server:
        # trusts the right CA (the server's), but reaches it as 127.0.0.1
        pool = _pool(f"https://127.0.0.1:{server.port}", client_context(other_name.ca))
        try:
            with pytest.raises(BackendUnreachable, match="TLS handshake"):
                await pool.request("GET", b"/v1/me", [])
        finally:
            await pool.close()


async def test_a_stalled_handshake_is_bounded_by_the_connect_timeout(hop: HopTLS) -> None:
    """A listener that accepts and never answers the ClientHello: the wait ends at
    ``connect_timeout`` (PROXY_CONNECT_TIMEOUT), handshake included."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        pool = _pool(f"https://127.0.0.1:{port}", hop.client(), connect_timeout=0.3)
        started = time.monotonic()
        try:
            with pytest.raises(ConnectTimeout):
                async with asyncio.timeout(5):
                    await pool.request("GET", b"/v1/me", [])
        finally:
            await pool.close()
        assert 0.25 < time.monotonic() - started < 2.0
