"""Header hygiene both ways, request ids, security headers (client address: tests/servicekit)."""

from __future__ import annotations

import pytest
from servicekit.logs import request_id_from

from gateway.proxy.headers import request_headers, response_headers
from gateway.security_headers import security_headers


def _forward(headers: list[tuple[bytes, bytes]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in request_headers(
        headers,
        client_ip="198.51.100.9",
        proto="https",
        host=b"api.example.test",
        request_id="rid-1",
        internal_token="minted",
    ):
        out.setdefault(name.decode("latin-1"), []).append(value.decode("latin-1"))
    return out


SPOOFED = [
    (b"x-internal-auth", b"eyJhbGciOiJub25lIn0.e30."),
    (b"x-user-id", b"00000000-0000-0000-0000-000000000000"),
    (b"x-user-roles", b"admin"),
    (b"x-forwarded-for", b"10.0.0.1"),
    (b"x-forwarded-host", b"evil.example"),
    (b"x-forwarded-proto", b"http"),
    (b"forwarded", b"for=10.0.0.1"),
    (b"x-real-ip", b"10.0.0.1"),
    (b"x-request-id", b"client-chosen"),
    (b"authorization", b"Bearer public-access-token"),
    (b"dpop", b"eyJ0eXAiOiJkcG9wK2p3dCJ9.e30.sig"),
    (b"cookie", b"tg_refresh=secret"),
    (b"host", b"api.example.test"),
]


def test_spoofed_and_credential_headers_are_replaced_or_dropped() -> None:
    out = _forward([*SPOOFED, (b"accept", b"application/json")])
    assert out == {
        "accept": ["application/json"],
        "x-forwarded-for": ["198.51.100.9"],
        "x-forwarded-proto": ["https"],
        "x-forwarded-host": ["api.example.test"],
        "x-request-id": ["rid-1"],
        "x-internal-auth": ["minted"],
    }


def test_hop_by_hop_and_connection_named_headers_are_dropped() -> None:
    out = _forward(
        [
            (b"connection", b"keep-alive, X-Secret-Hop"),
            (b"x-secret-hop", b"1"),
            (b"keep-alive", b"timeout=5"),
            (b"te", b"trailers"),
            (b"transfer-encoding", b"chunked"),
            (b"upgrade", b"websocket"),
            (b"proxy-authorization", b"Basic eA=="),
            (b"proxy-connection", b"keep-alive"),
            (b"trailer", b"x-checksum"),
            (b"content-length", b"12"),
            (b"expect", b"100-continue"),
            (b"content-type", b"application/json"),
        ]
    )
    assert set(out) == {
        "content-type",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "x-request-id",
        "x-internal-auth",
    }


def test_response_loses_internal_and_hop_by_hop_headers() -> None:
    out = response_headers(
        [
            (b"Content-Type", b"application/json"),
            (b"X-Internal-Auth", b"leaked"),
            (b"X-User-Id", b"u"),
            (b"Connection", b"X-Hop"),
            (b"X-Hop", b"1"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Set-Cookie", b"backend=1"),
            (b"Server", b"uvicorn"),
            (b"Date", b"Sun, 22 Nov 2026 19:00:00 GMT"),
            (b"ETag", b'"v1"'),
            # The backend echoes the request id; the gateway's edge sets the one it chose.
            (b"X-Request-Id", b"from-backend"),
            # A Connection header may come after the header it names.
            (b"X-Late-Hop", b"1"),
            (b"connection", b"x-late-hop"),
        ]
    )
    assert out == [(b"content-type", b"application/json"), (b"etag", b'"v1"')]


@pytest.mark.parametrize("value", [b"abc-123", b"A.b_c-9", b"x" * 64])
def test_well_formed_request_id_is_kept(value: bytes) -> None:
    assert request_id_from([(b"x-request-id", value)]) == value.decode()


@pytest.mark.parametrize(
    "value", [b"", b"x" * 65, b"a b", b"a\r\nX-Internal-Auth: x", b'"quoted"', b"caf\xc3\xa9"]
)
def test_malformed_request_id_is_replaced(value: bytes) -> None:
    rid = request_id_from([(b"x-request-id", value)])
    assert rid != value.decode("latin-1")
    assert len(rid) == 32 and rid.isalnum()


def test_request_id_is_generated_when_absent_and_unique() -> None:
    assert request_id_from([]) != request_id_from([])


def test_security_headers_on_auth_response_force_no_store() -> None:
    out = dict(
        security_headers(
            [(b"cache-control", b"max-age=60"), (b"x-content-type-options", b"sniff")],
            path="/api/v1/auth/login",
            https=False,
        )
    )
    assert out[b"cache-control"] == b"no-store"
    assert out[b"x-content-type-options"] == b"nosniff"
    assert out[b"referrer-policy"] == b"no-referrer"
    assert b"strict-transport-security" not in out


def test_security_headers_keep_backend_cache_control_and_add_hsts_over_https() -> None:
    out = dict(security_headers([(b"cache-control", b"private")], path="/api/v1/me", https=True))
    assert out[b"cache-control"] == b"private"
    assert out[b"strict-transport-security"].startswith(b"max-age=")
