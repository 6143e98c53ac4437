"""Minting and verifying: the round trip, the RFC 8037 vector, PyJWT interop, every rejection."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import warnings

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from internal_auth import (
    InternalAuthError,
    KeySet,
    Minter,
    PrivateKey,
    Reason,
    TokenScope,
    Verifier,
)
from internal_auth._jws import REGISTRY, _EdDSAOnlyRegistry, encode_header, sign_compact
from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jws import JWSRegistry

from tests.support.internal_auth_tokens import (
    AUDIENCE,
    ISSUER,
    NOW,
    clock,
    forge,
    good_claims,
    good_header,
    unsigned,
)

ME = {"scope": TokenScope.USER_REQUEST, "htm": "GET", "htu": "/v1/me"}


def reason_of(verifier: Verifier, token: str | bytes, **request: object) -> Reason:
    with pytest.raises(InternalAuthError) as caught:
        verifier.verify(token, **{**ME, **request})  # type: ignore[arg-type]
    return caught.value.reason


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- round trip -------------------------------------------------------------------------------


def test_round_trip_gives_the_principal(minter: Minter, verifier: Verifier) -> None:
    token = minter.mint(
        sub="user-1",
        scope=TokenScope.USER_REQUEST,
        htm="get",
        htu="/v1/me",
        roles=["user"],
        sid="s1",
    )
    principal = verifier.verify(token, scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/me")
    assert (principal.sub, principal.scope, principal.roles, principal.sid) == (
        "user-1",
        TokenScope.USER_REQUEST,
        ("user",),
        "s1",
    )
    assert (principal.iss, principal.iat, principal.exp) == (ISSUER, NOW, NOW + 30)


def test_minted_token_has_the_contract_header_and_claims(minter: Minter, key: PrivateKey) -> None:
    token = minter.mint(
        sub="gw", scope=TokenScope.AUTH_VALIDATE, htm="post", htu="/internal/auth/v"
    )
    header = pyjwt.get_unverified_header(token)
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert header == {"alg": "EdDSA", "typ": "internal+jwt", "kid": key.kid}
    assert set(claims) == {
        "iss", "aud", "sub", "scope", "roles", "jti", "iat", "nbf", "exp", "htm", "htu",
    }  # fmt: skip
    assert claims["htm"] == "POST" and claims["exp"] - claims["iat"] == 30
    # jti carries at least 128 random bits.
    assert len(base64.urlsafe_b64decode(claims["jti"] + "==")) >= 16


def test_every_token_gets_a_fresh_jti(minter: Minter) -> None:
    tokens = {
        minter.mint(sub="u", scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/x") for _ in "ab"
    }
    jtis = {pyjwt.decode(t, options={"verify_signature": False})["jti"] for t in tokens}
    assert len(jtis) == 2


def test_no_joserfc_security_warning_leaks(minter: Minter, verifier: Verifier) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        token = minter.mint(sub="u", scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/me")
        verifier.verify(token, **ME)  # type: ignore[arg-type]


def test_the_rfc9864_warning_is_silenced_where_the_registry_resolves_eddsa() -> None:
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        JWSRegistry(algorithms=["EdDSA"]).get_alg("EdDSA")  # joserfc alone warns ...
        joserfc_warnings = len(seen)
        _EdDSAOnlyRegistry().get_alg("EdDSA")  # ... our registry does not
    assert joserfc_warnings == 1 and len(seen) == 1
    assert issubclass(seen[0].category, SecurityWarning)


@pytest.mark.parametrize("ttl", [0, 61, -1, True])
def test_minter_refuses_a_ttl_outside_1_to_60(key: PrivateKey, ttl: int) -> None:
    with pytest.raises(ValueError):
        Minter(key, issuer=ISSUER, audience=AUDIENCE, ttl=ttl)


@pytest.mark.parametrize("htu", ["v1/me", "/v1/me?x=1", "https://h/v1/me"])
def test_minter_refuses_an_htu_that_is_not_a_path(minter: Minter, htu: str) -> None:
    with pytest.raises(ValueError):
        minter.mint(sub="u", scope=TokenScope.USER_REQUEST, htm="GET", htu=htu)


def test_minter_cannot_be_built_from_a_public_key(key: PrivateKey) -> None:
    with pytest.raises(TypeError):
        Minter(key.public_key, issuer=ISSUER, audience=AUDIENCE)  # type: ignore[arg-type]


# --- RFC 8037 Appendix A ----------------------------------------------------------------------

RFC8037_D = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A"
RFC8037_X = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"
RFC8037_JWS = (
    "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc"
    ".hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg"
)


@pytest.fixture
def rfc8037_key() -> PrivateKey:
    raw = base64.urlsafe_b64decode(RFC8037_D + "=")
    return PrivateKey(Ed25519PrivateKey.from_private_bytes(raw))


def test_rfc8037_a1_key_and_a3_thumbprint(rfc8037_key: PrivateKey) -> None:
    assert rfc8037_key.public_key.to_jwk()["x"] == RFC8037_X
    assert rfc8037_key.kid == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_rfc8037_a4_signature_from_our_signing_path(rfc8037_key: PrivateKey) -> None:
    token = sign_compact(
        encode_header({"alg": "EdDSA"}), b"Example of Ed25519 signing", rfc8037_key._sign
    )
    assert token == RFC8037_JWS


def test_rfc8037_a5_verifies_through_the_pinned_registry(rfc8037_key: PrivateKey) -> None:
    obj = jws.deserialize_compact(RFC8037_JWS, rfc8037_key.public_key._jwk, registry=REGISTRY)
    assert obj.payload == b"Example of Ed25519 signing"


# --- interop with PyJWT -----------------------------------------------------------------------


def test_our_token_verifies_in_pyjwt_with_only_the_public_key(key: PrivateKey) -> None:
    # Real clock, so PyJWT checks exp, nbf and iat too.
    minter = Minter(key, issuer=ISSUER, audience=AUDIENCE)
    token = minter.mint(sub="user-1", scope=TokenScope.USER_REQUEST, htm="GET", htu="/v1/me")
    public = serialization.load_pem_public_key(key.public_pem().encode())
    claims = pyjwt.decode(
        token,
        public,  # type: ignore[arg-type]
        algorithms=["EdDSA"],
        audience=AUDIENCE,
        issuer=ISSUER,
        options={"require": ["exp", "nbf", "iat", "jti"]},
    )
    assert (claims["sub"], claims["htu"]) == ("user-1", "/v1/me")


def test_pyjwt_token_verifies_in_ours(key: PrivateKey, verifier: Verifier) -> None:
    signer = serialization.load_pem_private_key(key.private_pem().encode(), password=None)
    token = pyjwt.encode(
        good_claims(),
        signer,  # type: ignore[arg-type]
        algorithm="EdDSA",
        headers={"typ": "internal+jwt", "kid": key.kid},
    )
    assert verifier.verify(token, **ME).sub == good_claims()["sub"]  # type: ignore[arg-type]


# --- rejections, one behaviour each -----------------------------------------------------------


def test_rejects_a_token_signed_by_another_key_under_our_kid(
    key: PrivateKey, other_key: PrivateKey, verifier: Verifier
) -> None:
    token = forge(good_header(key), good_claims(), other_key._sign)
    assert reason_of(verifier, token) is Reason.BAD_SIGNATURE


def test_rejects_a_tampered_payload(minter: Minter, verifier: Verifier) -> None:
    header, _, signature = minter.mint(sub="u", **ME).split(".")  # type: ignore[arg-type]
    payload = b64url(json.dumps(good_claims(sub="admin-user")).encode())
    assert reason_of(verifier, f"{header}.{payload}.{signature}") is Reason.BAD_SIGNATURE


def test_rejects_a_tampered_header(key: PrivateKey, minter: Minter, verifier: Verifier) -> None:
    _, payload, signature = minter.mint(sub="u", **ME).split(".")  # type: ignore[arg-type]
    # Same parameters in another order: still acceptable content, but not what was signed.
    header = b64url(json.dumps({"kid": key.kid, "typ": "internal+jwt", "alg": "EdDSA"}).encode())
    assert reason_of(verifier, f"{header}.{payload}.{signature}") is Reason.BAD_SIGNATURE


def test_rejects_alg_none(key: PrivateKey, verifier: Verifier) -> None:
    token = unsigned(good_header(key, alg="none"), good_claims())
    assert reason_of(verifier, token) is Reason.BAD_ALGORITHM


@pytest.mark.parametrize("secret_form", ["pem", "raw"])
def test_rejects_hs256_keyed_with_the_public_key(
    key: PrivateKey, verifier: Verifier, secret_form: str
) -> None:
    public = key.public_key
    secret = (
        public.public_pem().encode()
        if secret_form == "pem"
        else base64.urlsafe_b64decode(public.to_jwk()["x"] + "=")
    )
    token = forge(
        good_header(key, alg="HS256"),
        good_claims(),
        lambda data: hmac.new(secret, data, hashlib.sha256).digest(),
    )
    assert reason_of(verifier, token) is Reason.BAD_ALGORITHM


@pytest.mark.parametrize("alg", ["ES256", "RS256"])
def test_rejects_es256_and_rs256_tokens(key: PrivateKey, verifier: Verifier, alg: str) -> None:
    signer = (
        ec.generate_private_key(ec.SECP256R1())
        if alg == "ES256"
        else rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    token = pyjwt.encode(
        good_claims(), signer, algorithm=alg, headers={"typ": "internal+jwt", "kid": key.kid}
    )
    assert reason_of(verifier, token) is Reason.BAD_ALGORITHM


def test_rejects_an_unknown_kid(other_key: PrivateKey, verifier: Verifier) -> None:
    token = Minter(other_key, issuer=ISSUER, audience=AUDIENCE, clock=clock).mint(
        sub="u",
        **ME,  # type: ignore[arg-type]
    )
    assert reason_of(verifier, token) is Reason.UNKNOWN_KID


def test_rejects_a_missing_kid(key: PrivateKey, verifier: Verifier) -> None:
    token = forge(good_header(key, kid=None), good_claims(), key._sign)
    assert reason_of(verifier, token) is Reason.UNKNOWN_KID


def test_rejects_an_expired_token(key: PrivateKey, verifier: Verifier) -> None:
    # Minted 36 s ago with a 30 s lifetime: past exp plus the 5 s leeway.
    token = Minter(key, issuer=ISSUER, audience=AUDIENCE, clock=lambda: NOW - 36).mint(
        sub="u",
        **ME,  # type: ignore[arg-type]
    )
    assert reason_of(verifier, token) is Reason.EXPIRED


def test_accepts_a_token_expired_within_the_leeway(key: PrivateKey, verifier: Verifier) -> None:
    token = Minter(key, issuer=ISSUER, audience=AUDIENCE, clock=lambda: NOW - 34).mint(
        sub="u",
        **ME,  # type: ignore[arg-type]
    )
    assert verifier.verify(token, **ME).sub == "u"  # type: ignore[arg-type]


def test_rejects_a_token_not_yet_valid(key: PrivateKey, verifier: Verifier) -> None:
    token = forge(good_header(key), good_claims(nbf=NOW + 10, exp=NOW + 40), key._sign)
    assert reason_of(verifier, token) is Reason.NOT_YET_VALID


def test_rejects_a_token_issued_in_the_future(key: PrivateKey, verifier: Verifier) -> None:
    token = Minter(key, issuer=ISSUER, audience=AUDIENCE, clock=lambda: NOW + 6).mint(
        sub="u",
        **ME,  # type: ignore[arg-type]
    )
    assert reason_of(verifier, token) is Reason.NOT_YET_VALID


def test_rejects_a_lifetime_over_60_seconds(key: PrivateKey, verifier: Verifier) -> None:
    token = forge(good_header(key), good_claims(exp=NOW + 3600), key._sign)
    assert reason_of(verifier, token) is Reason.INVALID_CLAIM


def test_rejects_the_wrong_issuer(key: PrivateKey, verifier: Verifier) -> None:
    token = forge(good_header(key), good_claims(iss="someone-else"), key._sign)
    assert reason_of(verifier, token) is Reason.WRONG_ISSUER


@pytest.mark.parametrize("aud", ["another-service", ["another-service"]])
def test_rejects_the_wrong_audience(key: PrivateKey, verifier: Verifier, aud: object) -> None:
    token = forge(good_header(key), good_claims(aud=aud), key._sign)
    assert reason_of(verifier, token) is Reason.WRONG_AUDIENCE


@pytest.mark.parametrize("typ", [None, "JWT", "at+jwt", "refresh"])
def test_rejects_the_wrong_typ(key: PrivateKey, verifier: Verifier, typ: str | None) -> None:
    token = forge(good_header(key, typ=typ), good_claims(), key._sign)
    assert reason_of(verifier, token) is Reason.BAD_TYPE


def test_rejects_a_missing_scope(key: PrivateKey, verifier: Verifier) -> None:
    token = forge(good_header(key), good_claims(scope=None), key._sign)
    assert reason_of(verifier, token) is Reason.MISSING_CLAIM


@pytest.mark.parametrize("claimed", [TokenScope.AUTH_VALIDATE.value, "admin", "user_request admin"])
def test_rejects_the_wrong_scope(key: PrivateKey, verifier: Verifier, claimed: str) -> None:
    token = forge(good_header(key), good_claims(scope=claimed), key._sign)
    assert reason_of(verifier, token) is Reason.WRONG_SCOPE


@pytest.mark.parametrize(
    ("htm", "htu"),
    [("POST", "/v1/me"), ("GET", "/v1/notes"), ("GET", "/v1/me/"), ("GET", "/v1/ME")],
)
def test_rejects_a_request_binding_mismatch(
    minter: Minter, verifier: Verifier, htm: str, htu: str
) -> None:
    token = minter.mint(sub="u", **ME)  # type: ignore[arg-type]
    assert reason_of(verifier, token, htm=htm, htu=htu) is Reason.UNBOUND_REQUEST


@pytest.mark.parametrize("claim", ["jti", "sub", "exp", "iat", "nbf", "htm", "htu", "aud"])
def test_rejects_a_missing_required_claim(key: PrivateKey, verifier: Verifier, claim: str) -> None:
    token = forge(good_header(key), good_claims(**{claim: None}), key._sign)
    assert reason_of(verifier, token) is Reason.MISSING_CLAIM


def test_rejects_a_missing_jti(key: PrivateKey, verifier: Verifier) -> None:
    token = forge(good_header(key), good_claims(jti=None), key._sign)
    assert reason_of(verifier, token) is Reason.MISSING_CLAIM


@pytest.mark.parametrize(
    "changes",
    [{"exp": "soon"}, {"exp": True}, {"jti": 7}, {"roles": "admin"}, {"aud": 3}, {"sid": 1}],
)
def test_rejects_claims_of_the_wrong_type(
    key: PrivateKey, verifier: Verifier, changes: dict[str, object]
) -> None:
    token = forge(good_header(key), good_claims(**changes), key._sign)
    assert reason_of(verifier, token) is Reason.INVALID_CLAIM


def test_rejects_header_parameters_that_choose_a_key(key: PrivateKey, verifier: Verifier) -> None:
    header = good_header(key, jku="https://attacker.example/jwks.json")
    token = forge(header, good_claims(), key._sign)
    assert reason_of(verifier, token) is Reason.MALFORMED


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "a.b",
        "a.b.c.d",
        "!!!.???.***",
        "eyJhbGciOiJFZERTQSJ9..",
        "bm90IGpzb24.e30.AAAA",  # header "not json"
        "WyJhbGciXQ.e30.AAAA",  # header is the JSON list ["alg"]
        " eyJhbGciOiJFZERTQSJ9.e30.AAAA",
        "x" * 5000,
    ],
)
def test_rejects_malformed_compact_serialisation(verifier: Verifier, token: str) -> None:
    assert reason_of(verifier, token) is Reason.MALFORMED


def test_rejects_a_payload_that_is_not_a_json_object(key: PrivateKey, verifier: Verifier) -> None:
    payload = b64url(b"[1, 2]").encode()
    token = sign_compact(encode_header(good_header(key)), b"", key._sign)
    header = token.split(".")[0].encode()
    signing_input = header + b"." + payload
    forged = (signing_input + b"." + b64url(key._sign(signing_input)).encode()).decode()
    assert reason_of(verifier, forged) is Reason.MALFORMED


@pytest.mark.parametrize(
    "garbage", [b"\xff\xfe\x00\x81.\xc3\x28.\xa0\xa1", "t\u00f6ken.\u2603.x", b"\x80" * 64]
)
def test_rejects_non_utf8_garbage(verifier: Verifier, garbage: str | bytes) -> None:
    assert reason_of(verifier, garbage) is Reason.MALFORMED


@pytest.mark.parametrize("token", ["", b""])
def test_an_empty_token_is_missing(verifier: Verifier, token: str | bytes) -> None:
    assert reason_of(verifier, token) is Reason.MISSING


def test_error_messages_never_contain_the_token(minter: Minter, verifier: Verifier) -> None:
    token = minter.mint(sub="u", **ME)  # type: ignore[arg-type]
    with pytest.raises(InternalAuthError) as caught:
        verifier.verify(token, scope=TokenScope.AUTH_VALIDATE, htm="GET", htu="/v1/me")
    assert token not in str(caught.value) and token not in repr(caught.value)
    assert caught.value.iss == ISSUER  # signature verified, so the issuer is authentic


def test_errors_before_the_signature_carry_no_issuer(key: PrivateKey, verifier: Verifier) -> None:
    token = forge(good_header(key), good_claims(iss="spoofed"), Ed25519PrivateKey.generate().sign)
    with pytest.raises(InternalAuthError) as caught:
        verifier.verify(token, **ME)  # type: ignore[arg-type]
    assert caught.value.iss is None


# --- key rotation -----------------------------------------------------------------------------


def test_rotation_key_set_with_old_and_new_verifies_both(
    key: PrivateKey, other_key: PrivateKey
) -> None:
    both = Verifier(
        KeySet([key.public_key, other_key.public_key]),
        issuer=ISSUER,
        audience=AUDIENCE,
        clock=clock,
    )
    for signer in (key, other_key):
        token = Minter(signer, issuer=ISSUER, audience=AUDIENCE, clock=clock).mint(
            sub="u",
            **ME,  # type: ignore[arg-type]
        )
        assert both.verify(token, **ME).sub == "u"  # type: ignore[arg-type]


def test_rotation_without_the_old_key_rejects_its_tokens(
    key: PrivateKey, other_key: PrivateKey
) -> None:
    new_only = Verifier(other_key.public_key, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    old_token = Minter(key, issuer=ISSUER, audience=AUDIENCE, clock=clock).mint(
        sub="u",
        **ME,  # type: ignore[arg-type]
    )
    assert reason_of(new_only, old_token) is Reason.UNKNOWN_KID
