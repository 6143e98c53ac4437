"""Building (and forging) internal tokens for the internal_auth tests."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from internal_auth import PrivateKey, TokenScope
from internal_auth._jws import b64url_encode, encode_header, sign_compact

ISSUER = "tokengate-gateway"
AUDIENCE = "tokengate-backend"
NOW = 1_800_000_000


def clock() -> float:
    return float(NOW)


def good_claims(**changes: Any) -> dict[str, Any]:
    """Claims exactly as the Minter would write them; ``changes`` set (or, with None, drop)."""
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "7c6f7e39-2b0b-4a43-9a39-9d7b5f1f7e11",
        "scope": TokenScope.USER_REQUEST.value,
        "roles": ["user"],
        "sid": "family-1",
        "jti": "Zq3n0cV4m9yV2tQyQ2b5Ew",
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 30,
        "htm": "GET",
        "htu": "/v1/me",
    }
    for name, value in changes.items():
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


def good_header(key: PrivateKey, **changes: Any) -> dict[str, Any]:
    header: dict[str, Any] = {"alg": "EdDSA", "typ": "internal+jwt", "kid": key.kid}
    for name, value in changes.items():
        if value is None:
            header.pop(name, None)
        else:
            header[name] = value
    return header


def forge(
    header: dict[str, Any],
    claims: dict[str, Any],
    sign: Callable[[bytes], bytes],
) -> str:
    """A compact JWS with any header and claims, signed by ``sign`` over the signing input."""
    payload = json.dumps(claims, separators=(",", ":")).encode()
    return sign_compact(encode_header(header), payload, sign)


def unsigned(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    payload = json.dumps(claims, separators=(",", ":")).encode()
    segments = [encode_header(header), b64url_encode(payload), b64url_encode(signature)]
    return b".".join(segments).decode()
