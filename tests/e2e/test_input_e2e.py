"""Issue 10's attack classes at the HTTP surface of the real stack (gateway + backend processes,
PostgreSQL, Redis): every hostile input gets a JSON 4xx from whichever service sees it first, never
a 5xx, and never a 401 for a valid access token.

Each test names the class, not the one example found: every JSON field of every route, every
integer query parameter, every body-reading endpoint of both services.
"""

from __future__ import annotations

import json
import socket
import statistics
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from internal_auth.tokens import MAX_TOKEN_LENGTH

from gateway.proxy.paths import MAX_PATH_BYTES
from tests.support.stack import Stack, running_stack

pytestmark = pytest.mark.e2e

ORIGIN = "http://localhost:5173"
PASSWORD = "input e2e correct horse battery"
DEEP = 5000


@pytest.fixture(scope="module")
def stack(migrated_dsn: str, redis_url: str, redis_prefix: str) -> Iterator[Stack]:
    with running_stack(
        database_url=migrated_dsn,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        gateway_env={
            "CORS_ALLOWED_ORIGINS": ORIGIN,
            "LOGIN_RATE_LIMIT_IP": "10000/minute",
            "LOGIN_RATE_LIMIT_ACCOUNT": "10000/minute",
        },
        backend_env={"ARGON2_TIME_COST": "1", "ARGON2_MEMORY_KIB": "1024"},
    ) as running:
        yield running


@pytest.fixture(scope="module")
def email(stack: Stack) -> str:
    address = f"input-{uuid.uuid4().hex[:8]}@example.test"
    stack.create_user(address, PASSWORD)
    return address


@pytest.fixture(scope="module")
def client(stack: Stack, email: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.gateway_url, timeout=30) as http:
        r = http.post("/api/v1/auth/login", json={"email": email, "password": PASSWORD})
        assert r.status_code == 200, r.text
        http.headers["Authorization"] = "Bearer " + r.json()["access_token"]
        yield http


@pytest.fixture(scope="module")
def note_id(client: httpx.Client) -> str:
    r = client.post("/api/v1/notes", json={"title": "t", "body": "b"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def _is_json_4xx(r: httpx.Response) -> bool:
    if not 400 <= r.status_code < 500:
        return False
    body = r.json()
    return set(body) == {"error"} and set(body["error"]) == {"code", "message"}


# Every JSON body field of every route, both services. {note} is filled in by the test.
BODY_FIELDS = [
    ("POST", "/api/v1/auth/login", "email"),
    ("POST", "/api/v1/auth/login", "password"),
    ("POST", "/api/v1/notes", "title"),
    ("POST", "/api/v1/notes", "body"),
    ("PATCH", "/api/v1/notes/{note}", "title"),
    ("PATCH", "/api/v1/notes/{note}", "body"),
]
# JSON text that Python's json module reads without complaint but no service can use.
HOSTILE_STRINGS = {
    "lone_high_surrogate": r'"\ud800"',
    "lone_low_surrogate": r'"x\udfffy"',
    "nul_escape": r'"a\u0000b@example.test"',
}


def _body_with(method: str, path: str, field: str, raw_value: str, email: str) -> str:
    fields = {"email": f'"{email}"', "password": f'"{PASSWORD}"'}
    if path.startswith("/api/v1/notes"):
        fields = {"title": '"a title"', "body": '"a body"'}
    fields[field] = raw_value
    return "{" + ",".join(f'"{k}":{v}' for k, v in fields.items()) + "}"


@pytest.mark.parametrize("kind", sorted(HOSTILE_STRINGS))
@pytest.mark.parametrize(("method", "path", "field"), BODY_FIELDS)
def test_nul_and_lone_surrogates_in_any_json_string_are_4xx(
    client: httpx.Client, email: str, note_id: str, method: str, path: str, field: str, kind: str
) -> None:
    body = _body_with(method, path, field, HOSTILE_STRINGS[kind], email)
    r = client.request(
        method,
        path.format(note=note_id),
        content=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400, r.text
    assert _is_json_4xx(r)


@pytest.mark.parametrize("kind", ["nul_escape", "lone_high_surrogate"])
def test_hostile_strings_as_member_names_are_4xx(
    client: httpx.Client, note_id: str, kind: str
) -> None:
    body = '{"title": "t", ' + HOSTILE_STRINGS[kind] + ': "x"}'
    r = client.post(
        "/api/v1/notes", content=body.encode(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 400 and _is_json_4xx(r), r.text


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/api/v1/auth/login"), ("POST", "/api/v1/notes"), ("PATCH", "/api/v1/notes/{note}")],
)
@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_json_nested_thousands_deep_is_4xx(
    client: httpx.Client, note_id: str, method: str, path: str, opener: str
) -> None:
    closer = "]" if opener == "[" else "}"
    # As deep as the route's size limit allows (4 KiB for login, 64 KiB for notes): still far
    # deeper than Python's recursion limit.
    limit = 4096 if path.endswith("login") else 65536
    depth = min(DEEP, (limit - 1) // (len(opener) + 1))
    assert depth >= 600
    body = opener * depth + "1" + closer * depth
    r = client.request(
        method,
        path.format(note=note_id),
        content=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400 and _is_json_4xx(r), r.text


@pytest.mark.parametrize(
    ("path", "limit"),
    # login: no token needed, parsed before the rate limit; password: the gateway's other JSON
    # route; notes: the backend's parser, 64 KiB from any user.
    [("/api/v1/auth/login", 4096), ("/api/v1/auth/password", 4096), ("/api/v1/notes", 65536)],
)
def test_a_hostile_json_body_is_answered_as_fast_as_a_plain_one(
    client: httpx.Client, path: str, limit: int
) -> None:
    """Issue 21, finding 1: ``"`` and then ``\\"`` up to the route's size limit cost the old
    depth scan O(n²) (9 s for the 64 KiB note, 35 ms a login). Both are refused (400 not JSON, 422
    the wrong fields); the hostile one may cost a few milliseconds more, not seconds."""
    hostile = ('"' + '\\"' * ((limit - 1) // 2)).encode()
    plain = json.dumps({"email": 1, "pad": "a" * (limit - 30)}).encode()[:limit]
    assert len(hostile) <= limit and len(plain) <= limit
    headers = {"Content-Type": "application/json"}

    def answer(body: bytes) -> float:
        start = time.perf_counter()
        r = client.post(path, content=body, headers=headers)
        elapsed = time.perf_counter() - start
        assert r.status_code in (400, 422) and _is_json_4xx(r), r.text
        return elapsed

    hostile_times, plain_times = [], []
    for _ in range(7):  # interleaved, so load on the machine hits both alike
        hostile_times.append(answer(hostile))
        plain_times.append(answer(plain))
    extra = statistics.median(hostile_times) - statistics.median(plain_times)
    assert extra < 0.015, (hostile_times, plain_times)


@pytest.mark.parametrize("path", ["/api/v1/notes", "/api/v1/users"])
@pytest.mark.parametrize("name", ["limit", "offset"])
@pytest.mark.parametrize(
    "value", ["9" * 5000, "9" * 40, "\u00b2", "\u0663", "\uff11", "-1", "+1", " 1", "1e3", ""]
)
def test_integer_query_parameters_refuse_anything_but_small_ascii_numbers(
    client: httpx.Client, path: str, name: str, value: str
) -> None:
    r = client.get(path, params={name: value})
    # /users answers 403 to a non-admin before it reads parameters: still a 4xx, never a 500.
    assert _is_json_4xx(r), (r.status_code, r.text)
    if path == "/api/v1/notes":
        assert r.status_code == 422


@pytest.mark.parametrize("escape", ["%3F", "%3f", "%23"])
@pytest.mark.parametrize("method", ["GET", "POST", "PATCH", "DELETE"])
def test_encoded_query_or_fragment_in_a_proxied_path_is_400(
    client: httpx.Client, method: str, escape: str
) -> None:
    r = client.request(method, f"/api/v1/notes{escape}x=1")
    assert r.status_code == 400 and _is_json_4xx(r), r.text


def test_nul_in_login_email_is_a_4xx_not_a_503(stack: Stack, email: str) -> None:
    body = '{"email": "a\\u0000' + email + '", "password": "x"}'
    r = httpx.post(
        stack.gateway_url + "/api/v1/auth/login",
        content=body.encode(),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400 and _is_json_4xx(r), r.text


def test_a_head_at_the_gateways_limits_is_not_refused_one_hop_later(
    stack: Stack, client: httpx.Client
) -> None:
    """The gateway accepts heads up to 16 KiB and 100 fields (the defaults) and adds its own to
    what it forwards (the internal token, request id, trace context, forwarded-for): the backend's
    defaults leave room for that, so such a request is served, not a 431 from the backend."""
    port = int(stack.gateway_url.rsplit(":", 1)[1])
    auth = client.headers["Authorization"].encode()
    fields = b"".join(b"X-F-%d: 1\r\n" % i for i in range(96))  # + Host, Authorization, X-Pad
    head = b"GET /api/v1/me HTTP/1.1\r\nHost: localhost\r\nAuthorization: " + auth + b"\r\n"
    head += fields
    pad = 16384 - len(head) - len(b"X-Pad: \r\n\r\n") - 1
    head += b"X-Pad: " + b"a" * pad + b"\r\n\r\n"
    assert 16300 < len(head) < 16384
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head)
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:300]


def test_paths_over_the_cap_are_414(client: httpx.Client) -> None:
    path = "/api/v1/notes/" + "a" * (MAX_PATH_BYTES - len("/api/v1/notes/") + 1)
    r = client.get(path)
    assert r.status_code == 414 and _is_json_4xx(r), r.text


@pytest.mark.parametrize("unit", ["a", "%F0%9F%98%80", "%22", "%C3%A9"])
def test_longest_allowed_path_still_authenticates_at_the_backend(
    client: httpx.Client, unit: str
) -> None:
    """A path at the cap, made of the units that grow most inside the token, reaches the backend
    with a valid internal token: the answer is the backend's 404, not its 401."""
    prefix = "/api/v1/x/"
    path = prefix + unit * ((MAX_PATH_BYTES - len(prefix)) // len(unit))
    assert len(path) <= MAX_PATH_BYTES < MAX_TOKEN_LENGTH
    r = client.get(path)
    assert r.status_code == 404, r.text


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/auth/login"),
        ("POST", "/api/v1/auth/refresh"),
        ("POST", "/api/v1/auth/logout"),
        ("POST", "/api/v1/auth/logout-all"),
        ("POST", "/api/v1/notes"),
        ("PATCH", "/api/v1/notes/{note}"),
        ("DELETE", "/api/v1/notes/{note}"),
    ],
)
@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"]
)
def test_every_json_endpoint_refuses_other_media_types_with_415(
    client: httpx.Client, note_id: str, method: str, path: str, content_type: str
) -> None:
    r = client.request(
        method,
        path.format(note=note_id),
        content=b'{"title": "x"}',
        headers={"Content-Type": content_type, "Origin": ORIGIN},
    )
    assert r.status_code == 415 and _is_json_4xx(r), r.text


@pytest.mark.parametrize("origin", ["https://evil.example", "null", ORIGIN + ".evil.example"])
def test_login_from_a_foreign_origin_is_refused(stack: Stack, email: str, origin: str) -> None:
    r = httpx.post(
        stack.gateway_url + "/api/v1/auth/login",
        json={"email": email, "password": PASSWORD},
        headers={"Origin": origin},
    )
    assert r.status_code == 403 and _is_json_4xx(r), r.text
    assert "set-cookie" not in r.headers


@pytest.mark.parametrize("headers", [{}, {"Origin": ORIGIN}])
def test_login_without_origin_or_from_an_allowed_one_works(
    stack: Stack, email: str, headers: dict[str, Any]
) -> None:
    r = httpx.post(
        stack.gateway_url + "/api/v1/auth/login",
        json={"email": email, "password": PASSWORD},
        headers=headers,
    )
    assert r.status_code == 200, r.text


def test_a_captured_internal_token_is_accepted_once_by_the_backend_process(
    stack: Stack, client: httpx.Client
) -> None:
    user_id = client.get("/api/v1/me").json()["id"]
    leaked = stack.internal_token(sub=user_id, method="GET", path="/v1/me")
    headers = {"X-Internal-Auth": leaked}
    assert httpx.get(stack.backend_url + "/v1/me", headers=headers).status_code == 200
    statuses = {
        httpx.get(stack.backend_url + "/v1/me", headers=headers).status_code for _ in range(20)
    }
    assert statuses == {401}
    # and the proxy, minting per request, is unaffected
    assert all(client.get("/api/v1/me").status_code == 200 for _ in range(5))


@pytest.mark.parametrize("path", ["/api/v1", "/api/v1/auth/login/", "/healthz/", "/api/v1/auth"])
def test_no_slash_redirect_echoes_the_host_header(client: httpx.Client, path: str) -> None:
    """Found by the contract fuzzer: GET /api/v1 was a 307 whose Location came from Host."""
    r = client.get(path, headers={"Host": "evil.example"})
    assert r.status_code in (404, 405) and _is_json_4xx(r), (r.status_code, r.text)
    assert "location" not in r.headers
