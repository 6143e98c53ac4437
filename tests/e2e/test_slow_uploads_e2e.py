"""Issue 21, item 2, reproduced against real processes: slow uploads cannot take the backend pool.

The attack: 260 sockets, one token, each starting an upload and then sending nothing more (30 KB
in all). Before the fix every upload over 64 KiB took one of the pool's 256 connections before a
byte of its body was read and kept it for as long as the client liked, so every other proxied
request waited 30 s for a 504. Here the gateway runs with its default pool, buffer and upload
settings, and while the 260 uploads stall, the same token's ``GET /api/v1/me`` answers at once.

The backend's own body bound is crossed here too: a request whose body stops arriving is a 408
from the identity service itself, after its ``BODY_READ_TIMEOUT``.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests.support.stack import Stack, running_stack

pytestmark = [pytest.mark.e2e, pytest.mark.fault]

PASSWORD = "e2e slow uploads correct horse battery"
UPLOADS = 260  # more than the pool's 256 connections


@pytest.fixture(scope="module")
def stack(migrated_dsn: str, redis_url: str, redis_prefix: str) -> Iterator[Stack]:
    with running_stack(
        database_url=migrated_dsn,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        backend_env={"BODY_READ_TIMEOUT": "0.5"},
    ) as running:
        yield running


def _login(stack: Stack) -> str:
    email = f"slow-{uuid.uuid4().hex[:10]}@example.test"
    stack.create_user(email, PASSWORD)
    r = httpx.post(
        stack.gateway_url + "/api/v1/auth/login",
        json={"email": email, "password": PASSWORD},
        headers={"Origin": "http://localhost:5173"},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["access_token"])


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


async def _stalled_upload(url: str, token: str, n: int) -> asyncio.StreamWriter:
    """Half the uploads declare 10 MiB (too big to buffer), half are chunked; each sends a byte
    of its body and stops."""
    host, port = _address(url)
    _, writer = await asyncio.open_connection(host, port)
    framing = (
        b"content-length: 10485760\r\n\r\n{"
        if n % 2
        else b"transfer-encoding: chunked\r\n\r\n1\r\n{"
    )
    writer.write(
        b"POST /api/v1/notes HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer %s\r\n"
        b"content-type: application/json\r\n%s" % (token.encode(), framing)
    )
    await writer.drain()
    return writer


async def test_260_stalled_uploads_of_one_token_do_not_delay_its_get_me(stack: Stack) -> None:
    token = _login(stack)
    writers: list[asyncio.StreamWriter] = []
    try:
        for n in range(UPLOADS):
            writers.append(await _stalled_upload(stack.gateway_url, token, n))
        # the gateway has read every head (each upload holds what it may by now)
        await asyncio.sleep(1.0)
        async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=5.0) as client:
            started = time.monotonic()
            me = await client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})
            elapsed = time.monotonic() - started
        assert me.status_code == 200, me.text
        assert elapsed < 1.0, f"GET /api/v1/me waited {elapsed:.2f} s behind stalled uploads"
    finally:
        for writer in writers:
            writer.transport.abort()


async def test_the_backend_answers_a_stalled_body_with_408(stack: Stack) -> None:
    # straight to the identity service, as the gateway would stream an upload to it
    internal = stack.internal_token(sub=str(uuid.uuid4()), method="POST", path="/v1/notes")
    host, port = _address(stack.backend_url)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(
            b"POST /v1/notes HTTP/1.1\r\nhost: backend\r\nx-internal-auth: %s\r\n"
            b"content-type: application/json\r\ncontent-length: 100\r\n\r\n{" % internal.encode()
        )
        started = time.monotonic()
        async with asyncio.timeout(5):
            status_line = await reader.readline()
            rest = await reader.read(4096)
        assert status_line.startswith(b"HTTP/1.1 408"), status_line + rest
        assert b'"request_timeout"' in rest
        assert 0.5 <= time.monotonic() - started < 3.0
    finally:
        writer.close()
