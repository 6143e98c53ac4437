"""Property tests for the internal-token verifier: arbitrary bytes and near-valid tokens (one
valid token bent in every way, and validly signed tokens with arbitrary claims) raise only
:class:`InternalAuthError`, and nothing but the untouched token verifies."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from internal_auth import InternalAuthError, KeySet, Minter, PrivateKey, TokenScope, Verifier
from internal_auth._jws import b64url_encode

from tests.support.internal_auth_tokens import (
    AUDIENCE,
    ISSUER,
    clock,
    forge,
    good_claims,
    good_header,
)

SCOPE = TokenScope.USER_REQUEST


def _verifier(key: PrivateKey) -> Verifier:
    return Verifier(
        KeySet([key.public_key]), issuer=ISSUER, audience=AUDIENCE, clock=clock, replay_cache=None
    )


def _only_refused(verifier: Verifier, token: str | bytes) -> None:
    try:
        verifier.verify(token, scope=SCOPE, htm="GET", htu="/v1/me")
    except InternalAuthError:
        return
    raise AssertionError("a token that is not the minted one verified")


@settings(max_examples=80)
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_arbitrary_input_is_only_ever_an_internal_auth_error(key: PrivateKey, raw: Any) -> None:
    _only_refused(_verifier(key), raw)


@settings(max_examples=80)
@given(data=st.data())
def test_a_bent_valid_token_is_only_ever_an_internal_auth_error(
    key: PrivateKey, data: st.DataObject
) -> None:
    minter = Minter(key, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    token = minter.mint(sub="u1", scope=SCOPE, htm="GET", htu="/v1/me")
    position = data.draw(st.integers(0, len(token) - 1))
    how = data.draw(st.sampled_from(["replace", "delete", "insert", "truncate", "swap"]))
    char = data.draw(st.characters(codec="utf-8"))
    if how == "replace":
        bent = token[:position] + char + token[position + 1 :]
    elif how == "delete":
        bent = token[:position] + token[position + 1 :]
    elif how == "insert":
        bent = token[:position] + char + token[position:]
    elif how == "truncate":
        bent = token[:position]
    else:
        header, payload, signature = token.split(".")
        bent = ".".join([payload, header, signature])
    if bent == token:
        return
    _only_refused(_verifier(key), bent)


_json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)
)
_json = st.recursive(
    _json_scalars,
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=80)
@given(
    changes=st.dictionaries(
        st.sampled_from(sorted(good_claims())), st.one_of(st.none(), _json), min_size=1, max_size=4
    ),
    header_changes=st.dictionaries(
        st.sampled_from(["alg", "typ", "kid", "crit", "jku", "b64"]),
        st.one_of(st.none(), _json),
        max_size=2,
    ),
)
def test_validly_signed_tokens_with_arbitrary_claims_never_crash(
    key: PrivateKey, changes: dict[str, Any], header_changes: dict[str, Any]
) -> None:
    claims = good_claims(**changes)
    header = good_header(key, **header_changes)
    token = forge(header, claims, key._sign)
    verifier = _verifier(key)
    try:
        principal = verifier.verify(token, scope=SCOPE, htm="GET", htu="/v1/me")
    except InternalAuthError:
        return
    # Accepted: then it really is a token the checks allow.
    assert claims["iss"] == ISSUER and claims["htu"] == "/v1/me" and claims["scope"] == SCOPE
    assert principal.sub == claims["sub"] and isinstance(principal.sub, str)


@settings(max_examples=80)
@given(st.binary(max_size=200))
def test_a_payload_of_arbitrary_bytes_is_only_ever_an_internal_auth_error(
    key: PrivateKey, payload: bytes
) -> None:
    signing_input = (
        b64url_encode(json.dumps(good_header(key)).encode()) + b"." + b64url_encode(payload)
    )
    token = (signing_input + b"." + b64url_encode(key._sign(signing_input))).decode()
    _only_refused(_verifier(key), token)


_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def test_no_other_spelling_of_the_signature_verifies(key: PrivateKey) -> None:
    """A 64-byte signature is 86 base64url characters, the last one carrying 4 unused bits: 15
    other last characters decode to the same bytes. Found by the property test above; checked
    here for every one of them, every time."""
    minter = Minter(key, issuer=ISSUER, audience=AUDIENCE, clock=clock)
    token = minter.mint(sub="u1", scope=SCOPE, htm="GET", htu="/v1/me")
    _verifier(key).verify(token, scope=SCOPE, htm="GET", htu="/v1/me")
    last = _B64URL.index(token[-1])
    same_bytes = [c for i, c in enumerate(_B64URL) if i >> 4 == last >> 4 and c != token[-1]]
    assert len(same_bytes) == 15
    for char in same_bytes:
        with pytest.raises(InternalAuthError):
            _verifier(key).verify(token[:-1] + char, scope=SCOPE, htm="GET", htu="/v1/me")
