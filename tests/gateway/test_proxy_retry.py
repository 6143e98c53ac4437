"""The backend pool resends an idempotent request once when a reused keep-alive connection turns
out to be dead before any byte of the answer (RFC 9112 §9.3.1). With single-use internal tokens
that resend must carry a fresh token, or the backend would refuse a legitimate request as a
replay. The backend here is a raw socket server that verifies
with the real ``internal_auth`` verifier (single use on) and drops the second request of every
connection without answering, which forces exactly that resend."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from internal_auth import InternalAuthError, KeySet, PrivateKey, TokenScope, Verifier

from tests.gateway.conftest import FakeBackend, Harness, login, raw_backend


class DroppingBackend:
    def __init__(self, key: PrivateKey) -> None:
        self.verifier = Verifier(
            KeySet([key.public_key]), issuer="tokengate-gateway", audience="tokengate-backend"
        )
        self.tokens: list[str] = []
        self.dropped = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = lines[0].split(" ", 2)
                headers = dict(
                    (k.strip().lower(), v.strip())
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                )
                token = headers.get("x-internal-auth", "")
                self.tokens.append(token)
                try:
                    self.verifier.verify(token, scope=TokenScope.USER_REQUEST, htm=method, htu=path)
                    status, body = b"200 OK", b'{"ok":true}'
                except InternalAuthError:
                    status, body = b"401 Unauthorized", b'{"error":"replay"}'
                served += 1
                if served == 2:
                    # The token was seen (and used up); the connection dies before an answer.
                    self.dropped += 1
                    writer.close()
                    await writer.wait_closed()
                    return
                writer.write(
                    b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n"
                    b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@pytest.fixture
async def dropping(internal_key: PrivateKey) -> AsyncIterator[tuple[DroppingBackend, str]]:
    backend = DroppingBackend(internal_key)
    async with raw_backend(backend.serve) as url:
        yield backend, url


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT"])
async def test_a_resent_request_carries_a_fresh_internal_token(
    gateway: Harness,
    env: dict[str, str],
    backend: FakeBackend,
    dropping: tuple[DroppingBackend, str],
    method: str,
) -> None:
    upstream, url = dropping
    email = backend.add_user()
    async with gateway(env, BACKEND_URL=url) as client:
        token = (await login(client, email)).json()["access_token"]
        auth = {"Authorization": f"Bearer {token}"}
        first = await client.request(method, "/api/v1/things", headers=auth)
        second = await client.request(method, "/api/v1/things", headers=auth)
    assert first.status_code == 200, first.text
    assert second.status_code == 200, second.text
    assert upstream.dropped == 1
    # first request, the dropped attempt, and the pool's resend: three different tokens
    assert len(upstream.tokens) == 3
    assert len(set(upstream.tokens)) == 3
