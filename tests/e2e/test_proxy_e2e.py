"""End to end, over HTTP only: the real backend and gateway as separate processes (uvicorn), real
PostgreSQL and Redis. One stack per module keeps the run short.

The 10 MB streaming proof (the backend receives the first bytes before the client has sent the
rest) lives in ``tests/gateway/test_proxy_live.py``, over real sockets with a streaming stand-in
backend: the real backend refuses any JSON body over 64 KiB. Here a 10 MB body is shown to pass
the gateway's limit and reach the backend (whose own 413 comes back), and an over-limit body gets
the gateway's 413.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from servicekit.bodies import PayloadTooLarge

from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.e2e

MB = 1024 * 1024
LIMIT = 12 * MB
ORIGIN = "http://localhost:5173"
PASSWORD = "e2e correct horse battery staple"


@pytest.fixture(scope="module")
def stack(migrated_dsn: str, redis_url: str, redis_prefix: str) -> Iterator[Stack]:
    with running_stack(
        database_url=migrated_dsn,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        gateway_env={
            "PROXY_MAX_BODY_BYTES": str(LIMIT),
            "CORS_ALLOWED_ORIGINS": ORIGIN,
            "LOGIN_RATE_LIMIT_IP": "1000/minute",
            "LOGIN_RATE_LIMIT_ACCOUNT": "1000/minute",
        },
    ) as running:
        yield running


class User:
    def __init__(self, stack: Stack, email: str) -> None:
        self.email = email
        self.client = httpx.Client(base_url=stack.gateway_url, timeout=30)
        r = self.client.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert r.status_code == 200, r.text
        self.token = r.json()["access_token"]
        self.auth = {"Authorization": f"Bearer {self.token}"}
        self.id = self.get("/api/v1/me").json()["id"]

    def get(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.get(path, headers={**self.auth, **kw.pop("headers", {})}, **kw)

    def post(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.post(path, headers={**self.auth, **kw.pop("headers", {})}, **kw)


def _new_user(stack: Stack) -> User:
    email = f"e2e-{uuid.uuid4().hex[:10]}@example.test"
    stack.create_user(email, PASSWORD)
    return User(stack, email)


@pytest.fixture(scope="module")
def alice(stack: Stack) -> User:
    return _new_user(stack)


@pytest.fixture(scope="module")
def bob(stack: Stack) -> User:
    return _new_user(stack)


def _ids(listing: Any) -> set[str]:
    items = listing
    if isinstance(listing, dict):
        items = next(v for k, v in listing.items() if isinstance(v, list))
    return {item["id"] for item in items}


def _create_note(user: User, title: str) -> dict[str, Any]:
    r = user.post("/api/v1/notes", json={"title": title, "body": "e2e body"})
    assert r.status_code in (200, 201), r.text
    note: dict[str, Any] = r.json()
    return note


def test_login_and_proxied_profile(alice: User) -> None:
    r = alice.get("/api/v1/me")
    assert r.status_code == 200
    assert r.json()["email"] == alice.email
    assert "user" in r.json()["roles"]


def test_proxied_write_and_read_of_notes(alice: User) -> None:
    note = _create_note(alice, "groceries")
    one = alice.get(f"/api/v1/notes/{note['id']}")
    assert one.status_code == 200
    assert one.json()["title"] == "groceries"
    listing = alice.get("/api/v1/notes")
    assert listing.status_code == 200
    assert note["id"] in _ids(listing.json())


def test_second_user_cannot_see_first_users_notes(alice: User, bob: User) -> None:
    note = _create_note(alice, "private")
    assert bob.get(f"/api/v1/notes/{note['id']}").status_code == 404
    assert note["id"] not in _ids(bob.get("/api/v1/notes").json())


def test_spoofed_identity_headers_have_no_effect(stack: Stack, alice: User, bob: User) -> None:
    note = _create_note(alice, "mine")
    # A genuinely signed internal token for Alice, as if it had leaked: the gateway replaces it.
    leaked = stack.internal_token(sub=alice.id, method="GET", path=f"/v1/notes/{note['id']}")
    spoof = {
        "X-Internal-Auth": leaked,
        "X-User-Id": alice.id,
        "X-User-Roles": "admin",
        "X-Forwarded-For": "10.0.0.1",
        "Forwarded": "for=10.0.0.1",
    }
    assert bob.get(f"/api/v1/notes/{note['id']}", headers=spoof).status_code == 404
    me = bob.get("/api/v1/me", headers=spoof)
    assert me.status_code == 200 and me.json()["id"] == bob.id
    # Without a bearer token, an internal token sent by the client opens nothing.
    direct = httpx.get(
        stack.gateway_url + f"/api/v1/notes/{note['id']}", headers={"X-Internal-Auth": leaked}
    )
    assert direct.status_code == 401


TRAVERSALS = [
    "/api/v1/../internal/auth/validate",
    "/api/v1/notes/../../internal/auth/validate",
    "/api/v1/./me",
    "/api/v1/%2e%2e/internal/auth/validate",
    "/api/v1/%2E%2E/internal/auth/validate",
    "/api/v1/.%2e/internal/auth/validate",
    "/api/v1/..%2finternal%2fauth%2fvalidate",
    "/api/v1/..%2Finternal/auth/validate",
    "/api/v1/..%5cinternal%5cauth%5cvalidate",
    "/api/v1/..\\internal\\auth\\validate",
    "/api/v1/%252e%252e/internal/auth/validate",
    "/api/v1//internal/auth/validate",
    "/api/v1/notes//x",
    "/api//v1/me",
    "/api/v1/..;/internal/auth/validate",
    "/api/v1/me%00",
]


def _raw_status(stack: Stack, method: str, target: str, token: str) -> int:
    """Send the request target byte for byte (HTTP clients normalise dot segments away)."""
    port = int(stack.gateway_url.rsplit(":", 1)[1])
    body = b'{"email":"x@example.test","password":"x"}'
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"{method} {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        status_line = sock.makefile("rb").readline()
    return int(status_line.split()[1])


@pytest.mark.parametrize("target", TRAVERSALS)
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_path_traversal_is_refused(stack: Stack, alice: User, method: str, target: str) -> None:
    assert _raw_status(stack, method, target, alice.token) in (400, 404)


def test_ten_megabytes_pass_the_gateway(stack: Stack, alice: User) -> None:
    payload = b'{"title":"big","body":"' + b"x" * (10 * MB) + b'"}'
    r = alice.post("/api/v1/notes", content=payload, headers={"Content-Type": "application/json"})
    # The backend's own validation answers (a note is small): the gateway let it through.
    assert r.status_code in (400, 413, 422), r.text
    assert r.json()["error"]["message"] != PayloadTooLarge.over(LIMIT).message
    assert alice.get("/api/v1/me").status_code == 200


def test_declared_body_over_the_limit_is_413(alice: User) -> None:
    r = alice.post("/api/v1/notes", content=b"x" * (LIMIT + 1))
    assert r.status_code == 413
    assert r.json()["error"] == {
        "code": "payload_too_large",
        "message": PayloadTooLarge.over(LIMIT).message,
    }


def test_chunked_body_over_the_limit_is_413(alice: User) -> None:
    def body() -> Iterator[bytes]:
        for _ in range(LIMIT // MB + 1):
            yield b"x" * MB

    r = alice.post("/api/v1/notes", content=body(), headers={"Content-Type": "application/json"})
    # Whoever counts past its limit first answers (here the backend, at 64 KiB); the gateway's
    # own count of a chunked body is exercised in tests/gateway/test_proxy_live.py.
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"
    assert alice.get("/api/v1/me").status_code == 200


def test_request_id_is_returned_and_logged(stack: Stack, alice: User) -> None:
    rid = f"e2e-{uuid.uuid4().hex}"
    r = alice.get("/api/v1/me", headers={"X-Request-Id": rid})
    assert r.headers["x-request-id"] == rid
    assert r.headers["x-content-type-options"] == "nosniff"
    # The access line is written once the response has gone out: give it a moment.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [line for line in stack.log_text("gateway").splitlines() if rid in line]
        if lines:
            break
        time.sleep(0.05)
    access = json.loads(lines[0])
    assert access["event"] == "request" and access["status"] == 200
    assert access["user_id"] == alice.id and access["path"] == "/api/v1/me"


def test_backend_down_is_502_and_recovers(stack: Stack, alice: User) -> None:
    stack.stop_backend()
    try:
        r = alice.get("/api/v1/me")
        assert r.status_code == 502
        assert r.json()["error"]["code"] == "bad_gateway"
    finally:
        stack.start_backend()
    assert alice.get("/api/v1/me").status_code == 200


def test_logout_revokes_the_session_for_the_proxy(stack: Stack) -> None:
    carol = _new_user(stack)
    assert carol.get("/api/v1/me").status_code == 200
    out = carol.client.post("/api/v1/auth/logout", headers={**carol.auth, "Origin": ORIGIN})
    assert out.status_code == 204, out.text
    r = carol.get("/api/v1/me")
    assert r.status_code == 401


def _wait_for_line(stack: Stack, service: str, needle: str) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        for line in stack.log_text(service).splitlines():
            if needle in line:
                record: dict[str, Any] = json.loads(line)
                return record
        time.sleep(0.05)
    raise AssertionError(f"no {service} log line with {needle!r}")


def test_request_id_reaches_the_backend_log(stack: Stack) -> None:
    email = f"e2e-{uuid.uuid4().hex[:10]}@example.test"
    stack.create_user(email, PASSWORD)
    rid = f"e2e-login-{uuid.uuid4().hex}"
    r = httpx.post(
        stack.gateway_url + "/api/v1/auth/login",
        json={"email": email, "password": PASSWORD},
        headers={"X-Request-Id": rid},
    )
    assert r.status_code == 200
    assert r.headers["x-request-id"] == rid
    assert _wait_for_line(stack, "backend", rid)["request_id"] == rid
    assert _wait_for_line(stack, "gateway", rid)["request_id"] == rid
