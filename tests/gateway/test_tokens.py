"""Access and refresh tokens: pinned algorithm, explicit typing, secrets and their rotation."""

from __future__ import annotations

import base64
import json
import time

import jwt as pyjwt
import pytest

from gateway.auth.tokens import RefreshClaims, TokenService, kid_for
from gateway.errors import InvalidToken
from gateway.settings import Settings
from tests.gateway.conftest import ACCESS_SECRET, REFRESH_SECRET

OTHER = "another-secret-that-is-long-enough-0123456789"


def service(**overrides: str | None) -> TokenService:
    values: dict[str, str | None] = {
        "jwt_access_secret": ACCESS_SECRET,
        "jwt_refresh_secret": REFRESH_SECRET,
    }
    values.update(overrides)
    settings = Settings(
        database_url="postgresql://unused",
        redis_url="redis://unused",
        backend_url="http://unused",
        internal_jwt_private_key="unused",
        jwt_access_secret=values["jwt_access_secret"] or "",
        jwt_refresh_secret=values["jwt_refresh_secret"] or "",
        jwt_access_secret_previous=values.get("jwt_access_secret_previous"),
        jwt_refresh_secret_previous=values.get("jwt_refresh_secret_previous"),
    )
    return TokenService(settings)


def header_of(token: str) -> dict[str, object]:
    segment = token.split(".")[0]
    decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(segment + "=="))
    return decoded


def refresh_token(tokens: TokenService, *, iat: int | None = None, exp: int | None = None) -> str:
    now = int(time.time())
    return tokens.encode_refresh(
        RefreshClaims(sub="user-1", sid="sid-1", jti="jti-1", iat=iat or now, exp=exp or now + 60)
    )


def test_access_token_shape() -> None:
    tokens = service()
    token, claims = tokens.issue_access(sub="user-1", sid="sid-1", roles=["user", "admin"])
    header = header_of(token)
    assert header == {"alg": "HS256", "typ": "at+jwt", "kid": kid_for(ACCESS_SECRET)}
    payload = pyjwt.decode(token, ACCESS_SECRET, algorithms=["HS256"], audience="tokengate-api")
    assert set(payload) == {"iss", "aud", "sub", "sid", "roles", "typ", "jti", "iat", "exp"}
    assert payload["typ"] == "access"
    assert payload["exp"] - payload["iat"] == 600
    assert tokens.verify_access(token) == claims


def test_kid_never_reveals_the_secret() -> None:
    kid = kid_for(ACCESS_SECRET)
    assert ACCESS_SECRET not in kid and len(kid) == 16
    assert kid != kid_for(REFRESH_SECRET)


def test_refresh_tokens_are_deterministic() -> None:
    tokens = service()
    assert refresh_token(tokens, iat=100, exp=200) == refresh_token(tokens, iat=100, exp=200)
    assert header_of(refresh_token(tokens))["typ"] == "refresh+jwt"


def test_cross_typed_tokens_are_rejected() -> None:
    tokens = service()
    access, _ = tokens.issue_access(sub="u", sid="s", roles=[])
    with pytest.raises(InvalidToken):
        tokens.verify_refresh(access)
    with pytest.raises(InvalidToken):
        tokens.verify_access(refresh_token(tokens))


def hand_signed(
    claims: dict[str, object] | None = None,
    header: dict[str, str] | None = None,
    secret: str = ACCESS_SECRET,
) -> str:
    """A valid access token signed by hand, but for ``claims`` (``None`` drops one) and
    ``header`` (``alg`` picks the algorithm) and the ``secret`` it is signed with."""
    now = int(time.time())
    payload: dict[str, object] = {
        "iss": "tokengate-gateway", "aud": "tokengate-api", "sub": "u", "sid": "s",
        "roles": [], "typ": "access", "jti": "j", "iat": now, "exp": now + 60,
        **(claims or {}),
    }  # fmt: skip
    headers = {"typ": "at+jwt", "kid": kid_for(ACCESS_SECRET), **(header or {})}
    algorithm = headers.pop("alg", "HS256")
    present = {k: v for k, v in payload.items() if v is not None}
    return pyjwt.encode(present, secret, algorithm=algorithm, headers=headers)


def test_hand_signed_token_verifies_as_is() -> None:
    """The control for the refusals below: each differs from a token that passes in one way."""
    assert service().verify_access(hand_signed()).sub == "u"


def test_claim_typ_is_checked_even_with_the_right_secret_and_header() -> None:
    with pytest.raises(InvalidToken):
        service().verify_access(hand_signed({"typ": "refresh"}))


@pytest.mark.parametrize(
    ("claims", "header"),
    [
        ({"iss": "someone-else"}, {}),
        ({"aud": "another-api"}, {}),
        ({"exp": 1000}, {}),
        ({"roles": "admin"}, {}),
        ({"sid": None}, {}),
        ({}, {"typ": "JWT"}),
        ({}, {"kid": "unknown"}),
        ({}, {"alg": "HS512"}),
    ],
    ids=["iss", "aud", "expired", "roles-type", "no-sid", "typ-header", "kid", "alg"],
)
@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_access_token_checks(claims: dict[str, object], header: dict[str, str]) -> None:
    with pytest.raises(InvalidToken):
        service().verify_access(hand_signed(claims, header))


def test_alg_none_is_rejected() -> None:
    token = pyjwt.encode({"sub": "u"}, "", algorithm="none", headers={"typ": "at+jwt"})
    with pytest.raises(InvalidToken):
        service().verify_access(token)


def test_expired_refresh_token() -> None:
    tokens = service()
    with pytest.raises(InvalidToken):
        tokens.verify_refresh(refresh_token(tokens, iat=1000, exp=2000))


def test_wrong_secret_tokens_fail() -> None:
    forger = service(jwt_access_secret=OTHER, jwt_refresh_secret=OTHER + "x")
    access, _ = forger.issue_access(sub="u", sid="s", roles=[])
    with pytest.raises(InvalidToken):
        service().verify_access(access)
    with pytest.raises(InvalidToken):
        service().verify_refresh(refresh_token(forger))


def test_wrong_secret_with_a_known_kid_fails() -> None:
    with pytest.raises(InvalidToken):
        service().verify_access(hand_signed(secret=OTHER))


def test_previous_secrets_still_verify_but_never_sign() -> None:
    old = service(jwt_access_secret=OTHER, jwt_refresh_secret=OTHER + "-refresh")
    access, _ = old.issue_access(sub="u", sid="s", roles=[])
    refresh = refresh_token(old)
    rotated = service(
        jwt_access_secret_previous=OTHER, jwt_refresh_secret_previous=OTHER + "-refresh"
    )
    assert rotated.verify_access(access).sub == "u"
    assert rotated.verify_refresh(refresh).jti == "jti-1"
    fresh, _ = rotated.issue_access(sub="u", sid="s", roles=[])
    assert header_of(fresh)["kid"] == kid_for(ACCESS_SECRET)
    # once the previous secret is dropped, its tokens stop verifying
    with pytest.raises(InvalidToken):
        service().verify_access(access)


@pytest.mark.parametrize("token", ["", "a.b", "a.b.c", "x" * 5000, "..."])
def test_malformed_tokens(token: str) -> None:
    with pytest.raises(InvalidToken):
        service().verify_access(token)
