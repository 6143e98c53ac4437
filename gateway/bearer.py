"""Who is calling with an access token: ``Authorization: Bearer``, verified, session not revoked.

One implementation for the proxy and for the auth routes that need an access token (sessions,
logout-all), with the ``WWW-Authenticate`` challenges RFC 6750 §3 asks a bearer-protected
resource to send with its 401:

- no credentials, or not the ``Bearer`` scheme: ``Bearer`` with no error code (§3.1: a request
  that carried no token gets no error attribute);
- a token that fails verification, or whose session was revoked: ``Bearer error="invalid_token"``.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable

from gateway.errors import SessionRevoked, Unauthorized
from gateway.tokens import AccessClaims

__all__ = ["CHALLENGE", "INVALID_TOKEN_CHALLENGE", "authenticate", "bearer_token"]

#: RFC 6750 §3: the challenge for a request without usable credentials.
CHALLENGE = "Bearer"
#: RFC 6750 §3.1: the challenge for an expired, revoked, malformed or otherwise invalid token.
INVALID_TOKEN_CHALLENGE = 'Bearer error="invalid_token"'

_AUTHORIZATION = b"authorization"


def bearer_token(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The token of ``Authorization: Bearer <token>`` in ASGI ``headers``, else 401."""
    value: bytes | None = None
    for name, raw in headers:
        if name == _AUTHORIZATION:
            value = raw
            break
    if value is None:
        raise Unauthorized(headers={"WWW-Authenticate": CHALLENGE})
    scheme, _, token = value.decode("latin-1").partition(" ")
    token = token.strip()
    # The auth scheme is case-insensitive (RFC 9110 §11.1).
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized(headers={"WWW-Authenticate": CHALLENGE})
    return token


def authenticate(
    headers: Iterable[tuple[bytes, bytes]],
    verify: Callable[[str], AccessClaims],
    revoked: Container[str],
) -> AccessClaims:
    """The verified claims of the caller's access token; 401 if absent, invalid or revoked.

    ``verify`` checks signature, algorithm, type, issuer, audience and expiry (it raises an
    :class:`~gateway.errors.Unauthorized`); ``revoked`` is the local set of revoked sessions
    (no I/O), checked on every call so a logged-out session's access tokens die at once.
    """
    token = bearer_token(headers)
    try:
        claims = verify(token)
    except Unauthorized as exc:
        exc.headers.setdefault("WWW-Authenticate", INVALID_TOKEN_CHALLENGE)
        raise
    if claims.sid in revoked:
        raise SessionRevoked(headers={"WWW-Authenticate": INVALID_TOKEN_CHALLENGE})
    return claims
