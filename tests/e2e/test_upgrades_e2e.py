"""WebSockets and other protocol upgrades are refused by design (issue 24, item 13), against the
real gateway process (uvicorn): a WebSocket handshake is answered 403, never 101, on every path,
and any other ``Upgrade`` (h2c, ...) is answered as plain HTTP/1.1 without reaching a service.

Why: the gateway authenticates, mints an internal token and forwards one request at a time; a
connection that stays open would outlive the revocation of the token that opened it.
"""

from __future__ import annotations

import base64
import os
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support.stack import Stack, dpop_stack

pytestmark = pytest.mark.e2e

PASSWORD = "upgrade correct horse battery"


@pytest.fixture(scope="module")
def stack(migrated_dsn: str, redis_url: str, redis_prefix: str) -> Iterator[Stack]:
    with dpop_stack(
        database_url=migrated_dsn, redis_url=redis_url, redis_prefix=redis_prefix
    ) as running:
        yield running


def _raw(stack: Stack, head: str) -> bytes:
    """Send ``head`` as is and read the answer's status line and headers."""
    port = int(stack.gateway_url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode("latin-1"))
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer


@pytest.mark.parametrize("path", ["/api/v1/me", "/demo/", "/", "/api/v1/auth/login"])
def test_a_websocket_handshake_is_refused(stack: Stack, path: str) -> None:
    key = base64.b64encode(os.urandom(16)).decode()
    answer = _raw(
        stack,
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\n"
        f"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n",
    )
    status = answer.split(b"\r\n", 1)[0]
    assert status.startswith(b"HTTP/1.1 403"), answer[:200]
    assert b"sec-websocket-accept" not in answer.lower()


def test_another_upgrade_is_answered_as_plain_http(stack: Stack) -> None:
    email = f"upgrade-{time.monotonic_ns()}@example.test"
    stack.create_user(email, PASSWORD)
    login = httpx.post(
        stack.gateway_url + "/api/v1/auth/login", json={"email": email, "password": PASSWORD}
    )
    token = login.json()["access_token"]
    answer = _raw(
        stack,
        "GET /api/v1/me HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        f"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"
        f"Authorization: Bearer {token}\r\n\r\n",
    )
    status, _, headers = answer.partition(b"\r\n")
    assert status.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b"upgrade:" not in headers.lower()
