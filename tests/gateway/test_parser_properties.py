"""Property tests for every other parser a client controls: the access and refresh token
verifiers, the Authorization header, the refresh cookie, the forwarding headers, the request id
and the backend's query and body field validators. Each gets arbitrary input and may only answer
with its own error type, and what it accepts keeps its promises."""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from internal_auth import generate_private_key
from servicekit.forwarded import client_ip, request_scheme
from servicekit.logs import request_id_from
from starlette.requests import Request

from backend.errors import ValidationFailed
from backend.validation import int_param, string_field
from gateway.auth.bearer import bearer_token
from gateway.auth.cookies import read_refresh_cookie
from gateway.auth.tokens import RefreshClaims, TokenService
from gateway.errors import InvalidToken, Unauthorized
from gateway.proxy.headers import request_headers, response_headers
from gateway.settings import Settings

SETTINGS = Settings.from_env(
    {
        "DATABASE_URL": "postgresql://unused",
        "REDIS_URL": "redis://unused",
        "BACKEND_URL": "http://unused",
        "JWT_ACCESS_SECRET": "access-secret-for-property-tests-0123456789",
        "JWT_REFRESH_SECRET": "refresh-secret-for-property-tests-0123456789",
        "INTERNAL_JWT_PRIVATE_KEY": generate_private_key().private_pem(),
    }
)
TOKENS = TokenService(SETTINGS)
ACCESS, _ = TOKENS.issue_access(sub="u1", sid="s1", roles=["user"])
_CLAIMS = TOKENS.verify_access(ACCESS)
REFRESH = TOKENS.encode_refresh(
    RefreshClaims(sub="u1", sid="s1", jti="j1", iat=_CLAIMS.iat, exp=_CLAIMS.exp)
)

_latin1 = st.binary(max_size=80)
_header_names = st.sampled_from(
    [
        b"authorization",
        b"cookie",
        b"x-internal-auth",
        b"x-user-id",
        b"x-forwarded-for",
        b"forwarded",
        b"connection",
        b"keep-alive",
        b"transfer-encoding",
        b"te",
        b"x-request-id",
        b"content-type",
        b"accept",
        b"x-user-roles",
        b"proxy-authorization",
        b"host",
    ]
) | st.binary(min_size=1, max_size=12).map(bytes.lower)
_headers = st.lists(st.tuples(_header_names, _latin1), max_size=12)


def _bend(token: str, data: st.DataObject) -> str:
    position = data.draw(st.integers(0, len(token) - 1))
    char = data.draw(st.characters(codec="utf-8"))
    return data.draw(
        st.sampled_from(
            [
                token[:position] + char + token[position + 1 :],
                token[:position] + token[position + 1 :],
                token[:position],
                ".".join(reversed(token.split("."))),
            ]
        )
    )


# -- access and refresh tokens --------------------------------------------------------------------


@pytest.mark.parametrize("verify", [TOKENS.verify_access, TOKENS.verify_refresh])
@settings(max_examples=60)
@given(raw=st.text(max_size=400))
def test_arbitrary_text_is_only_ever_invalid_token(verify: Any, raw: str) -> None:
    with pytest.raises(InvalidToken):
        verify(raw)


@settings(max_examples=60)
@given(data=st.data())
def test_bent_access_and_refresh_tokens_are_only_ever_invalid_token(data: st.DataObject) -> None:
    for token, verify in ((ACCESS, TOKENS.verify_access), (REFRESH, TOKENS.verify_refresh)):
        bent = _bend(token, data)
        if bent != token:
            with pytest.raises(InvalidToken):
                verify(bent)
    # and each verifier refuses the other type, however it is presented
    with pytest.raises(InvalidToken):
        TOKENS.verify_access(REFRESH)
    with pytest.raises(InvalidToken):
        TOKENS.verify_refresh(ACCESS)


# -- headers --------------------------------------------------------------------------------------


@settings(max_examples=60)
@given(_headers)
def test_authorization_parsing_is_a_token_or_a_401(headers: list[tuple[bytes, bytes]]) -> None:
    try:
        token = bearer_token(headers)
    except Unauthorized as exc:
        assert exc.status == 401 and "WWW-Authenticate" in exc.headers
        return
    assert token and token == token.strip()


@settings(max_examples=60)
@given(_headers, st.booleans())
def test_refresh_cookie_parsing_is_a_value_none_or_a_401(
    headers: list[tuple[bytes, bytes]], secure: bool
) -> None:
    request = Request({"type": "http", "headers": headers, "method": "POST", "path": "/"})
    try:
        value = read_refresh_cookie(request, secure=secure)
    except InvalidToken:
        return
    assert value is None or (isinstance(value, str) and value)


@settings(max_examples=60)
@given(_headers, st.text(st.characters(max_codepoint=255), max_size=20), _latin1)
def test_the_backend_never_receives_what_a_client_must_not_set(
    headers: list[tuple[bytes, bytes]], ip: str, host: bytes
) -> None:
    out = request_headers(
        headers, client_ip=ip, proto="https", host=host, request_id="rid", internal_token="T"
    )
    names = [name for name, _ in out]
    assert names.count(b"x-internal-auth") == 1 and (b"x-internal-auth", b"T") in out
    assert names.count(b"x-forwarded-for") == 1 and names.count(b"x-request-id") == 1
    for name in names:
        assert name not in (b"authorization", b"cookie", b"forwarded", b"connection", b"te")
        assert not name.startswith(b"x-user-")
    back = response_headers(headers)
    assert all(n not in (b"x-internal-auth", b"set-cookie", b"connection") for n, _ in back)
    assert not any(n.startswith(b"x-user-") for n, _ in back)


_NETWORKS = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))


@settings(max_examples=60)
@given(
    st.one_of(st.none(), st.sampled_from(["10.1.2.3", "203.0.113.9", "::1", "bogus"])),
    st.one_of(st.none(), _latin1),
    st.one_of(st.none(), _latin1),
)
def test_client_address_and_scheme_are_only_what_a_trusted_proxy_said(
    peer: str | None, xff: bytes | None, proto: bytes | None
) -> None:
    address = client_ip(peer, xff, _NETWORKS)
    if address not in (peer, "unknown"):
        ipaddress.ip_address(address)  # anything not the peer is a real IP address
        assert peer is not None and ipaddress.ip_address(peer) in _NETWORKS[0]
    assert request_scheme("http", peer, proto, _NETWORKS) in ("http", "https")


@settings(max_examples=60)
@given(_headers)
def test_a_request_id_is_always_short_and_harmless(headers: list[tuple[bytes, bytes]]) -> None:
    assert re.fullmatch(r"[A-Za-z0-9._-]{1,64}", request_id_from(headers))


# -- the backend's field validators ---------------------------------------------------------------


@settings(max_examples=60)
@given(st.text(max_size=30))
def test_integer_query_parameters_are_in_range_or_a_422(raw: str) -> None:
    query = ("limit=" + quote(raw, safe="")).encode()
    request = Request({"type": "http", "headers": [], "query_string": query, "method": "GET"})
    try:
        value = int_param(request, "limit", default=50, low=1, high=200)
    except ValidationFailed as exc:
        assert exc.status == 422
        return
    assert 1 <= value <= 200 and int(raw) == value and raw.isascii()


@settings(max_examples=60)
@given(
    st.dictionaries(
        st.sampled_from(["title", "body", "x"]),
        st.one_of(
            st.none(), st.booleans(), st.integers(), st.text(max_size=250), st.lists(st.text())
        ),
        max_size=3,
    )
)
def test_string_fields_are_strings_of_the_allowed_length_or_a_422(data: dict[str, Any]) -> None:
    try:
        value = string_field(data, "title", min_len=1, max_len=200)
    except ValidationFailed as exc:
        assert exc.status == 422
        return
    assert value is None or (isinstance(value, str) and 1 <= len(value) <= 200)
