"""A broken or hostile backend, seen through the gateway's public surface: every failure of the
hop is a JSON 502/504 while the status line is still the gateway's to choose, a cut connection
after that, and nothing a backend sends after its answer ever reaches another request.

The backend is a raw socket server that writes exact bytes per path (``tests/gateway/
test_upstream.py`` attacks the pool itself; this file checks what the proxy makes of it)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from starlette.types import Message

from tests.gateway.conftest import FakeBackend, GatewayClient, Harness, login, raw_backend

BIG = 1_000_000
ANSWERS: dict[bytes, bytes] = {
    # a small answer cut short: read whole before the status goes out, so a clean 502
    b"/v1/truncated-small": b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabcd",
    # a big one cut short: streamed, so the status is out and the connection is cut
    b"/v1/truncated-big": b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s"
    % (BIG, b"x" * 100_000),
    b"/v1/bad-status": b"HTTP/1.1 600 Nope\r\ncontent-length: 0\r\n\r\n",
    b"/v1/not-http": b"SSH-2.0-OpenSSH_9.6\r\n",
    # an answer with a second one glued to it, aimed at whoever asks next on this connection
    b"/v1/smuggle": b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled",
}
CLOSES_AFTER = {b"/v1/truncated-small", b"/v1/truncated-big", b"/v1/not-http"}


class ScriptedBackend:
    def __init__(self) -> None:
        self.requests: list[tuple[bytes, bytes]] = []

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
                self.requests.append((method, target))
                if target in ANSWERS:
                    writer.write(ANSWERS[target])
                elif method == b"HEAD":
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-kind: head\r\n\r\n")
                else:
                    body = b"real:" + target
                    writer.write(
                        b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
                    )
                await writer.drain()
                if target in CLOSES_AFTER:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


@dataclass
class Hop:
    """A started gateway in front of the scripted backend, and a logged-in user's header."""

    client: GatewayClient
    auth: dict[str, str]
    upstream: ScriptedBackend


@pytest.fixture
async def hop(gateway: Harness, env: dict[str, str], backend: FakeBackend) -> AsyncIterator[Hop]:
    upstream = ScriptedBackend()
    async with raw_backend(upstream.serve) as url, gateway(env, BACKEND_URL=url) as client:
        token = (await login(client, backend.add_user())).json()["access_token"]
        yield Hop(client, {"Authorization": f"Bearer {token}"}, upstream)


@pytest.mark.parametrize("path", ["truncated-small", "bad-status", "not-http"])
async def test_a_broken_answer_is_a_json_502_and_the_next_request_is_served(
    hop: Hop, path: str
) -> None:
    client, auth = hop.client, hop.auth
    broken = await client.get(f"/api/v1/{path}", headers=auth)
    after = await client.get("/api/v1/after", headers=auth)
    assert broken.status_code == 502, broken.text
    assert broken.json()["error"]["code"] == "bad_gateway"
    assert after.status_code == 200 and after.content == b"real:/v1/after"


async def test_a_big_answer_cut_mid_body_never_looks_complete(hop: Hop) -> None:
    client, auth = hop.client, hop.auth
    # driven as raw ASGI: what matters is the messages the server is given
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": "/api/v1/truncated-big",
        "raw_path": b"/api/v1/truncated-big",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"testserver"),
            (b"authorization", auth["Authorization"].encode()),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 443),
        "state": {},
    }
    await client.app(scope, receive, send)
    after = await client.get("/api/v1/after", headers=auth)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 200
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    # the status went out; the end of the body never does, so the server cuts the connection
    # instead of ending a response that is 900 kB short
    assert bodies and all(m.get("more_body") for m in bodies)
    assert sum(len(m["body"]) for m in bodies) < BIG
    assert after.content == b"real:/v1/after"


async def test_bytes_a_backend_glues_to_its_answer_reach_nobody(hop: Hop) -> None:
    client, auth, upstream = hop.client, hop.auth, hop.upstream
    first = await client.get("/api/v1/smuggle", headers=auth)
    answers = [await client.get(f"/api/v1/next-{i}", headers=auth) for i in range(3)]
    assert first.content == b"ok"
    for i, answer in enumerate(answers):
        assert answer.status_code == 200
        assert answer.content == f"real:/v1/next-{i}".encode()
    assert all(b"smuggled" not in a.content for a in answers)
    assert [t for _, t in upstream.requests][-3:] == [f"/v1/next-{i}".encode() for i in range(3)]


async def test_head_is_proxied_without_a_body_and_keeps_its_length(hop: Hop) -> None:
    client, auth, upstream = hop.client, hop.auth, hop.upstream
    head = await client.head("/api/v1/thing", headers=auth)
    after = await client.get("/api/v1/after", headers=auth)
    assert head.status_code == 200
    assert head.headers["content-length"] == "5" and head.headers["x-kind"] == "head"
    assert head.content == b""
    assert after.content == b"real:/v1/after"
    assert upstream.requests[-2:] == [(b"HEAD", b"/v1/thing"), (b"GET", b"/v1/after")]
