"""Bearer parsing and the revoked-session check: one implementation, both routes and proxy.

RFC 6750 §3: a 401 from a bearer-protected resource says how to authenticate, with
``error="invalid_token"`` only when a token was presented and refused.
"""

from __future__ import annotations

import pytest

from gateway.auth.bearer import CHALLENGE, INVALID_TOKEN_CHALLENGE, authenticate, bearer_token
from gateway.auth.tokens import AccessClaims
from gateway.errors import InvalidToken, SessionRevoked, Unauthorized
from tests.gateway.conftest import FakeBackend, Harness, login

CLAIMS = AccessClaims(sub="u1", sid="s1", roles=("user",), jti="j1", iat=1, exp=2**40)


def _verify(token: str) -> AccessClaims:
    if token != "good":
        raise InvalidToken()
    return CLAIMS


@pytest.mark.parametrize(
    "value",
    [None, b"", b"Bearer", b"Bearer ", b"Bearer    ", b"Basic dXNlcjpwYXNz", b"Token good"],
)
def test_no_usable_bearer_credentials_get_the_plain_challenge(value: bytes | None) -> None:
    headers = [] if value is None else [(b"authorization", value)]
    with pytest.raises(Unauthorized) as caught:
        bearer_token(headers)
    assert type(caught.value) is Unauthorized
    assert caught.value.headers == {"WWW-Authenticate": CHALLENGE}


@pytest.mark.parametrize("scheme", [b"Bearer", b"bearer", b"BEARER"])
def test_scheme_is_case_insensitive(scheme: bytes) -> None:
    assert bearer_token([(b"authorization", scheme + b" good ")]) == "good"


def test_only_the_first_authorization_field_counts() -> None:
    headers = [(b"authorization", b"Basic x"), (b"authorization", b"Bearer good")]
    with pytest.raises(Unauthorized):
        bearer_token(headers)


def test_refused_token_gets_invalid_token_challenge() -> None:
    with pytest.raises(InvalidToken) as caught:
        authenticate([(b"authorization", b"Bearer forged")], _verify, set())
    assert caught.value.headers["WWW-Authenticate"] == INVALID_TOKEN_CHALLENGE


def test_revoked_session_is_refused_even_with_a_valid_token() -> None:
    with pytest.raises(SessionRevoked) as caught:
        authenticate([(b"authorization", b"Bearer good")], _verify, {"s1"})
    assert caught.value.headers["WWW-Authenticate"] == INVALID_TOKEN_CHALLENGE


def test_valid_token_gives_its_claims() -> None:
    assert authenticate([(b"authorization", b"Bearer good")], _verify, {"other"}) is CLAIMS


@pytest.mark.parametrize("path", ["/api/v1/auth/sessions", "/api/v1/me"])
async def test_routes_and_proxy_answer_alike(
    gateway: Harness, env: dict[str, str], backend: FakeBackend, path: str
) -> None:
    async with gateway(env) as client:
        missing = await client.get(path)
        forged = await client.get(path, headers={"Authorization": "Bearer not.a.token"})
        access = (await login(client, backend.add_user())).json()["access_token"]
        auth = {"Authorization": f"Bearer {access}"}
        assert (await client.post("/api/v1/auth/logout-all", headers=auth)).status_code == 204
        revoked = await client.get(path, headers=auth)
    assert (missing.status_code, missing.headers["www-authenticate"]) == (401, CHALLENGE)
    assert (forged.status_code, forged.headers["www-authenticate"]) == (
        401,
        INVALID_TOKEN_CHALLENGE,
    )
    assert forged.json()["error"]["code"] == "invalid_token"
    assert (revoked.status_code, revoked.headers["www-authenticate"]) == (
        401,
        INVALID_TOKEN_CHALLENGE,
    )
    assert revoked.json()["error"]["code"] == "session_revoked"
